import Glibc
import StrataGraph
import StrataRuntime
import Synchronization

/// A blkdebug node's shared state: its child, its rules and the engine state the rules test
/// (QEMU's: an integer that starts at 1, moved by `set-state` rules), one for all queues.
final class BlkdebugNodeState: NodeState, TransparentChainLayer, SingleChildFilterState, DebugBreakpoints {
    private let image: ChildLink
    private let child: ChildStateReference
    let rules: [BlkdebugRule]
    let stateRules: [BlkdebugStateRule]
    private let engine = Locked(Engine())

    /// QEMU's blkdebug engine: the state integer and the armed `inject-error` rules.
    private struct Engine {
        var state = 1
        /// Indices into `rules`, in the order they are checked.
        var armed: [Int] = []
        /// `once` rules that fired: QEMU removes them.
        var spent: Set<Int> = []
        /// qemu-io's `break`: the next request firing the event waits under the tag.
        var breakpoints: [(trigger: BlkdebugTrigger, tag: String)] = []
        var suspended: [(tag: String, waiter: ParkedContinuation<Void>)] = []
    }

    /// How many breakpoints are set: routing checks it without the lock.
    private let breakpointCount = Atomic<Int>(0)

    /// Whether a request may have to wait at a breakpoint (it then takes the suspending path).
    var hasBreakpoints: Bool { breakpointCount.load(ordering: .relaxed) > 0 }

    /// Holds `request` if it fires the event of a breakpoint (spending the breakpoint, as QEMU's
    /// suspend rules are), until `resume` or `removeBreakpoint` lets it go.
    nonisolated(nonsending) func waitAtBreakpoint(_ request: BlockRequest) async {
        guard let trigger = BlkdebugTrigger(firedBy: request) else { return }
        let tag: String? = engine.withLock { engine in
            guard let index = engine.breakpoints.firstIndex(where: { $0.trigger == trigger }) else { return nil }
            breakpointCount.subtract(1, ordering: .relaxed)
            return engine.breakpoints.remove(at: index).tag
        }
        guard let tag else { return }
        // QEMU's blkdebug prints both lines; qemu-io scripts and their expected output rely on them.
        await park { (waiter: ParkedContinuation<Void>) in
            engine.withLock { $0.suspended.append((tag, waiter)) }
            print("blkdebug: Suspended request '\(tag)'")
        }
        print("blkdebug: Resuming request '\(tag)'")
    }

    func setBreakpoint(event: String, tag: String) -> Int32 {
        guard let trigger = BlkdebugTrigger(qemuName: event) else { return -ENOENT }
        engine.withLock { $0.breakpoints.append((trigger, tag)) }
        breakpointCount.add(1, ordering: .relaxed)
        return 0
    }

    func removeBreakpoint(tag: String) -> Int32 {
        let (removed, waiters) = engine.withLock { engine -> (Int, [ParkedContinuation<Void>]) in
            let before = engine.breakpoints.count
            engine.breakpoints.removeAll { $0.tag == tag }
            let waiters = engine.suspended.filter { $0.tag == tag }.map(\.waiter)
            engine.suspended.removeAll { $0.tag == tag }
            return (before - engine.breakpoints.count, waiters)
        }
        breakpointCount.subtract(removed, ordering: .relaxed)
        for waiter in waiters { waiter.resume() }
        return removed + waiters.count > 0 ? 0 : -ENOENT
    }

    func resume(tag: String) -> Int32 {
        let waiter = engine.withLock { engine -> ParkedContinuation<Void>? in
            guard let index = engine.suspended.firstIndex(where: { $0.tag == tag }) else { return nil }
            return engine.suspended.remove(at: index).waiter
        }
        guard let waiter else { return -ENOENT }
        waiter.resume()
        return 0
    }

    func isSuspended(tag: String) -> Bool {
        engine.withLock { engine in engine.suspended.contains { $0.tag == tag } }
    }

    /// The request constraints the node meets for its child.
    let limits: BlkdebugLimits
    /// Held by a padded write's read-modify-write (exclusively) and by every other read and
    /// write (shared) while constraints are set: no request overlaps a block being merged.
    let locks = RangeLock()

    init(image: ChildLink, child: any NodeState, rules: [BlkdebugRule], stateRules: [BlkdebugStateRule], limits: BlkdebugLimits) {
        self.limits = limits
        self.image = image
        self.child = ChildStateReference(child)
        self.rules = rules
        self.stateRules = stateRules
    }

    var sizeBytes: UInt64 { child.current.sizeBytes }

    /// The status `request` fails with, or nil to pass it on. As QEMU's blkdebug: a request that
    /// fires an event (its `debugEvent`, or for guest data its operation) arms the `inject-error`
    /// rules of that event valid in the current state, replacing those armed before, if it has
    /// any; its `set-state` rules move the state (all of the event's rules see the state from
    /// before it; of several, the first given wins). Then every request, whether it fired an event
    /// or not, fails with the first armed rule that matches it; a `once` rule is spent by that.
    /// One engine for all queues, under a lock: blkdebug is a test device, not a fast path.
    func verdict(for request: BlockRequest) -> IOStatus? {
        let trigger = BlkdebugTrigger(firedBy: request)
        return engine.withLock { engine -> IOStatus? in
            if let trigger {
                let before = engine.state
                let firing = rules.indices.filter { index in
                    !engine.spent.contains(index) && rules[index].trigger == trigger && (rules[index].state == 0 || rules[index].state == before)
                }
                if !firing.isEmpty { engine.armed = firing }
                if let rule = stateRules.first(where: { $0.trigger == trigger && ($0.state == 0 || $0.state == before) }) {
                    engine.state = rule.newState
                }
            }
            guard let position = engine.armed.firstIndex(where: { rules[$0].matches(request) }) else { return nil }
            let index = engine.armed[position]
            if rules[index].once {
                engine.armed.remove(at: position)
                engine.spent.insert(index)
            }
            return rules[index].status
        }
    }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let handle = children.child(image.optionKey) else { preconditionFailure("blkdebug instance built without its image") }
        return BlkdebugInstance(queue: queue, child: handle, state: self)
    }

    func relink(children: [ChildLink: any NodeState]) {
        if let newChild = children.child(image.optionKey) { child.replace(with: newChild) }
    }

    var filteredState: any NodeState { child.current }

    var filteredLink: ChildLink { image }

    var filteredChildState: any NodeState { child.current }
}
