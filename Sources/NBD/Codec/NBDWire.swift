/// Big-endian stores and loads on raw memory: every NBD field is network byte order and may sit at
/// any alignment, so these go through unaligned byte-order-converting accesses.
public enum NBDWire {
    @inlinable public static func store16(_ value: UInt16, _ buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
    }
    @inlinable public static func store32(_ value: UInt32, _ buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self)
    }
    @inlinable public static func store64(_ value: UInt64, _ buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt64.self)
    }
    @inlinable public static func load16(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> UInt16 {
        UInt16(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }
    @inlinable public static func load32(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> UInt32 {
        UInt32(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
    @inlinable public static func load64(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> UInt64 {
        UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}

/// Appends big-endian fields to a byte array: handshake messages are rare and small, so the
/// handshake machines build them in arrays rather than caller buffers.
struct NBDByteWriter {
    var bytes: [UInt8] = []

    mutating func put16(_ value: UInt16) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func put32(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func put64(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func put(_ data: some Sequence<UInt8>) { bytes.append(contentsOf: data) }
    mutating func putString(_ string: String) { bytes.append(contentsOf: string.utf8) }
}

/// Reads big-endian fields from a byte array, failing (nil) instead of trapping past the end: the
/// bytes come from the peer and may lie about their own lengths.
struct NBDByteReader {
    let bytes: [UInt8]
    private(set) var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - position }

    mutating func get16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        defer { position += 2 }
        return UInt16(bytes[position]) << 8 | UInt16(bytes[position + 1])
    }
    mutating func get32() -> UInt32? {
        guard let high = get16(), let low = get16() else { return nil }
        return UInt32(high) << 16 | UInt32(low)
    }
    mutating func get64() -> UInt64? {
        guard remaining >= 8, let high = get32(), let low = get32() else { return nil }
        return UInt64(high) << 32 | UInt64(low)
    }
    mutating func getBytes(_ count: Int) -> ArraySlice<UInt8>? {
        guard count >= 0, remaining >= count else { return nil }
        defer { position += count }
        return bytes[position..<position + count]
    }
    /// A string of `count` bytes; nil past the end or when it is not valid UTF-8 or holds NUL,
    /// which doc/proto.md forbids in every protocol string.
    mutating func getString(_ count: Int) -> String? {
        guard let raw = getBytes(count), !raw.contains(0) else { return nil }
        return String(validating: raw, as: UTF8.self)
    }
}
