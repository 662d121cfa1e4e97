package io.blogstream.kafkaui;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import io.kafbat.ui.serde.api.DeserializeResult;
import io.kafbat.ui.serde.api.PropertyResolver;
import io.kafbat.ui.serde.api.RecordHeader;
import io.kafbat.ui.serde.api.RecordHeaders;
import io.kafbat.ui.serde.api.SchemaDescription;
import io.kafbat.ui.serde.api.Serde;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/** The plugin as Kafka UI drives it. */
class SerdeTest {

  /** A PropertyResolver over a plain map, like Kafka UI's binder for simple values. */
  private record Props(Map<String, Object> values) implements PropertyResolver {
    @Override
    public <T> Optional<T> getProperty(String key, Class<T> type) {
      return Optional.ofNullable(values.get(key)).map(type::cast);
    }

    @Override
    public <T> Optional<List<T>> getListProperty(String key, Class<T> itemType) {
      return Optional.empty();
    }

    @Override
    @SuppressWarnings("unchecked")
    public <K, V> Optional<Map<K, V>> getMapProperty(String key, Class<K> keyType, Class<V> valueType) {
      return Optional.ofNullable((Map<K, V>) values.get(key));
    }
  }

  private static final RecordHeaders DLQ_HEADERS = () -> List.<RecordHeader>of(new RecordHeader() {
    @Override
    public String key() {
      return "blogstream-error";
    }

    @Override
    public byte[] value() {
      return "not single-object Avro".getBytes(StandardCharsets.UTF_8);
    }
  }).iterator();

  private static BlogstreamSerde configured(Map<String, Object> properties) {
    BlogstreamSerde serde = new BlogstreamSerde();
    serde.configure(new Props(properties), new Props(Map.of()), new Props(Map.of()));
    return serde;
  }

  @Test
  void decodesValuesOfEveryTopicAndLeavesKeysAlone() {
    BlogstreamSerde serde = configured(Map.of());
    assertTrue(serde.canDeserialize("blog.requests", Serde.Target.VALUE));
    assertTrue(serde.canDeserialize("blog.dlq", Serde.Target.VALUE));
    assertFalse(serde.canDeserialize("blog.requests", Serde.Target.KEY));
    assertTrue(serde.getSchema("blog.requests", Serde.Target.KEY).isEmpty());
    assertTrue(serde.getDescription().orElseThrow().contains("1050030431f56b33"));

    JsonNode vector = TestSupport.vectors().get(0);
    DeserializeResult result = serde.deserializer("blog.requests", Serde.Target.VALUE)
        .deserialize(DLQ_HEADERS, TestSupport.hex(vector.get("hex").asText()));
    assertEquals(vector.get("decoded"), TestSupport.json(result.getResult()));

    DeserializeResult dlq = serde.deserializer("blog.dlq", Serde.Target.VALUE)
        .deserialize(DLQ_HEADERS, "hello ☕".getBytes(StandardCharsets.UTF_8));
    assertEquals("hello ☕", dlq.getResult());
  }

  @Test
  void schemasDirOverridesTheBundledSchemas() {
    BlogstreamSerde serde = configured(Map.of("schemasDir", TestSupport.repoSchemas().toString()));
    assertTrue(serde.getDescription().orElseThrow().contains(TestSupport.repoSchemas().toString()));
    var missing = assertThrows(IllegalArgumentException.class,
        () -> configured(Map.of("schemasDir", "/no/such/folder")));
    assertTrue(missing.getMessage().contains("/no/such/folder"));
  }

  @Test
  void producesPlainJsonAsSingleObjectAvro() {
    BlogstreamSerde serde = configured(Map.of());
    assertTrue(serde.canSerialize("blog.requests", Serde.Target.VALUE));
    assertFalse(serde.canSerialize("blog.requests", Serde.Target.KEY));
    assertFalse(serde.canSerialize("blog.dlq", Serde.Target.VALUE));

    String json = "{\"request_id\":\"req-9\",\"site_id\":\"site-9\",\"topic\":\"Tea ☕\","
        + "\"keywords\":[\"tea\"],\"requested_at\":1700000000000,\"audience\":\"students\"}";
    byte[] data = serde.serializer("blog.requests", Serde.Target.VALUE).serialize(json);
    assertEquals("c3011050030431f56b33", Hex.of(data, 0, 10));
    JsonNode back = TestSupport.json(serde.deserializer("blog.requests", Serde.Target.VALUE)
        .deserialize(DLQ_HEADERS, data).getResult());
    assertEquals("students", back.get("audience").asText());
    assertEquals("en", back.get("language").asText()); // default filled in
    assertEquals(800, back.get("target_words").asInt());

    // Avro's JSON encoding of a union is accepted too
    byte[] wrapped = serde.serializer("blog.requests", Serde.Target.VALUE).serialize(
        json.replace("\"students\"", "{\"string\":\"students\"}"));
    assertEquals(Hex.of(data), Hex.of(wrapped));
  }

  /**
   * The README says: enter plain JSON as in docs/producing.md. Its console example leaves
   * requested_at out ("means now"); the serde refused it with "requested_at: is required".
   */
  @Test
  void theJsonOfDocsProducingMdIsProducedAsItIs() throws Exception {
    String doc = Files.readString(Path.of("../docs/producing.md"));
    Matcher example = Pattern.compile("echo '[^|']*\\|(\\{[^']*\\})'").matcher(doc);
    assertTrue(example.find(), "the console producer example of docs/producing.md");
    assertFalse(example.group(1).contains("requested_at"), example.group(1));
    BlogstreamSerde serde = configured(Map.of());

    long before = System.currentTimeMillis();
    byte[] data = serde.serializer("blog.requests", Serde.Target.VALUE).serialize(example.group(1));
    long after = System.currentTimeMillis();
    JsonNode back = TestSupport.json(serde.deserializer("blog.requests", Serde.Target.VALUE)
        .deserialize(DLQ_HEADERS, data).getResult());
    long requestedAt = back.get("requested_at").asLong();
    assertTrue(before <= requestedAt && requestedAt <= after, back.toString());
    assertEquals("req-2024-0002", back.get("request_id").asText());

    // null means now too; a given time is kept; other records still need all their fields
    String withNull = example.group(1).replace("}", ",\"requested_at\":null}");
    JsonNode nulled = TestSupport.json(serde.deserializer("blog.requests", Serde.Target.VALUE).deserialize(
        DLQ_HEADERS, serde.serializer("blog.requests", Serde.Target.VALUE).serialize(withNull)).getResult());
    assertTrue(nulled.get("requested_at").asLong() >= before);
    String given = example.group(1).replace("}", ",\"requested_at\":1700000000000}");
    JsonNode kept = TestSupport.json(serde.deserializer("blog.requests", Serde.Target.VALUE).deserialize(
        DLQ_HEADERS, serde.serializer("blog.requests", Serde.Target.VALUE).serialize(given)).getResult());
    assertEquals(1700000000000L, kept.get("requested_at").asLong());
  }

  @Test
  void produceErrorsSayWhatIsWrong() {
    Serde.Serializer requests = configured(Map.of()).serializer("blog.requests", Serde.Target.VALUE);
    var error = assertThrows(IllegalArgumentException.class,
        () -> requests.serialize("{\"request_id\":1,\"site_id\":\"s\",\"tpoic\":\"t\",\"requested_at\":1}"));
    String message = error.getMessage();
    assertTrue(message.contains("tpoic: is not a field of BlogRequest"), message);
    assertTrue(message.contains("request_id: must be a string"), message);
    assertTrue(message.contains("topic: is required"), message);
    assertThrows(IllegalArgumentException.class, () -> requests.serialize("not json"));
    assertThrows(IllegalArgumentException.class, () -> requests.serialize(""));
  }

  @Test
  void theProduceFormGetsAJsonSchema() {
    BlogstreamSerde serde = configured(Map.of());
    SchemaDescription description = serde.getSchema("blog.requests", Serde.Target.VALUE).orElseThrow();
    JsonNode schema = TestSupport.json(description.getSchema());
    assertEquals("object", schema.get("type").asText());
    // requested_at may be left out, as in the pipeline's JSON (docs/producing.md): it means now
    assertEquals(List.of("request_id", "site_id", "topic"),
        TestSupport.MAPPER.convertValue(schema.get("required"), List.class));
    assertTrue(schema.at("/properties/requested_at/description").asText().contains("now"));
    assertEquals("en", schema.at("/properties/language/default").asText());
    assertEquals("integer", schema.at("/properties/requested_at/type").asText());
    assertEquals("1050030431f56b33", description.getAdditionalProperties().get("fingerprint"));

    JsonNode result = TestSupport.json(serde.getSchema("blog.results", Serde.Target.VALUE).orElseThrow().getSchema());
    assertEquals("DONE", result.at("/properties/status/enum/0").asText());
    assertEquals("object", result.at("/properties/usage/anyOf/1/type").asText());
    assertTrue(serde.getSchema("blog.dlq", Serde.Target.VALUE).isEmpty());
  }

  @Test
  void topicRecordsCanBeConfigured() {
    BlogstreamSerde serde = configured(Map.of("topicRecords", Map.of("staging.requests", "BlogRequest")));
    assertTrue(serde.canSerialize("staging.requests", Serde.Target.VALUE));
    assertFalse(serde.canSerialize("blog.requests", Serde.Target.VALUE));
    var unknown = assertThrows(IllegalArgumentException.class,
        () -> configured(Map.of("topicRecords", Map.of("x", "NoSuchRecord"))));
    assertTrue(unknown.getMessage().contains("NoSuchRecord"));
  }

  @Test
  void unconfiguredUseFailsClearly() {
    var error = assertThrows(IllegalStateException.class, () -> new BlogstreamSerde().getDescription());
    assertTrue(error.getMessage().contains("not configured"));
  }
}
