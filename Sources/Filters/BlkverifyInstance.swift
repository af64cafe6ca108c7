import Glibc
import StrataGraph
import StrataRuntime

/// A blkverify node on one queue: each request to both children, the results compared.
actor BlkverifyInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private nonisolated let test: NodeHandle
    private nonisolated let raw: NodeHandle

    init(queue: QueueContext, test: NodeHandle, raw: NodeHandle) {
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.test = test
        self.raw = raw
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        switch request.operation {
        case .read:
            return await verifiedRead(request)
        case .spliceRead:
            // Spliced data never passes through memory to compare: declined, the caller reads.
            return .notSupported
        case .write, .writeZeroes:
            async let testStatus = test.submit(request)
            let rawStatus = await raw.submit(request)
            let status = await testStatus
            guard status == rawStatus else {
                Self.report("\(request.operation == .write ? "write" : "write-zeroes") offset=\(request.offsetBytes) bytes=\(request.lengthBytes) return value mismatch test \(status) != raw \(rawStatus)")
                return .ioError
            }
            return status
        case .flush:
            return await test.submit(request)
        case .discard:
            return IOStatus(errno: ENOTSUP)
        }
    }

    /// Reads the test child into the request's buffer and the raw child into a buffer of its own,
    /// then compares them.
    private nonisolated(nonsending) func verifiedRead(_ request: BlockRequest) async -> IOStatus {
        guard request.lengthBytes > 0, let base = request.buffer.base else { return await test.submit(request) }
        let count = request.lengthBytes
        let reference = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 4096)
        defer { reference.deallocate() }
        var rawRequest = request
        rawRequest.buffer = IOBuffer(base: reference, count: count)
        async let testStatus = test.submit(request)
        let rawStatus = await raw.submit(rawRequest)
        let status = await testStatus
        guard status == rawStatus else {
            Self.report("read offset=\(request.offsetBytes) bytes=\(count) return value mismatch test \(status) != raw \(rawStatus)")
            return .ioError
        }
        guard status.isOK else { return status }
        if memcmp(base, reference, count) != 0 {
            var at = 0
            while at < count, base.load(fromByteOffset: at, as: UInt8.self) == reference.load(fromByteOffset: at, as: UInt8.self) { at += 1 }
            Self.report("read offset=\(request.offsetBytes) bytes=\(count) contents mismatch at offset \(request.offsetBytes + UInt64(at))")
            return .ioError
        }
        return .ok
    }

    private static func report(_ text: String) {
        let line = "blkverify: \(text)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}
