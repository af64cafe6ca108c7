/// Byte access to a qcow2 image's file for the offline tools and the open-time refcount repair.
public protocol Qcow2ImageIO: Sendable {
    func sizeBytes() async throws -> UInt64
    func read(offset: UInt64, count: Int) async throws -> [UInt8]   // bytes past EOF read as zeros
    func write(offset: UInt64, bytes: [UInt8]) async throws
    func flush() async throws
    func truncate(to sizeBytes: UInt64) async throws
}
