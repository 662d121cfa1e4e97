package io.blogstream.kafkaui;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import io.kafbat.ui.serde.api.DeserializeResult;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** Whatever the bytes, the UI gets a readable result, never an exception. */
class DecodeErrorsTest {

  private static final ValueCodec CODEC = new ValueCodec(SchemaCatalog.bundled());

  private static byte[] firstVector(String record) {
    for (JsonNode vector : TestSupport.vectors()) {
      if (vector.get("record").asText().equals(record) && vector.get("writer").asText().equals("current")) {
        return TestSupport.hex(vector.get("hex").asText());
      }
    }
    throw new AssertionError(record);
  }

  /** The {"error", "hex"} object, checked. */
  private static JsonNode errorOf(DeserializeResult result, byte[] data) {
    assertEquals(DeserializeResult.Type.JSON, result.getType(), result.toString());
    JsonNode shown = TestSupport.json(result.getResult());
    assertEquals(Hex.of(data), shown.get("hex").asText());
    assertEquals(shown.get("error").asText(), result.getAdditionalProperties().get("error"));
    return shown;
  }

  @Test
  void unknownFingerprint() {
    byte[] data = firstVector("BlogRequest");
    data[5] ^= 0x40;
    DeserializeResult result = CODEC.deserialize(data);
    String error = errorOf(result, data).get("error").asText();
    String fingerprint = Hex.of(data, 2, 8);
    assertTrue(error.startsWith("unknown schema fingerprint " + fingerprint + ":"), error);
    assertEquals(fingerprint, result.getAdditionalProperties().get("fingerprint"));
  }

  @Test
  void garbageBytes() {
    byte[] data = {(byte) 0xFF, (byte) 0xFE, 0x00, 0x01, (byte) 0x80, 0x7F};
    String error = errorOf(CODEC.deserialize(data), data).get("error").asText();
    assertTrue(error.contains("not single-object Avro") && error.contains("nor UTF-8 text"), error);
  }

  @Test
  void tooShortForAHeader() {
    byte[] data = {(byte) 0xC3, 0x01, 0x1E, (byte) 0x9C};
    String error = errorOf(CODEC.deserialize(data), data).get("error").asText();
    assertTrue(error.startsWith("too short for single-object Avro"), error);
  }

  @Test
  void truncatedBody() {
    byte[] whole = firstVector("BlogDraft");
    byte[] data = Arrays.copyOf(whole, whole.length / 2);
    DeserializeResult result = CODEC.deserialize(data);
    String error = errorOf(result, data).get("error").asText();
    assertTrue(error.startsWith("BlogDraft body is not valid Avro for its schema"), error);
    assertEquals("BlogDraft", result.getAdditionalProperties().get("record"));
  }

  @Test
  void aHugeLengthPrefixIsRejectedWithoutAllocatingIt() {
    // BlogRequest header, then a request_id claiming ~1 GiB
    byte[] header = Arrays.copyOf(firstVector("BlogRequest"), 10);
    byte[] data = Arrays.copyOf(header, 15);
    byte[] length = {(byte) 0x80, (byte) 0x80, (byte) 0x80, (byte) 0x80, 0x08}; // zig-zag 2^30
    System.arraycopy(length, 0, data, 10, 5);
    String error = assertTimeoutPreemptively(Duration.ofSeconds(5),
        () -> errorOf(CODEC.deserialize(data), data).get("error").asText());
    assertTrue(error.contains("request_id: a string of 1073741824 bytes, but only 0 are left"), error);
  }

  @Test
  void hugeArrayCountsAndBadEnumsAndUnionsAreRejected() {
    // BlogResult: request_id "a", site_id "b", status index 7 (there are 3 symbols)
    byte[] header = Arrays.copyOf(firstVector("BlogResult"), 10);
    byte[] badEnum = concat(header, new byte[] {2, 'a', 2, 'b', 14});
    assertTrue(errorOf(CODEC.deserialize(badEnum), badEnum).get("error").asText().contains("status: enum index 7"));
    // BlogRequest: ids, topic, then keywords claiming 2^40 items
    byte[] request = Arrays.copyOf(firstVector("BlogRequest"), 10);
    byte[] hugeArray = concat(request, new byte[] {2, 'a', 2, 'b', 2, 't',
        (byte) 0x80, (byte) 0x80, (byte) 0x80, (byte) 0x80, (byte) 0x80, 0x40});
    String error = errorOf(CODEC.deserialize(hugeArray), hugeArray).get("error").asText();
    assertTrue(error.contains("keywords: a block of"), error);
  }

  @Test
  void randomBytesAfterAValidHeaderNeverThrow() {
    Random random = new Random(42);
    for (byte[] header : new byte[][] {firstVector("BlogRequest"), firstVector("BlogDraft"), firstVector("BlogResult")}) {
      for (int i = 0; i < 2000; i++) {
        byte[] body = new byte[random.nextInt(64)];
        random.nextBytes(body);
        byte[] data = concat(Arrays.copyOf(header, 10), body);
        DeserializeResult result = CODEC.deserialize(data);
        assertEquals(DeserializeResult.Type.JSON, result.getType());
        TestSupport.json(result.getResult());
      }
    }
  }

  @Test
  void trailingBytesAreShownWithAWarning() {
    byte[] whole = firstVector("BlogResult");
    byte[] data = concat(whole, new byte[] {1, 2, 3});
    DeserializeResult result = CODEC.deserialize(data);
    assertEquals(CODEC.deserialize(whole).getResult(), result.getResult());
    assertEquals("3 unexpected bytes after the BlogResult body", result.getAdditionalProperties().get("warning"));
  }

  @Test
  void dlqTextIsShownAsText() {
    String text = "topic: must be 1-300 characters\nfrom a console producer: ünïcödé ☕\ttab";
    DeserializeResult result = CODEC.deserialize(text.getBytes(StandardCharsets.UTF_8));
    assertEquals(DeserializeResult.Type.STRING, result.getType());
    assertEquals(text, result.getResult());
    assertTrue(((String) result.getAdditionalProperties().get("format")).startsWith("UTF-8 text"));
  }

  @Test
  void jsonValuesAreShownAsJson() {
    // console producers may write a BlogRequest as JSON (docs/producing.md); invalid ones land in the DLQ
    String json = "{\"request_id\":\"req-2024-0002\",\"site_id\":\"site-42\",\"topic\":\"Cold brew ☕\",\"oops\":1}";
    DeserializeResult result = CODEC.deserialize(json.getBytes(StandardCharsets.UTF_8));
    assertEquals(DeserializeResult.Type.JSON, result.getType());
    assertEquals(TestSupport.json(json), TestSupport.json(result.getResult()));
    // broken JSON is text
    DeserializeResult broken = CODEC.deserialize("{\"request_id\": ".getBytes(StandardCharsets.UTF_8));
    assertEquals(DeserializeResult.Type.STRING, broken.getType());
  }

  @Test
  void textWithControlCharactersIsShownAsHex() {
    byte[] data = "abc\u0000def".getBytes(StandardCharsets.UTF_8);
    errorOf(CODEC.deserialize(data), data);
  }

  @Test
  void nullAndEmptyValues() {
    assertNull(CODEC.deserialize(null).getResult());
    DeserializeResult empty = CODEC.deserialize(new byte[0]);
    assertEquals("", empty.getResult());
    assertEquals(DeserializeResult.Type.STRING, empty.getType());
  }

  private static byte[] concat(byte[] a, byte[] b) {
    byte[] out = Arrays.copyOf(a, a.length + b.length);
    System.arraycopy(b, 0, out, a.length, b.length);
    return out;
  }
}
