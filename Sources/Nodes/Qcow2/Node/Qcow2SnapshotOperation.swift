/// What `qemu-img snapshot` asks of an image: take (-c), apply (-a) or delete (-d) a snapshot.
public enum Qcow2SnapshotOperation: Sendable {
    case create(name: String)
    /// By ID, or by name when no ID matches (as QEMU looks them up).
    case apply(String)
    case delete(String)
}
