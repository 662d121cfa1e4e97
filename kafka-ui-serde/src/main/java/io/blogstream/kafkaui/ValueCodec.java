package io.blogstream.kafkaui;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.kafbat.ui.serde.api.DeserializeResult;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;

/**
 * Kafka values to what Kafka UI shows, and back.
 *
 * <p>Never throws on a value: bytes that are not a known single-object Avro record are shown as
 * JSON or text when they are that (console producers, the DLQ), else as an {@code {"error", "hex"}}
 * object, so one bad message never hides the others.
 */
public final class ValueCodec {

  static final byte MARKER_0 = (byte) 0xC3;
  static final byte MARKER_1 = (byte) 0x01;
  static final int HEADER_SIZE = 10;

  private static final ObjectMapper MAPPER = new ObjectMapper();
  private static final ObjectReader STRICT_JSON =
      MAPPER.readerFor(JsonNode.class).with(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

  private final SchemaCatalog catalog;
  private final Map<Long, GenericDatumReader<Object>> readers = new ConcurrentHashMap<>();

  public ValueCodec(SchemaCatalog catalog) {
    this.catalog = catalog;
  }

  public SchemaCatalog catalog() {
    return catalog;
  }

  // ------------------------------------------------------------------ bytes -> UI

  public DeserializeResult deserialize(byte[] data) {
    if (data == null) {
      return new DeserializeResult(null, DeserializeResult.Type.STRING, Map.of());
    }
    if (data.length >= 2 && data[0] == MARKER_0 && data[1] == MARKER_1) {
      return avro(data);
    }
    return notAvro(data, "not single-object Avro (it does not start with C3 01)");
  }

  private DeserializeResult avro(byte[] data) {
    Map<String, Object> props = new LinkedHashMap<>();
    props.put("format", "single-object Avro");
    if (data.length < HEADER_SIZE) {
      return error("too short for single-object Avro: " + data.length
          + " bytes, but the C3 01 marker and the 8-byte fingerprint alone take 10", data, props);
    }
    long fingerprint = Hex.readLittleEndian(data, 2);
    String fingerprintHex = Hex.fingerprint(fingerprint);
    props.put("fingerprint", fingerprintHex);
    SchemaCatalog.Writer writer = catalog.writer(fingerprint);
    if (writer == null) {
      return error("unknown schema fingerprint " + fingerprintHex + ": written with a schema that is not among the "
          + catalog.writers().size() + " known blogstream schema versions (" + catalog.source()
          + "); a newer schema, or a producer that computed the fingerprint wrong", data, props);
    }
    props.put("record", writer.shortName());
    props.put("schemaVersion", writer.version());
    String malformed = BodyCheck.problem(writer.writer(), data, HEADER_SIZE);
    if (malformed != null) {
      return error(writer.shortName() + " body is not valid Avro for its schema: " + malformed, data, props);
    }
    BinaryDecoder decoder = DecoderFactory.get().binaryDecoder(data, HEADER_SIZE, data.length - HEADER_SIZE, null);
    Object value;
    try {
      value = reader(writer).read(null, decoder);
    } catch (Exception | StackOverflowError e) { // Avro throws many kinds on garbage
      return error(writer.shortName() + " body is not valid Avro for its schema (" + e.getClass().getSimpleName()
          + (e.getMessage() == null ? "" : ": " + e.getMessage()) + ")", data, props);
    }
    try {
      int extra = decoder.inputStream().available();
      if (extra > 0) {
        props.put("warning", extra + " unexpected bytes after the " + writer.shortName() + " body");
      }
    } catch (IOException e) {
      // a byte-array decoder does not fail here
    }
    return new DeserializeResult(JsonValues.toJson(value).toString(), DeserializeResult.Type.JSON, props);
  }

  /** Resolves to the current schema, like the pipeline's decode: older versions get the new fields' defaults. */
  private GenericDatumReader<Object> reader(SchemaCatalog.Writer writer) {
    return readers.computeIfAbsent(writer.fingerprint(),
        fp -> new GenericDatumReader<>(writer.writer(), writer.reader(), GenericData.get()));
  }

  /** Console producers' JSON, or what the DLQ holds: JSON, else text, else hex. */
  private static DeserializeResult notAvro(byte[] data, String why) {
    Map<String, Object> props = new LinkedHashMap<>();
    String text = utf8(data);
    if (text != null) {
      String trimmed = text.strip();
      if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
        try {
          STRICT_JSON.readTree(trimmed);
          props.put("format", "JSON (" + why + ")");
          return new DeserializeResult(text, DeserializeResult.Type.JSON, props);
        } catch (IOException e) {
          // text that only looks like JSON: shown as text below
        }
      }
      if (isPrintable(text)) {
        props.put("format", "UTF-8 text (" + why + ")");
        return new DeserializeResult(text, DeserializeResult.Type.STRING, props);
      }
    }
    props.put("format", "bytes");
    return error(why + ", nor UTF-8 text", data, props);
  }

  private static DeserializeResult error(String message, byte[] data, Map<String, Object> props) {
    props.put("error", message);
    ObjectNode shown = MAPPER.createObjectNode();
    shown.put("error", message);
    shown.put("hex", Hex.of(data));
    return new DeserializeResult(shown.toString(), DeserializeResult.Type.JSON, props);
  }

  private static String utf8(byte[] data) {
    try {
      return StandardCharsets.UTF_8.newDecoder()
          .onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT)
          .decode(ByteBuffer.wrap(data))
          .toString();
    } catch (CharacterCodingException e) {
      return null;
    }
  }

  /** No control characters but tab, newline and carriage return. */
  private static boolean isPrintable(String text) {
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || (c >= 0x7F && c <= 0x9F)) {
        return false;
      }
    }
    return true;
  }

  // ------------------------------------------------------------------ UI -> bytes

  /** The record and field that may be left out of JSON, meaning "now", as in the pipeline (docs/producing.md). */
  static final String NOW_RECORD = "BlogRequest";
  static final String NOW_FIELD = "requested_at";

  /** Whether {@code writer}'s field may be left out of the JSON the UI produces (it then means now). */
  static boolean nowIfMissing(SchemaCatalog.Writer writer, String field) {
    return NOW_RECORD.equals(writer.shortName()) && NOW_FIELD.equals(field);
  }

  /** The JSON Schema of the produce form: the record's, with what may be left out not required. */
  public ObjectNode produceSchema(String recordName) {
    SchemaCatalog.Writer writer = catalog.current(recordName);
    ObjectNode schema = JsonValues.jsonSchema(writer.writer());
    JsonNode required = schema.get("required");
    if (required != null && required.isArray()) {
      var kept = MAPPER.createArrayNode();
      required.forEach(name -> {
        if (nowIfMissing(writer, name.asText())) {
          ((ObjectNode) schema.at("/properties/" + name.asText())).put("description",
              "milliseconds since the epoch (UTC); left out or null: now");
        } else {
          kept.add(name);
        }
      });
      schema.set("required", kept);
    }
    return schema;
  }

  /** Plain JSON (as in docs/producing.md) to single-object Avro with the record's current schema. */
  public byte[] serialize(String recordName, String json) {
    SchemaCatalog.Writer writer = catalog.current(recordName);
    if (writer == null) {
      throw new IllegalArgumentException("unknown record " + recordName);
    }
    JsonNode tree;
    try {
      tree = STRICT_JSON.readTree(json);
    } catch (JsonProcessingException e) {
      throw new IllegalArgumentException("not JSON: " + e.getOriginalMessage(), e);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    if (tree == null || tree.isMissingNode()) {
      throw new IllegalArgumentException("empty input: expected a JSON object with the " + recordName + " fields");
    }
    if (tree.isObject() && nowIfMissing(writer, NOW_FIELD)
        && (tree.get(NOW_FIELD) == null || tree.get(NOW_FIELD).isNull())) {
      ((ObjectNode) tree).put(NOW_FIELD, System.currentTimeMillis());
    }
    Object datum = JsonValues.fromJson(tree, writer.writer());
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    out.write(MARKER_0);
    out.write(MARKER_1);
    out.writeBytes(Hex.littleEndian(writer.fingerprint()));
    try {
      BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
      new GenericDatumWriter<Object>(writer.writer(), GenericData.get()).write(datum, encoder);
      encoder.flush();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return out.toByteArray();
  }
}
