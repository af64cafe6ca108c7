import StrataGraph
import StrataRuntime

/// Why a qcow2 operation failed, as the status its request returns.
struct Qcow2Failure: Error {
    let status: IOStatus

    static let corrupt = Qcow2Failure(status: .ioError)
}

/// Metadata and data I/O of one qcow2 instance on its image file: requests to the instance's own
/// `file` child, so they run on the caller's queue and ring. Every read and write names what it
/// is for (`DebugEvent`, QEMU's blkdebug events), so fault injection can target it.
struct Qcow2ChildIO {
    let file: NodeHandle
    /// The external data file, when the image has one: metadata write-back flushes it first.
    var dataFile: NodeHandle? = nil

    nonisolated(nonsending) func read(into base: UnsafeMutableRawPointer, length: Int, at offset: UInt64,
                                      event: DebugEvent) async throws(Qcow2Failure) {
        let status = await file.submit(BlockRequest(operation: .read, offsetBytes: offset, lengthBytes: length,
                                                         buffer: IOBuffer(base: base, count: length), debugEvent: event))
        guard status.isOK else { throw Qcow2Failure(status: status) }
    }

    nonisolated(nonsending) func write(from base: UnsafeRawPointer, length: Int, at offset: UInt64,
                                       flags: RequestFlags = [], event: DebugEvent) async throws(Qcow2Failure) {
        let status = await file.submit(BlockRequest(operation: .write, offsetBytes: offset, lengthBytes: length,
                                                         buffer: IOBuffer(base: UnsafeMutableRawPointer(mutating: base), count: length),
                                                         flags: flags, debugEvent: event))
        guard status.isOK else { throw Qcow2Failure(status: status) }
    }

    /// Writes `bytes` (metadata built in an array) from a page-aligned copy.
    nonisolated(nonsending) func write(bytes: [UInt8], at offset: UInt64, event: DebugEvent) async throws(Qcow2Failure) {
        guard !bytes.isEmpty else { return }
        let memory = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 4096)
        defer { memory.deallocate() }
        bytes.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        try await write(from: memory, length: bytes.count, at: offset, event: event)
    }

    nonisolated(nonsending) func writeZeroes(length: Int, at offset: UInt64, flags: RequestFlags = [],
                                             event: DebugEvent) async throws(Qcow2Failure) {
        let status = await file.submit(BlockRequest(operation: .writeZeroes, offsetBytes: offset, lengthBytes: length, flags: flags,
                                                    debugEvent: event))
        guard status.isOK else { throw Qcow2Failure(status: status) }
    }

    /// Makes data written to the external data file durable (nothing without one).
    nonisolated(nonsending) func flushData() async throws(Qcow2Failure) {
        guard let dataFile else { return }
        let status = await dataFile.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
        guard status.isOK else { throw Qcow2Failure(status: status) }
    }

    nonisolated(nonsending) func flush() async throws(Qcow2Failure) {
        let status = await file.submit(BlockRequest(operation: .flush, offsetBytes: 0, lengthBytes: 0))
        guard status.isOK else { throw Qcow2Failure(status: status) }
    }
}
