import StrataGraph
import StrataRuntime

/// A throttle node on one queue: waits for its group's admission, then forwards to the child.
actor ThrottleInstance: BlockNode {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let child: NodeHandle
    private let group: ThrottleGroup
    private let member: ThrottleGroup.Member
    private let clock: any IOClock

    init(queue: QueueContext, child: NodeHandle, group: ThrottleGroup, member: ThrottleGroup.Member) {
        self.unownedExecutor = queue.executor.asUnownedSerialExecutor()
        self.child = child
        self.group = group
        self.member = member
        self.clock = queue.clock
    }

    /// A flush, or any request while the group has no limits, goes straight to the child.
    nonisolated func route(_ request: inout BlockRequest) -> Routing {
        request.operation == .flush || !group.isEnabled ? .forward(to: NodeReference(child)) : .suspend
    }

    nonisolated(nonsending) func submit(_ request: BlockRequest) async -> IOStatus {
        // As QEMU: reads and writes are throttled, write-zeroes and discard count as writes of their
        // length, and a flush moves no data so it is not.
        // `isEnabled` first: a group without limits then costs one relaxed load, not an async call.
        if request.operation != .flush && group.isEnabled {
            await group.admit(member: member, isWrite: request.operation.isWrite, bytes: request.lengthBytes, clock: clock)
        }
        return await child.submit(request)
    }
}
