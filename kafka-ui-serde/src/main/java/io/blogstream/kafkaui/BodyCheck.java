package io.blogstream.kafkaui;

import java.util.HashMap;
import java.util.Map;
import org.apache.avro.Schema;

/**
 * Walks an Avro binary body against its writer schema without building anything, to reject
 * garbage before Avro's reader sees it: Avro allocates whatever a length prefix claims (up to
 * 2 GiB for one string), so a few random bytes after a valid header could make Kafka UI allocate
 * gigabytes. Here every length and count must fit in the bytes that are actually there.
 */
final class BodyCheck {

  /** Items that take no bytes (arrays of null): more than this is not a plausible record. */
  private static final long MAX_EMPTY_ITEMS = 1 << 20;

  private final byte[] data;
  private int pos;
  private long emptyItems;
  private final Map<Schema, Integer> minSizes = new HashMap<>();

  private BodyCheck(byte[] data, int offset) {
    this.data = data;
    this.pos = offset;
  }

  /** Null if the body is well-formed for {@code schema}, else what is wrong and where. */
  static String problem(Schema schema, byte[] data, int offset) {
    BodyCheck check = new BodyCheck(data, offset);
    try {
      check.walk(schema, "");
      return null;
    } catch (Malformed e) {
      return e.getMessage();
    }
  }

  private static final class Malformed extends Exception {
    Malformed(String message) {
      super(message, null, false, false);
    }
  }

  private int remaining() {
    return data.length - pos;
  }

  private void need(int bytes, String what, String path) throws Malformed {
    if (bytes < 0 || bytes > remaining()) {
      throw new Malformed(where(path) + what + " needs " + bytes + " bytes but only " + remaining() + " are left");
    }
  }

  private static String where(String path) {
    return path.isEmpty() ? "" : path + ": ";
  }

  private long varLong(String path) throws Malformed {
    long raw = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos >= data.length) {
        throw new Malformed(where(path) + "the body ends inside a number");
      }
      int b = data[pos++] & 0xFF;
      raw |= (long) (b & 0x7F) << shift;
      if ((b & 0x80) == 0) {
        return (raw >>> 1) ^ -(raw & 1); // zig-zag
      }
    }
    throw new Malformed(where(path) + "a number longer than 10 bytes");
  }

  private int length(String what, String path) throws Malformed {
    long length = varLong(path);
    if (length < 0 || length > remaining()) {
      throw new Malformed(where(path) + what + " of " + length + " bytes, but only " + remaining() + " are left");
    }
    return (int) length;
  }

  private void walk(Schema schema, String path) throws Malformed {
    switch (schema.getType()) {
      case NULL -> { }
      case BOOLEAN -> {
        need(1, "a boolean", path);
        if ((data[pos++] & 0xFF) > 1) {
          throw new Malformed(where(path) + "a boolean that is neither 0 nor 1");
        }
      }
      case INT, LONG -> {
        long n = varLong(path);
        if (schema.getType() == Schema.Type.INT && (n < Integer.MIN_VALUE || n > Integer.MAX_VALUE)) {
          throw new Malformed(where(path) + "an int out of range");
        }
      }
      case FLOAT -> skip(4, "a float", path);
      case DOUBLE -> skip(8, "a double", path);
      case STRING, BYTES -> {
        int length = length("a " + schema.getType().getName(), path); // reads the prefix: not `pos += length(...)`
        pos += length;
      }
      case FIXED -> skip(schema.getFixedSize(), "a fixed", path);
      case ENUM -> {
        long index = varLong(path);
        if (index < 0 || index >= schema.getEnumSymbols().size()) {
          throw new Malformed(where(path) + "enum index " + index + " of " + schema.getName()
              + " is not one of its " + schema.getEnumSymbols().size() + " symbols");
        }
      }
      case UNION -> {
        long index = varLong(path);
        if (index < 0 || index >= schema.getTypes().size()) {
          throw new Malformed(where(path) + "union branch " + index + " does not exist");
        }
        walk(schema.getTypes().get((int) index), path);
      }
      case RECORD -> {
        for (Schema.Field field : schema.getFields()) {
          walk(field.schema(), path.isEmpty() ? field.name() : path + "." + field.name());
        }
      }
      case ARRAY -> blocks(schema.getElementType(), null, path);
      case MAP -> blocks(schema.getValueType(), Schema.create(Schema.Type.STRING), path);
      default -> throw new Malformed(where(path) + "unsupported type " + schema.getType());
    }
  }

  private void skip(int bytes, String what, String path) throws Malformed {
    need(bytes, what, path);
    pos += bytes;
  }

  private void blocks(Schema item, Schema key, String path) throws Malformed {
    int itemSize = minSize(item) + (key == null ? 0 : 1);
    int index = 0;
    while (true) {
      long count = varLong(path);
      if (count == 0) {
        return;
      }
      if (count < 0) {
        count = -count;
        length("a block", path); // the block's size in bytes; only checked to fit
      }
      if (count < 0 || (itemSize > 0 && count > remaining() / itemSize)) {
        throw new Malformed(where(path) + "a block of " + count + " items cannot fit in the "
            + remaining() + " bytes left");
      }
      if (itemSize == 0 && (emptyItems += count) > MAX_EMPTY_ITEMS) {
        throw new Malformed(where(path) + "more than " + MAX_EMPTY_ITEMS + " empty items");
      }
      for (long i = 0; i < count; i++, index++) {
        String at = path + "[" + index + "]";
        if (key != null) {
          walk(key, at);
        }
        walk(item, at);
      }
    }
  }

  /** The fewest bytes a value of {@code schema} takes. */
  private int minSize(Schema schema) {
    Integer known = minSizes.get(schema);
    if (known != null) {
      return known;
    }
    minSizes.put(schema, 0); // a recursive type: count its inner use as 0
    int size = switch (schema.getType()) {
      case NULL -> 0;
      case FLOAT -> 4;
      case DOUBLE -> 8;
      case FIXED -> schema.getFixedSize();
      case RECORD -> {
        long sum = 0;
        for (Schema.Field field : schema.getFields()) {
          sum += minSize(field.schema());
        }
        yield (int) Math.min(sum, 1 << 20);
      }
      default -> 1; // a varint, a length prefix, a union index or a block count
    };
    minSizes.put(schema, size);
    return size;
  }
}
