/// The order in which QEMU writes an object's members: its QDict iterates a 512-bucket hash table
/// (tdb_hash of the key) bucket by bucket, newest member first within a bucket. Replies built in
/// schema order and passed through here read, key for key, as QEMU's do.
public enum QDictOrder {
    public static func object(_ fields: [(String, OrderedJSON)]) -> OrderedJSON {
        let ranked = fields.enumerated().map { (bucket: bucket(of: $0.element.0), index: $0.offset, field: $0.element) }
        return .object(ranked.sorted { ($0.bucket, -$0.index) < ($1.bucket, -$1.index) }.map(\.field))
    }

    /// QEMU's qdict bucket: tdb_hash(key) % QDICT_BUCKET_MAX.
    public static func bucket(of key: String) -> UInt32 {
        let bytes = Array(key.utf8)
        var value = 0x238F_13AF &* UInt32(truncatingIfNeeded: bytes.count)
        for (index, byte) in bytes.enumerated() {
            value = value &+ (UInt32(byte) << UInt32(index * 5 % 24))
        }
        return (1_103_515_243 &* value &+ 12345) % 512
    }
}
