package io.blogstream.kafkaui;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import java.util.TreeMap;
import java.util.jar.JarEntry;
import java.util.jar.JarOutputStream;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class CatalogTest {

  private final SchemaCatalog catalog = SchemaCatalog.bundled();

  /** The header table of docs/producing.md. */
  private static final Map<String, String> DOCUMENTED = Map.of(
      "BlogRequest", "1050030431f56b33",
      "BlogDraft", "ade3df7ac46e10c9",
      "BlogIllustrated", "8d9688db8ecf253d",
      "BlogResult", "cca9aecaa3f1db48");

  @Test
  void currentFingerprintsMatchTheDocumentedHeaders() {
    DOCUMENTED.forEach((record, fingerprint) -> {
      SchemaCatalog.Writer current = catalog.current(record);
      assertNotNull(current, record);
      assertEquals(fingerprint, Hex.fingerprint(current.fingerprint()), record);
      assertEquals("current", current.version());
      assertSame(current, catalog.current("blogstream." + record));
    });
  }

  @Test
  void olderVersionsAndEveryCombinationAreKnown() {
    SchemaCatalog.Writer v1 = catalog.writer(Hex.readLittleEndian(TestSupport.hex("f8110a4a88783ec3"), 0));
    assertNotNull(v1, "BlogRequest v1 (docs/producing.md)");
    assertEquals("BlogRequest", v1.shortName());
    assertEquals("BlogRequest v1", v1.version());
    assertSame(catalog.current("BlogRequest").writer(), v1.reader());
    // A BlogDraft / BlogIllustrated carrying an older BlogRequest (v1, v2, v3) is a writer schema of its own.
    long draftsWithOlderRequests = catalog.writers().values().stream()
        .filter(w -> !w.isCurrent() && (w.shortName().equals("BlogDraft") || w.shortName().equals("BlogIllustrated")))
        .count();
    assertEquals(6, draftsWithOlderRequests);
    // BlogResult does not contain a BlogRequest: its current version and its own older one (v1, before retry).
    SchemaCatalog.Writer resultV1 = catalog.writer(Hex.readLittleEndian(TestSupport.hex("7bb8fd33659c7fff"), 0));
    assertNotNull(resultV1, "BlogResult v1 (docs/producing.md)");
    assertEquals("BlogResult v1", resultV1.version());
    assertEquals(2, catalog.writers().values().stream().filter(w -> w.shortName().equals("BlogResult")).count());
  }

  @Test
  void headersAreWhatJavasBinaryMessageEncoderWrites() throws Exception {
    SchemaCatalog.Writer request = catalog.current("BlogRequest");
    GenericRecord value = new GenericRecordBuilder(request.writer())
        .set("request_id", "req-1").set("site_id", "site-1").set("topic", "t").set("requested_at", 1L)
        .build();
    byte[] encoded = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), request.writer()).encode(value).array();
    byte[] header = Arrays.copyOf(encoded, 10);
    assertEquals("c301" + DOCUMENTED.get("BlogRequest"), Hex.of(header));
  }

  @Test
  void bundledSchemasAreReadFromAJar(@TempDir Path tmp) throws Exception {
    Path jar = tmp.resolve("plugin.jar");
    Map<String, String> files = SchemaCatalog.bundledFiles();
    try (JarOutputStream out = new JarOutputStream(Files.newOutputStream(jar))) {
      out.putNextEntry(new JarEntry(SchemaCatalog.RESOURCE_DIR));
      for (Map.Entry<String, String> file : files.entrySet()) {
        out.putNextEntry(new JarEntry(SchemaCatalog.RESOURCE_DIR + file.getKey()));
        out.write(file.getValue().getBytes(StandardCharsets.UTF_8));
      }
      out.putNextEntry(new JarEntry("other/ignored.avsc"));
      out.write("{}".getBytes(StandardCharsets.UTF_8));
    }
    assertEquals(files, SchemaCatalog.bundledFiles(jar));
    assertTrue(files.containsKey("blog_request.avsc") && files.containsKey("blog_request.v1.avsc"), files.keySet().toString());
  }

  @Test
  void theBundledSchemasAreTheRepositorysOnes() throws Exception {
    Map<String, String> repo = new TreeMap<>();
    try (var paths = Files.list(TestSupport.repoSchemas())) {
      for (Path path : (Iterable<Path>) paths::iterator) {
        if (path.toString().endsWith(".avsc")) {
          repo.put(path.getFileName().toString(), Files.readString(path));
        }
      }
    }
    assertEquals(repo, SchemaCatalog.bundledFiles(), "rebuild the jar: mvn -f kafka-ui-serde/pom.xml package");
  }

  @Test
  void brokenSchemaFoldersFailWithAClearMessage(@TempDir Path tmp) throws Exception {
    String draft = "{\"type\":\"record\",\"name\":\"D\",\"namespace\":\"blogstream\","
        + "\"fields\":[{\"name\":\"r\",\"type\":\"blogstream.Missing\"}]}";
    var missing = assertThrows(IllegalArgumentException.class,
        () -> SchemaCatalog.fromFiles(Map.of("d.avsc", draft), "test"));
    assertTrue(missing.getMessage().contains("blogstream.Missing is referenced but no file defines it"),
        missing.getMessage());

    var badName = assertThrows(IllegalArgumentException.class,
        () -> SchemaCatalog.fromFiles(Map.of("d.version1.avsc", draft), "test"));
    assertTrue(badName.getMessage().contains("<type>.vN.avsc"), badName.getMessage());

    var onlyOld = assertThrows(IllegalArgumentException.class, () -> SchemaCatalog.fromFiles(
        Map.of("t.v1.avsc", "{\"type\":\"record\",\"name\":\"T\",\"fields\":[]}"), "test"));
    assertTrue(onlyOld.getMessage().contains("no current file"), onlyOld.getMessage());

    assertThrows(IllegalArgumentException.class, () -> SchemaCatalog.fromDirectory(tmp));
    assertThrows(IllegalArgumentException.class, () -> SchemaCatalog.fromDirectory(tmp.resolve("nope")));
  }

  @Test
  void referencesResolveRelativeToTheEnclosingNamespace() {
    Map<String, String> files = Map.of(
        "inner.avsc", "{\"type\":\"enum\",\"name\":\"Inner\",\"namespace\":\"x\",\"symbols\":[\"A\"]}",
        "outer.avsc", "{\"type\":\"record\",\"name\":\"Outer\",\"namespace\":\"x\",\"fields\":["
            + "{\"name\":\"a\",\"type\":\"Inner\"},{\"name\":\"b\",\"type\":[\"null\",\"x.Inner\"]}]}");
    SchemaCatalog small = SchemaCatalog.fromFiles(files, "test");
    assertEquals(1, small.writers().size());
    assertEquals("x.Inner", small.current("Outer").writer().getField("b").schema().getTypes().get(1).getFullName());
    // a record written with it round-trips through the codec
    ValueCodec codec = new ValueCodec(small);
    byte[] data = codec.serialize("x.Outer", "{\"a\":\"A\",\"b\":\"A\"}");
    assertEquals(TestSupport.json("{\"a\":\"A\",\"b\":\"A\"}"), TestSupport.json(codec.deserialize(data).getResult()));
  }
}
