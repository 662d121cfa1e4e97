package io.blogstream.kafkaui;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericEnumSymbol;
import org.apache.avro.generic.GenericFixed;
import org.apache.avro.generic.GenericRecord;

/**
 * Avro values as plain JSON, the way the Python side writes them: unions without Avro's
 * {@code {"string": ...}} wrapper, timestamps as int milliseconds, enums as their symbol.
 * Bytes and fixed (unused by the contract so far) become hex strings.
 */
final class JsonValues {

  private static final JsonNodeFactory NODES = JsonNodeFactory.instance;

  private JsonValues() {}

  // ------------------------------------------------------------------ Avro -> JSON

  static JsonNode toJson(Object datum) {
    if (datum == null) {
      return NODES.nullNode();
    }
    if (datum instanceof GenericRecord record) {
      ObjectNode object = NODES.objectNode();
      for (Schema.Field field : record.getSchema().getFields()) {
        object.set(field.name(), toJson(record.get(field.pos())));
      }
      return object;
    }
    if (datum instanceof CharSequence text) {
      return NODES.textNode(text.toString());
    }
    if (datum instanceof Integer n) {
      return NODES.numberNode(n);
    }
    if (datum instanceof Long n) {
      return NODES.numberNode(n);
    }
    if (datum instanceof Boolean b) {
      return NODES.booleanNode(b);
    }
    if (datum instanceof Float f) {
      return Float.isFinite(f) ? NODES.numberNode(f) : NODES.textNode(f.toString());
    }
    if (datum instanceof Double d) {
      return Double.isFinite(d) ? NODES.numberNode(d) : NODES.textNode(d.toString());
    }
    if (datum instanceof GenericEnumSymbol<?> symbol) {
      return NODES.textNode(symbol.toString());
    }
    if (datum instanceof ByteBuffer buffer) {
      byte[] bytes = new byte[buffer.remaining()];
      buffer.duplicate().get(bytes);
      return NODES.textNode(Hex.of(bytes));
    }
    if (datum instanceof GenericFixed fixed) {
      return NODES.textNode(Hex.of(fixed.bytes()));
    }
    if (datum instanceof Collection<?> items) {
      ArrayNode array = NODES.arrayNode();
      for (Object item : items) {
        array.add(toJson(item));
      }
      return array;
    }
    if (datum instanceof Map<?, ?> map) {
      ObjectNode object = NODES.objectNode();
      for (Map.Entry<?, ?> entry : map.entrySet()) {
        object.set(String.valueOf(entry.getKey()), toJson(entry.getValue()));
      }
      return object;
    }
    return NODES.textNode(datum.toString());
  }

  // ------------------------------------------------------------------ JSON -> Avro

  /**
   * A datum of {@code schema} from plain JSON, with missing fields filled from their defaults.
   * Unknown fields are errors (almost always typos), as in the Python intake.
   */
  static Object fromJson(JsonNode json, Schema schema) {
    List<String> errors = new ArrayList<>();
    Object datum = convert(json, schema, "", errors);
    if (!errors.isEmpty()) {
      String shown = String.join("; ", errors.subList(0, Math.min(4, errors.size())));
      String more = errors.size() > 4 ? " (and " + (errors.size() - 4) + " more)" : "";
      throw new IllegalArgumentException("invalid " + schema.getName() + ": " + shown + more);
    }
    return datum;
  }

  private static Object convert(JsonNode json, Schema schema, String path, List<String> errors) {
    String at = path.isEmpty() ? "" : path + ": ";
    switch (schema.getType()) {
      case RECORD -> {
        if (!json.isObject()) {
          errors.add(at + "must be an object");
          return null;
        }
        GenericData.Record record = new GenericData.Record(schema);
        String prefix = path.isEmpty() ? "" : path + ".";
        for (Iterator<String> names = json.fieldNames(); names.hasNext(); ) {
          String name = names.next();
          if (schema.getField(name) == null) {
            errors.add(prefix + name + ": is not a field of " + schema.getName());
          }
        }
        for (Schema.Field field : schema.getFields()) {
          JsonNode value = json.get(field.name());
          if (value != null) {
            record.put(field.pos(), convert(value, field.schema(), prefix + field.name(), errors));
          } else if (field.hasDefaultValue()) {
            record.put(field.pos(), GenericData.get().getDefaultValue(field));
          } else {
            errors.add(prefix + field.name() + ": is required");
          }
        }
        return record;
      }
      case UNION -> {
        for (Schema branch : schema.getTypes()) {
          List<String> scratch = new ArrayList<>();
          Object datum = convert(json, branch, path, scratch);
          if (scratch.isEmpty()) {
            return datum;
          }
        }
        // Avro's own JSON encoding, {"string": "..."}, is accepted too.
        if (json.isObject() && json.size() == 1) {
          String key = json.fieldNames().next();
          for (Schema branch : schema.getTypes()) {
            if (key.equals(branch.getFullName()) || key.equals(branch.getName())) {
              return convert(json.get(key), branch, path, errors);
            }
          }
        }
        errors.add(at + "must be " + describe(schema));
        return null;
      }
      case NULL -> {
        if (!json.isNull()) {
          errors.add(at + "must be null");
        }
        return null;
      }
      case STRING -> {
        if (!json.isTextual()) {
          errors.add(at + "must be a string");
          return null;
        }
        return json.asText();
      }
      case INT -> {
        if (!json.isIntegralNumber() || !json.canConvertToInt()) {
          errors.add(at + "must be an integer between -2^31 and 2^31-1");
          return null;
        }
        return json.intValue();
      }
      case LONG -> {
        if (!json.isIntegralNumber() || !json.canConvertToLong()) {
          errors.add(at + "must be a 64-bit integer");
          return null;
        }
        return json.longValue();
      }
      case FLOAT, DOUBLE -> {
        if (!json.isNumber()) {
          errors.add(at + "must be a number");
          return null;
        }
        return schema.getType() == Schema.Type.FLOAT ? (Object) json.floatValue() : json.doubleValue();
      }
      case BOOLEAN -> {
        if (!json.isBoolean()) {
          errors.add(at + "must be true or false");
          return null;
        }
        return json.booleanValue();
      }
      case ENUM -> {
        if (!json.isTextual() || !schema.hasEnumSymbol(json.asText())) {
          errors.add(at + "must be one of " + String.join(", ", schema.getEnumSymbols()));
          return null;
        }
        return new GenericData.EnumSymbol(schema, json.asText());
      }
      case ARRAY -> {
        if (!json.isArray()) {
          errors.add(at + "must be a list");
          return null;
        }
        GenericData.Array<Object> array = new GenericData.Array<>(json.size(), schema);
        for (int i = 0; i < json.size(); i++) {
          array.add(convert(json.get(i), schema.getElementType(), path + "[" + i + "]", errors));
        }
        return array;
      }
      case MAP -> {
        if (!json.isObject()) {
          errors.add(at + "must be an object");
          return null;
        }
        Map<String, Object> map = new LinkedHashMap<>();
        String prefix = path.isEmpty() ? "" : path + ".";
        json.fields().forEachRemaining(e ->
            map.put(e.getKey(), convert(e.getValue(), schema.getValueType(), prefix + e.getKey(), errors)));
        return map;
      }
      case BYTES, FIXED -> {
        byte[] bytes = json.isTextual() ? parseHex(json.asText()) : null;
        if (bytes == null || (schema.getType() == Schema.Type.FIXED && bytes.length != schema.getFixedSize())) {
          errors.add(at + "must be a hex string");
          return null;
        }
        return schema.getType() == Schema.Type.FIXED
            ? new GenericData.Fixed(schema, bytes) : ByteBuffer.wrap(bytes);
      }
      default -> {
        errors.add(at + "has an unsupported type " + schema.getType());
        return null;
      }
    }
  }

  private static String describe(Schema union) {
    List<String> names = new ArrayList<>();
    for (Schema branch : union.getTypes()) {
      names.add(branch.getType() == Schema.Type.RECORD ? "an object (" + branch.getName() + ")"
          : branch.getType().getName());
    }
    return String.join(" or ", names);
  }

  private static byte[] parseHex(String text) {
    if (text.length() % 2 != 0) {
      return null;
    }
    byte[] out = new byte[text.length() / 2];
    for (int i = 0; i < out.length; i++) {
      int hi = Character.digit(text.charAt(2 * i), 16);
      int lo = Character.digit(text.charAt(2 * i + 1), 16);
      if (hi < 0 || lo < 0) {
        return null;
      }
      out[i] = (byte) (hi << 4 | lo);
    }
    return out;
  }

  // ------------------------------------------------------------------ JSON Schema

  /** A JSON Schema (2020-12) of the plain JSON {@link #fromJson} takes: Kafka UI's produce form uses it. */
  static ObjectNode jsonSchema(Schema schema) {
    ObjectNode root = NODES.objectNode();
    root.put("$schema", "https://json-schema.org/draft/2020-12/schema");
    root.put("title", schema.getFullName());
    root.setAll(describeJson(schema, new HashSet<>()));
    return root;
  }

  private static ObjectNode describeJson(Schema schema, Set<String> open) {
    ObjectNode node = NODES.objectNode();
    if (schema.getDoc() != null && schema.getType() != Schema.Type.UNION) {
      node.put("description", schema.getDoc());
    }
    switch (schema.getType()) {
      case RECORD -> {
        node.put("type", "object");
        if (!open.add(schema.getFullName())) {
          return node; // recursive type: stop here
        }
        ObjectNode properties = node.putObject("properties");
        ArrayNode required = NODES.arrayNode();
        for (Schema.Field field : schema.getFields()) {
          ObjectNode property = describeJson(field.schema(), open);
          if (field.doc() != null) {
            property.put("description", field.doc());
          }
          if (field.hasDefaultValue()) {
            property.set("default", toJson(GenericData.get().getDefaultValue(field)));
          } else {
            required.add(field.name());
          }
          properties.set(field.name(), property);
        }
        if (!required.isEmpty()) {
          node.set("required", required);
        }
        node.put("additionalProperties", false);
        open.remove(schema.getFullName());
      }
      case UNION -> {
        ArrayNode anyOf = node.putArray("anyOf");
        for (Schema branch : schema.getTypes()) {
          anyOf.add(describeJson(branch, open));
        }
      }
      case ARRAY -> {
        node.put("type", "array");
        node.set("items", describeJson(schema.getElementType(), open));
      }
      case MAP -> {
        node.put("type", "object");
        node.set("additionalProperties", describeJson(schema.getValueType(), open));
      }
      case ENUM -> {
        node.put("type", "string");
        ArrayNode symbols = node.putArray("enum");
        schema.getEnumSymbols().forEach(symbols::add);
      }
      case INT, LONG -> {
        node.put("type", "integer");
        if (schema.getLogicalType() != null) {
          node.put("description", schema.getLogicalType().getName().startsWith("timestamp")
              ? "milliseconds since the epoch (UTC)" : schema.getLogicalType().getName());
        }
      }
      case FLOAT, DOUBLE -> node.put("type", "number");
      case BOOLEAN -> node.put("type", "boolean");
      case NULL -> node.put("type", "null");
      case STRING -> node.put("type", "string");
      case BYTES, FIXED -> {
        node.put("type", "string");
        node.put("pattern", "^([0-9a-fA-F]{2})*$");
      }
      default -> { }
    }
    return node;
  }
}
