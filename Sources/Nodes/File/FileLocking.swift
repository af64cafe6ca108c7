/// Whether the file node takes QEMU's OFD image locks (QEMU's `locking` option).
enum FileLocking: String, Sendable, CaseIterable {
    case on, off
    /// QEMU's default: lock when the host supports OFD locks.
    case auto
}
