import StrataGraph
import StrataRuntime

/// A blkdebug node's shared state: its child, its rules and the engine state the rules test
/// (QEMU's: an integer that starts at 1, moved by `set-state` rules), one for all queues.
final class BlkdebugNodeState: NodeState, TransparentChainLayer, SingleChildFilterState {
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
    }

    init(image: ChildLink, child: any NodeState, rules: [BlkdebugRule], stateRules: [BlkdebugStateRule]) {
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
