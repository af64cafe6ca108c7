import StrataGraph
import StrataRuntime
import Synchronization

/// A mirror_top node's shared state: the dirty map its writes mark (from the moment it opens, so
/// no write between the filter going in and the job starting is missed), and, in write-blocking
/// mode, where each queue writes the target (the job's ports, one per queue). A write reads both
/// without a lock.
public final class MirrorTopNodeState: NodeState, TransparentChainLayer {
    private let file: ChildLink
    private let child: ChildStateReference
    public let dirtyMap: AtomicBitmap
    /// The target ports, set once; the Mutex owns them, the atomic publishes them to writes.
    private let targetPorts = Locked<TargetPorts?>(nil)
    /// The set's address (0: none yet).
    private let publishedPorts = Atomic<UInt>(0)
    private let writeBlocking = Atomic<Bool>(false)
    /// The atomic cancel of several mirrors: while the gate is closed, new writes wait before
    /// they touch anything; `writesInside` counts those past it.
    private let gateClosed = Atomic<Bool>(false)
    private let writesInside = Atomic<Int>(0)
    private let gateWaiters = Locked<[CheckedContinuation<Void, Never>]>([])
    /// The mirror stopped: writes go to the source only, and mark nothing.
    private let detachedFlag = Atomic<Bool>(false)

    init(file: ChildLink, child: any NodeState, granularity: UInt64) {
        self.file = file
        self.child = ChildStateReference(child)
        dirtyMap = AtomicBitmap(sizeBytes: child.sizeBytes, granularity: granularity)
    }

    public var sizeBytes: UInt64 { child.current.sizeBytes }

    /// From now on every write also goes to the target, through `targets[queue index]`. The
    /// ports are the same for the job's whole life: a second call keeps the first set.
    public func startWriteBlocking(targets: [any BlockTarget]) {
        targetPorts.withLock { owned in
            guard owned == nil else { return }
            let ports = TargetPorts(targets)
            owned = ports
            publishedPorts.store(UInt(bitPattern: Unmanaged.passUnretained(ports).toOpaque()), ordering: .releasing)
        }
        writeBlocking.store(true, ordering: .releasing)
    }

    var isWriteBlocking: Bool { writeBlocking.load(ordering: .acquiring) }
    var isDetached: Bool { detachedFlag.load(ordering: .acquiring) }

    /// A write enters: counted inside first, then it checks the gate, so `closeGate` either sees
    /// it inside or it sees the gate closed and waits outside (both sequentially consistent).
    nonisolated(nonsending) func enter() async {
        while true {
            writesInside.add(1, ordering: .sequentiallyConsistent)
            guard gateClosed.load(ordering: .sequentiallyConsistent) else { return }
            leave()
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let stillClosed = gateWaiters.withLock { waiters in
                    guard gateClosed.load(ordering: .sequentiallyConsistent) else { return false }
                    waiters.append(continuation)
                    return true
                }
                if !stillClosed { continuation.resume() }
            }
        }
    }

    func leave() { writesInside.subtract(1, ordering: .sequentiallyConsistent) }

    /// Stops new writes at the gate; `isQuiet` turns true once the ones inside are done.
    public func closeGate() { gateClosed.store(true, ordering: .sequentiallyConsistent) }

    public var isQuiet: Bool { writesInside.load(ordering: .sequentiallyConsistent) == 0 }

    /// Ends the mirroring (writes from now on reach the source only) and lets the waiting writes in.
    public func detachAndOpenGate() {
        detachedFlag.store(true, ordering: .releasing)
        let waiters = gateWaiters.withLock { waiters in
            gateClosed.store(false, ordering: .sequentiallyConsistent)
            defer { waiters = [] }
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func target(forQueue index: Int) -> (any BlockTarget)? {
        // Not counted: `targetPorts` owns the set until this state goes, and it is set once.
        guard let raw = UnsafeRawPointer(bitPattern: publishedPorts.load(ordering: .acquiring)) else { return nil }
        assert(targetPorts.withLock { $0.map { Unmanaged.passUnretained($0).toOpaque() == UnsafeMutableRawPointer(mutating: raw) } ?? false },
               "the published ports are the ones owned")
        return Unmanaged<TargetPorts>.fromOpaque(raw)._withUnsafeGuaranteedRef { ports in
            index >= 0 && index < ports.targets.count ? ports.targets[index] : nil
        }
    }

    public func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let childHandle = children.child(file.optionKey) else { preconditionFailure("mirror_top instance built without its child") }
        return MirrorTopInstance(queue: queue, child: childHandle, state: self)
    }

    public func relink(children: [ChildLink: any NodeState]) {
        if let newChild = children.child(file.optionKey) { child.replace(with: newChild) }
    }

    public var filteredState: any NodeState { child.current }
}

/// Where a write-blocking mirror writes the target from one queue (the job's port on it).
/// Called on the queue the write came from, and answered there.
public protocol BlockTarget: Sendable {
    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus
}

/// A write-blocking mirror's target ports, one per queue.
final class TargetPorts: Sendable {
    let targets: [any BlockTarget]

    init(_ targets: [any BlockTarget]) { self.targets = targets }
}
