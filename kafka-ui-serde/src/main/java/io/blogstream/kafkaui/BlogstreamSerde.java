package io.blogstream.kafkaui;

import io.kafbat.ui.serde.api.PropertyResolver;
import io.kafbat.ui.serde.api.RecordHeaders;
import io.kafbat.ui.serde.api.SchemaDescription;
import io.kafbat.ui.serde.api.Serde;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Optional;
import java.util.TreeMap;

/**
 * kafbat Kafka UI serde for blogstream's topics: single-object Avro values (marker C3 01, the
 * writer schema's 8-byte CRC-64-AVRO fingerprint, the Avro body; no schema registry) shown as
 * plain JSON, every known schema version included.
 *
 * <p>Properties (all optional):
 * <ul>
 *   <li>{@code schemasDir}: a folder of {@code .avsc} files to use instead of the ones bundled
 *       into the jar at build time;</li>
 *   <li>{@code topicRecords}: topic -> record name, for producing from the UI and for the schema
 *       the UI shows; defaults to blogstream's four stage topics.</li>
 * </ul>
 * Keys are UTF-8 site ids: leave them to the built-in String serde.
 */
public class BlogstreamSerde implements Serde {

  /** blogstream's stage topics and the record each one carries (streams/contract). */
  public static final Map<String, String> DEFAULT_TOPIC_RECORDS = Map.of(
      "blog.requests", "BlogRequest",
      "blog.drafts", "BlogDraft",
      "blog.illustrated", "BlogIllustrated",
      "blog.results", "BlogResult");

  private volatile ValueCodec codec;
  private volatile Map<String, String> topicRecords = DEFAULT_TOPIC_RECORDS;

  @Override
  public void configure(PropertyResolver serdeProperties, PropertyResolver kafkaClusterProperties,
                        PropertyResolver globalProperties) {
    Optional<String> dir = serdeProperties.getProperty("schemasDir", String.class).filter(s -> !s.isBlank());
    Map<String, String> topics = serdeProperties.getMapProperty("topicRecords", String.class, String.class)
        .filter(m -> !m.isEmpty()).orElse(DEFAULT_TOPIC_RECORDS);
    configure(dir.map(Path::of).orElse(null), topics);
  }

  /** The same as {@link #configure(PropertyResolver, PropertyResolver, PropertyResolver)}, for tests. */
  public void configure(Path schemasDir, Map<String, String> topics) {
    SchemaCatalog catalog = schemasDir == null ? SchemaCatalog.bundled() : SchemaCatalog.fromDirectory(schemasDir);
    for (Map.Entry<String, String> topic : topics.entrySet()) {
      if (catalog.current(topic.getValue()) == null) {
        throw new IllegalArgumentException("topicRecords: " + topic.getKey() + " -> " + topic.getValue()
            + ", but no schema defines that record (" + catalog.source() + ")");
      }
    }
    this.topicRecords = Map.copyOf(topics);
    this.codec = new ValueCodec(catalog);
  }

  private ValueCodec codec() {
    ValueCodec configured = codec;
    if (configured == null) {
      throw new IllegalStateException("BlogstreamSerde is not configured");
    }
    return configured;
  }

  @Override
  public Optional<String> getDescription() {
    SchemaCatalog catalog = codec().catalog();
    StringBuilder text = new StringBuilder()
        .append("blogstream records: single-object Avro (C3 01, CRC-64-AVRO fingerprint, body), no schema registry. ")
        .append("Schemas ").append(catalog.source()).append(", ")
        .append(catalog.writers().size()).append(" writer versions:");
    Map<String, String> sorted = new TreeMap<>();
    catalog.writers().values().forEach(w ->
        sorted.put(w.shortName() + " (" + w.version() + ")", Hex.fingerprint(w.fingerprint())));
    sorted.forEach((name, fp) -> text.append("\n- ").append(name).append(": `").append(fp).append('`'));
    return Optional.of(text.toString());
  }

  @Override
  public Optional<SchemaDescription> getSchema(String topic, Target type) {
    String record = type == Target.VALUE ? topicRecords.get(topic) : null;
    if (record == null) {
      return Optional.empty();
    }
    SchemaCatalog.Writer current = codec().catalog().current(record);
    Map<String, Object> props = new LinkedHashMap<>();
    props.put("record", current.shortName());
    props.put("fingerprint", Hex.fingerprint(current.fingerprint()));
    props.put("avroSchema", current.writer().toString());
    return Optional.of(new SchemaDescription(codec().produceSchema(record).toString(), props));
  }

  @Override
  public boolean canDeserialize(String topic, Target type) {
    return type == Target.VALUE;
  }

  @Override
  public boolean canSerialize(String topic, Target type) {
    return type == Target.VALUE && topicRecords.containsKey(topic);
  }

  @Override
  public Serializer serializer(String topic, Target type) {
    String record = topicRecords.get(topic);
    if (type != Target.VALUE || record == null) {
      throw new IllegalArgumentException("blogstream serde writes values of " + topicRecords.keySet() + " only");
    }
    ValueCodec configured = codec();
    return input -> configured.serialize(record, input);
  }

  @Override
  public Deserializer deserializer(String topic, Target type) {
    ValueCodec configured = codec();
    return (RecordHeaders headers, byte[] data) -> configured.deserialize(data);
  }
}
