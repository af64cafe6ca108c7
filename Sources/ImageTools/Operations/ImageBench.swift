import StrataGraph
import StrataRuntime
import Synchronization

/// qemu-img bench: `count` requests of `bufferBytes` each, `depth` in flight, at offsets from
/// `startOffset` moving by `stepBytes` and wrapping to 0 where a request would pass the end.
/// One task per slot of depth, each with its own buffer allocated once, takes the next request
/// number from a shared counter: nothing is allocated per request.
public struct ImageBench: Sendable {
    public var count = 75_000
    public var depth = 64
    public var bufferBytes = 4096
    /// nil: the buffer size, as qemu-img's default.
    public var stepBytes: UInt64?
    public var startOffset: UInt64 = 0
    public var write = false
    public var pattern: UInt8 = 0
    /// A flush after every this many completed requests (0: none).
    public var flushInterval = 0
    /// Before each flush, wait for the requests in flight and start no new ones until it is done
    /// (qemu-img bench's default); false flushes alongside them (--no-drain).
    public var drainOnFlush = true

    public struct Result: Sendable {
        public let seconds: Double
        public let failed: Int
        public let firstError: IOStatus?
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    private final class Shared: Sendable {
        let next = Atomic<Int>(0)
        let done = Atomic<Int>(0)
        let gate = BenchFlushGate()
        let failed = Atomic<Int>(0)
        let firstErrno = Atomic<Int32>(0)
    }

    public init() {}

    /// The offset of request `index` (qemu-img bench's bench_cb sequence, computed directly).
    public func offset(of index: Int, imageBytes: UInt64) -> UInt64 {
        let step = stepBytes ?? UInt64(bufferBytes)
        guard step > 0 else { return startOffset }
        let last = imageBytes - UInt64(bufferBytes)
        let firstRun = (last - startOffset) / step + 1
        if UInt64(index) < firstRun { return startOffset + UInt64(index) * step }
        let period = last / step + 1
        return ((UInt64(index) - firstRun) % period) * step
    }

    public func run(_ session: ImageSession) async throws -> Result {
        let size = session.sizeBytes
        guard bufferBytes > 0, UInt64(bufferBytes) <= size, startOffset <= size - UInt64(bufferBytes) else {
            throw Failure(description: "Offset \(startOffset) plus buffer size \(bufferBytes) exceeds the image size \(size)")
        }
        let shared = Shared()
        let settings = self
        let start = MonotonicClock.now()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<max(1, min(depth, count)) {
                group.addTask(executorPreference: session.taskPreference()) {
                    let buffer = AlignedBuffer(count: settings.bufferBytes, filledWith: settings.pattern)
                    while true {
                        let index = shared.next.wrappingAdd(1, ordering: .relaxed).oldValue
                        guard index < settings.count else { break }
                        let request = BlockRequest(operation: settings.write ? .write : .read, offsetBytes: settings.offset(of: index, imageBytes: size),
                                                   lengthBytes: settings.bufferBytes, buffer: buffer.io)
                        let draining = settings.flushInterval > 0 && settings.drainOnFlush
                        if draining { await shared.gate.enter() }
                        var status = await session.submit(request)
                        if draining { shared.gate.leave() }
                        let completed = shared.done.wrappingAdd(1, ordering: .relaxed).newValue
                        if status.isOK, settings.flushInterval > 0, completed % settings.flushInterval == 0 {
                            if draining {
                                await shared.gate.drainAndFlush { status = await session.flush() }
                            } else {
                                status = await session.flush()
                            }
                        }
                        if !status.isOK {
                            shared.failed.wrappingAdd(1, ordering: .relaxed)
                            _ = shared.firstErrno.compareExchange(expected: 0, desired: status.errno, ordering: .relaxed)
                        }
                    }
                    withExtendedLifetime(buffer) {}
                }
            }
        }
        let seconds = Double(MonotonicClock.now() - start) / 1e9
        let errno = shared.firstErrno.load(ordering: .relaxed)
        return Result(seconds: seconds, failed: shared.failed.load(ordering: .relaxed), firstError: errno == 0 ? nil : IOStatus(errno: errno))
    }
}
