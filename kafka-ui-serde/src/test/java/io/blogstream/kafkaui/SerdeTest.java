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
import java.util.List;
import java.util.Map;
import java.util.Optional;
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
    assertTrue(serde.getDescription().orElseThrow().contains("d2d68e14dd566ff9"));

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
    assertEquals("c301d2d68e14dd566ff9", Hex.of(data, 0, 10));
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
    assertEquals(List.of("request_id", "site_id", "topic", "requested_at"),
        TestSupport.MAPPER.convertValue(schema.get("required"), List.class));
    assertEquals("en", schema.at("/properties/language/default").asText());
    assertEquals("integer", schema.at("/properties/requested_at/type").asText());
    assertEquals("d2d68e14dd566ff9", description.getAdditionalProperties().get("fingerprint"));

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
