package io.blogstream.kafkaui;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/** Hex strings for bytes and fingerprints. */
final class Hex {

  private static final char[] DIGITS = "0123456789abcdef".toCharArray();

  private Hex() {}

  static String of(byte[] data, int offset, int length) {
    char[] out = new char[length * 2];
    for (int i = 0; i < length; i++) {
      int b = data[offset + i] & 0xFF;
      out[2 * i] = DIGITS[b >>> 4];
      out[2 * i + 1] = DIGITS[b & 0x0F];
    }
    return new String(out);
  }

  static String of(byte[] data) {
    return of(data, 0, data.length);
  }

  /** The 8 header bytes of a fingerprint as they appear on the wire (little-endian). */
  static String fingerprint(long fingerprint) {
    return of(littleEndian(fingerprint));
  }

  static byte[] littleEndian(long fingerprint) {
    return ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fingerprint).array();
  }

  static long readLittleEndian(byte[] data, int offset) {
    return ByteBuffer.wrap(data, offset, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
  }
}
