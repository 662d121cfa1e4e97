package io.blogstream.kafkaui;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.fasterxml.jackson.databind.node.TextNode;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.net.URISyntaxException;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Enumeration;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

/**
 * Every writer schema blogstream may have used, by fingerprint.
 *
 * <p>Mirrors {@code streams/contract/schemas.py}: one named type per {@code .avsc} file, referenced
 * by full name from the others, {@code <type>.vN.avsc} for frozen older versions. A record may have
 * been written with any combination of versions of the types it contains (a BlogDraft carrying a v1
 * BlogRequest during a rolling upgrade), so each combination is resolved into a self-contained schema
 * (each named type inlined at its first use) and fingerprinted: CRC-64-AVRO of its Parsing Canonical
 * Form, as Java's {@code SchemaNormalization} computes it.
 */
public final class SchemaCatalog {

  /** Where the build puts the schemas inside the jar. */
  public static final String RESOURCE_DIR = "blogstream/schemas/";

  private static final Pattern FILE_NAME =
      Pattern.compile("(?<stem>[A-Za-z0-9_]+)(?:\\.v(?<version>[0-9]+))?\\.avsc");
  private static final Set<String> PRIMITIVES =
      Set.of("null", "boolean", "int", "long", "float", "double", "bytes", "string");
  private static final Set<String> NAMED = Set.of("record", "error", "enum", "fixed");
  private static final ObjectMapper JSON = new ObjectMapper();

  /** One schema a record may have been written with. */
  public record Writer(
      String recordName, // full name, e.g. blogstream.BlogRequest
      Schema writer,
      Schema reader, // the current schema of the same record
      long fingerprint,
      String version) { // "current", or the older types it contains, e.g. "BlogRequest v1"

    public boolean isCurrent() {
      return writer == reader;
    }

    public String shortName() {
      return recordName.substring(recordName.lastIndexOf('.') + 1);
    }
  }

  /** One .avsc file: a named type at one version (0 = the current file). */
  private record Version(String fullName, int version, ObjectNode json) {}

  private final Map<Long, Writer> writers;
  private final Map<String, Writer> current; // full name and short name -> current writer
  private final String source;

  private SchemaCatalog(Map<Long, Writer> writers, Map<String, Writer> current, String source) {
    this.writers = Collections.unmodifiableMap(writers);
    this.current = Collections.unmodifiableMap(current);
    this.source = source;
  }

  /** The schemas bundled into this jar at build time. */
  public static SchemaCatalog bundled() {
    return fromFiles(bundledFiles(), "bundled in the jar");
  }

  /** The {@code .avsc} files in a folder (e.g. the schemas mounted into the Kafka UI container). */
  public static SchemaCatalog fromDirectory(Path directory) {
    if (!Files.isDirectory(directory)) {
      throw new IllegalArgumentException("schemasDir " + directory + " is not a directory");
    }
    Map<String, String> files;
    try {
      files = filesIn(directory);
    } catch (IOException e) {
      throw new UncheckedIOException("can't read schemas in " + directory, e);
    }
    return fromFiles(files, "from " + directory);
  }

  /** File name -> file text. */
  public static SchemaCatalog fromFiles(Map<String, String> files, String source) {
    if (files.isEmpty()) {
      throw new IllegalArgumentException("no .avsc schema files found (" + source + ")");
    }
    Map<String, List<Version>> versions = parseFiles(files);
    Map<Long, Writer> writers = new LinkedHashMap<>();
    Map<Long, String> canonical = new LinkedHashMap<>();
    Map<String, Writer> current = new LinkedHashMap<>();
    for (Map.Entry<String, List<Version>> type : versions.entrySet()) {
      if (!"record".equals(type.getValue().get(0).json().path("type").asText())) {
        continue;
      }
      String record = type.getKey();
      Schema reader = null;
      for (Map<String, Version> chosen : combinations(versions)) { // the first is all-current
        Set<String> defined = new HashSet<>();
        JsonNode resolved = resolve(new TextNode(record), "", chosen, versions, defined);
        Schema schema = new Schema.Parser().parse(resolved.toString());
        String form = SchemaNormalization.toParsingForm(schema);
        long fingerprint = SchemaNormalization.fingerprint64(form.getBytes(StandardCharsets.UTF_8));
        String known = canonical.putIfAbsent(fingerprint, form);
        if (known != null) {
          if (!known.equals(form)) {
            throw new IllegalStateException(
                "fingerprint collision " + Hex.fingerprint(fingerprint) + " between two schemas");
          }
          continue;
        }
        if (reader == null) {
          reader = schema;
        }
        Writer writer = new Writer(record, schema, reader, fingerprint, label(chosen, defined));
        writers.put(fingerprint, writer);
        if (writer.isCurrent()) {
          current.put(record, writer);
          current.putIfAbsent(writer.shortName(), writer);
        }
      }
    }
    return new SchemaCatalog(writers, current, source);
  }

  /** The writer schema with this fingerprint, or null. */
  public Writer writer(long fingerprint) {
    return writers.get(fingerprint);
  }

  /** The current schema of a record, by full or short name, or null. */
  public Writer current(String recordName) {
    return current.get(recordName);
  }

  public Map<Long, Writer> writers() {
    return writers;
  }

  public String source() {
    return source;
  }

  // ------------------------------------------------------------------ loading

  private static Map<String, List<Version>> parseFiles(Map<String, String> files) {
    Map<String, Map<Integer, Version>> found = new TreeMap<>();
    for (Map.Entry<String, String> file : new TreeMap<>(files).entrySet()) {
      Matcher match = FILE_NAME.matcher(file.getKey());
      if (!match.matches()) {
        throw new IllegalArgumentException(
            file.getKey() + ": schema files are named <type>.avsc or <type>.vN.avsc");
      }
      JsonNode json;
      try {
        json = JSON.readTree(file.getValue());
      } catch (IOException e) {
        throw new IllegalArgumentException(file.getKey() + " is not JSON: " + e.getMessage(), e);
      }
      if (!(json instanceof ObjectNode named) || !named.path("name").isTextual()) {
        throw new IllegalArgumentException(file.getKey() + " must hold one named type");
      }
      String fullName = fullName(named.get("name").asText(), named.path("namespace").asText(""));
      int version = match.group("version") == null ? 0 : Integer.parseInt(match.group("version"));
      if (version == 0 && match.group("version") != null) {
        throw new IllegalArgumentException(file.getKey() + ": versions start at v1");
      }
      Version previous =
          found.computeIfAbsent(fullName, k -> new TreeMap<>()).put(version, new Version(fullName, version, named));
      if (previous != null) {
        throw new IllegalArgumentException(fullName + " is defined twice at the same version");
      }
    }
    Map<String, List<Version>> versions = new LinkedHashMap<>();
    for (Map.Entry<String, Map<Integer, Version>> type : found.entrySet()) {
      if (!type.getValue().containsKey(0)) {
        throw new IllegalArgumentException(type.getKey() + " has old versions but no current file");
      }
      versions.put(type.getKey(), new ArrayList<>(type.getValue().values())); // current (0) first
    }
    return versions;
  }

  /** One choice of version per named type, for every combination; the all-current one first. */
  private static List<Map<String, Version>> combinations(Map<String, List<Version>> versions) {
    List<Map<String, Version>> result = new ArrayList<>();
    result.add(new LinkedHashMap<>());
    for (Map.Entry<String, List<Version>> type : versions.entrySet()) {
      List<Map<String, Version>> next = new ArrayList<>();
      for (Map<String, Version> partial : result) {
        for (Version version : type.getValue()) {
          Map<String, Version> extended = new LinkedHashMap<>(partial);
          extended.put(type.getKey(), version);
          next.add(extended);
        }
      }
      result = next;
    }
    return result;
  }

  private static String label(Map<String, Version> chosen, Set<String> used) {
    List<String> older = new ArrayList<>();
    for (String name : used) {
      Version version = chosen.get(name);
      if (version != null && version.version() != 0) {
        older.add(name.substring(name.lastIndexOf('.') + 1) + " v" + version.version());
      }
    }
    Collections.sort(older);
    return older.isEmpty() ? "current" : String.join(", ", older);
  }

  /**
   * {@code schema} with every named type inlined at its first use and referred to by full name
   * after that (the same walk as the Python contract's, so the same canonical form).
   */
  private static JsonNode resolve(
      JsonNode schema,
      String namespace,
      Map<String, Version> chosen,
      Map<String, List<Version>> versions,
      Set<String> defined) {
    if (schema.isTextual()) {
      String name = schema.asText();
      if (PRIMITIVES.contains(name)) {
        return schema;
      }
      String full = fullName(name, namespace);
      if (defined.contains(full)) {
        return new TextNode(full);
      }
      if (!versions.containsKey(full)) {
        throw new IllegalArgumentException(full + " is referenced but no file defines it");
      }
      return resolve(chosen.get(full).json(), "", chosen, versions, defined);
    }
    if (schema.isArray()) {
      ArrayNode union = JsonNodeFactory.instance.arrayNode();
      for (JsonNode branch : schema) {
        union.add(resolve(branch, namespace, chosen, versions, defined));
      }
      return union;
    }
    if (!(schema instanceof ObjectNode object)) {
      throw new IllegalArgumentException("not a schema: " + schema);
    }
    JsonNode type = object.path("type");
    if (type.isTextual() && NAMED.contains(type.asText())) {
      String full = fullName(object.path("name").asText(), object.path("namespace").asText(namespace));
      if (!defined.add(full)) {
        throw new IllegalArgumentException(full + " is defined twice; refer to it by name");
      }
      ObjectNode copy = object.deepCopy();
      copy.remove("namespace");
      copy.put("name", full);
      if (object.has("fields")) {
        String inner = namespaceOf(full);
        ArrayNode fields = JsonNodeFactory.instance.arrayNode();
        for (JsonNode field : object.get("fields")) {
          ObjectNode resolvedField = field.deepCopy();
          resolvedField.set("type", resolve(field.get("type"), inner, chosen, versions, defined));
          fields.add(resolvedField);
        }
        copy.set("fields", fields);
      }
      return copy;
    }
    if (type.isTextual() && "array".equals(type.asText())) {
      ObjectNode copy = object.deepCopy();
      copy.set("items", resolve(object.get("items"), namespace, chosen, versions, defined));
      return copy;
    }
    if (type.isTextual() && "map".equals(type.asText())) {
      ObjectNode copy = object.deepCopy();
      copy.set("values", resolve(object.get("values"), namespace, chosen, versions, defined));
      return copy;
    }
    if (type.isTextual() && PRIMITIVES.contains(type.asText())) {
      return object; // keeps logicalType: Java producers fingerprint the files as written
    }
    return resolve(type, namespace, chosen, versions, defined); // {"type": <reference or schema>}
  }

  private static String fullName(String name, String namespace) {
    return name.contains(".") || namespace.isEmpty() ? name : namespace + "." + name;
  }

  private static String namespaceOf(String fullName) {
    int dot = fullName.lastIndexOf('.');
    return dot < 0 ? "" : fullName.substring(0, dot);
  }

  // ------------------------------------------------------------------ bundled resources

  /** The .avsc files under {@link #RESOURCE_DIR}, from this class's jar (or classes folder). */
  static Map<String, String> bundledFiles() {
    Path location;
    try {
      URL url = SchemaCatalog.class.getProtectionDomain().getCodeSource().getLocation();
      location = Path.of(url.toURI());
    } catch (URISyntaxException | RuntimeException e) {
      throw new IllegalStateException("can't locate the schemas bundled in the jar: set schemasDir", e);
    }
    try {
      return bundledFiles(location);
    } catch (IOException e) {
      throw new UncheckedIOException("can't read the schemas bundled in " + location, e);
    }
  }

  /** The .avsc files under {@link #RESOURCE_DIR} in a jar, or in a classes folder. */
  static Map<String, String> bundledFiles(Path location) throws IOException {
    if (Files.isDirectory(location)) {
      Path folder = location.resolve(RESOURCE_DIR);
      return Files.isDirectory(folder) ? filesIn(folder) : Map.of();
    }
    Map<String, String> files = new TreeMap<>();
    try (JarFile jar = new JarFile(location.toFile())) {
      Enumeration<JarEntry> entries = jar.entries();
      while (entries.hasMoreElements()) {
        JarEntry entry = entries.nextElement();
        String name = entry.getName();
        if (name.startsWith(RESOURCE_DIR) && name.endsWith(".avsc")
            && name.indexOf('/', RESOURCE_DIR.length()) < 0) {
          try (InputStream in = jar.getInputStream(entry)) {
            files.put(name.substring(RESOURCE_DIR.length()), new String(in.readAllBytes(), StandardCharsets.UTF_8));
          }
        }
      }
    }
    return files;
  }

  private static Map<String, String> filesIn(Path folder) throws IOException {
    Map<String, String> files = new TreeMap<>();
    try (Stream<Path> paths = Files.list(folder)) {
      for (Path file : (Iterable<Path>) paths::iterator) {
        if (file.getFileName().toString().endsWith(".avsc")) {
          files.put(file.getFileName().toString(), Files.readString(file, StandardCharsets.UTF_8));
        }
      }
    }
    return files;
  }
}
