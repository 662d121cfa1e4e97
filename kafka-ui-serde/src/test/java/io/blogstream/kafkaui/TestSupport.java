package io.blogstream.kafkaui;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HexFormat;

final class TestSupport {

  static final ObjectMapper MAPPER = new ObjectMapper();

  private TestSupport() {}

  /** vectors.json, written by make_test_vectors.py with the Python encoder. */
  static JsonNode vectors() {
    try (InputStream in = TestSupport.class.getResourceAsStream("/vectors.json")) {
      return MAPPER.readTree(in).get("vectors");
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  static JsonNode json(String text) {
    try {
      return MAPPER.readTree(text);
    } catch (IOException e) {
      throw new AssertionError("not JSON: " + text, e);
    }
  }

  static byte[] hex(String hex) {
    return HexFormat.of().parseHex(hex);
  }

  /** The repository's schema folder the build bundled (the pom passes it to the tests). */
  static Path repoSchemas() {
    String configured = System.getProperty("blogstream.schemas");
    if (configured != null && Files.isDirectory(Path.of(configured))) {
      return Path.of(configured);
    }
    for (String candidate : new String[] {"../streams/contract/schemas", "../schemas"}) {
      if (Files.isDirectory(Path.of(candidate))) {
        return Path.of(candidate);
      }
    }
    throw new AssertionError("no schema folder found");
  }
}
