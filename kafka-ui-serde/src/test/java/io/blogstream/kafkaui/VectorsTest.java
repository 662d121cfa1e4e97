package io.blogstream.kafkaui;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import io.kafbat.ui.serde.api.DeserializeResult;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/** Every record the Python encoder wrote decodes to what the Python decoder reads. */
class VectorsTest {

  private static final ValueCodec BUNDLED = new ValueCodec(SchemaCatalog.bundled());

  @TestFactory
  Stream<DynamicTest> everyVectorDecodesToThePythonValue() {
    List<DynamicTest> tests = new ArrayList<>();
    for (JsonNode vector : TestSupport.vectors()) {
      tests.add(DynamicTest.dynamicTest(vector.get("name").asText(), () -> {
        DeserializeResult result = BUNDLED.deserialize(TestSupport.hex(vector.get("hex").asText()));
        assertEquals(DeserializeResult.Type.JSON, result.getType(), result.toString());
        assertEquals(vector.get("decoded"), TestSupport.json(result.getResult()), result.getResult());
        assertEquals(vector.get("record").asText(), result.getAdditionalProperties().get("record"));
        assertEquals(vector.get("fingerprint").asText(), result.getAdditionalProperties().get("fingerprint"));
        String writer = vector.get("writer").asText();
        String version = (String) result.getAdditionalProperties().get("schemaVersion");
        if (writer.equals("current")) {
          assertEquals("current", version);
        } else { // written with a frozen older BlogRequest (v1, v2, ...) or BlogResult (v1)
          assertTrue(version.matches("Blog(Request|Result) v[0-9]+"), version);
        }
        assertFalse(result.getAdditionalProperties().containsKey("error"));
        assertFalse(result.getAdditionalProperties().containsKey("warning"));
      }));
    }
    return tests.stream();
  }

  @Test
  void vectorsCoverEveryRecordAndAnOlderVersion() {
    Set<String> records = new HashSet<>();
    boolean older = false;
    for (JsonNode vector : TestSupport.vectors()) {
      records.add(vector.get("record").asText());
      older |= !vector.get("writer").asText().equals("current");
    }
    assertEquals(Set.of("BlogRequest", "BlogDraft", "BlogIllustrated", "BlogResult"), records);
    assertTrue(older, "no vector written with an older schema version");
  }

  @Test
  void javaWritesTheSameBytesAsPythonForCurrentRecords() {
    int checked = 0;
    for (JsonNode vector : TestSupport.vectors()) {
      if (!vector.get("writer").asText().equals("current")) {
        continue;
      }
      byte[] written = BUNDLED.serialize(vector.get("record").asText(), vector.get("decoded").toString());
      assertArrayEquals(TestSupport.hex(vector.get("hex").asText()), written, vector.get("name").asText());
      checked++;
    }
    assertTrue(checked >= 4);
  }

  @Test
  void theRepositorySchemaFolderGivesTheSameResults() {
    ValueCodec fromFolder = new ValueCodec(SchemaCatalog.fromDirectory(TestSupport.repoSchemas()));
    for (JsonNode vector : TestSupport.vectors()) {
      byte[] data = TestSupport.hex(vector.get("hex").asText());
      assertEquals(BUNDLED.deserialize(data), fromFolder.deserialize(data), vector.get("name").asText());
    }
  }
}
