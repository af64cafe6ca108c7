import CStrataShim

/// Storage for io_uring timeouts: the kernel reads the deadline at submission, after the caller's
/// closure returned, so it must live in stable memory. Freed slots are reused: steady state allocates nothing.
struct TimerSlot {
    var deadline: __kernel_timespec
    var continuation: UnsafeContinuation<Void, Never>?
    var nextFree: UnsafeMutablePointer<TimerSlot>?
}

/// Owned by one queue executor's thread.
final class TimerSlots {
    private var freeList: UnsafeMutablePointer<TimerSlot>?
    private var allocated: [UnsafeMutablePointer<TimerSlot>] = []

    deinit {
        for slot in allocated { slot.deallocate() }
    }

    func take(deadlineNs: UInt64, continuation: UnsafeContinuation<Void, Never>) -> UnsafeMutablePointer<TimerSlot> {
        let slot: UnsafeMutablePointer<TimerSlot>
        if let free = freeList {
            slot = free
            freeList = free.pointee.nextFree
        } else {
            slot = .allocate(capacity: 1)
            allocated.append(slot)
        }
        let deadline = __kernel_timespec(tv_sec: Int64(deadlineNs / 1_000_000_000), tv_nsec: Int64(deadlineNs % 1_000_000_000))
        slot.initialize(to: TimerSlot(deadline: deadline, continuation: continuation, nextFree: nil))
        return slot
    }

    func fire(_ slot: UnsafeMutablePointer<TimerSlot>) {
        let continuation = slot.pointee.continuation
        assert(continuation != nil, "a timer slot fired twice")
        slot.pointee.continuation = nil
        slot.pointee.nextFree = freeList
        freeList = slot
        continuation?.resume()
    }
}

extension UnsafeMutablePointer where Pointee == TimerSlot {
    func pointer(to field: KeyPath<TimerSlot, __kernel_timespec>) -> UnsafeMutablePointer<__kernel_timespec>? {
        guard let offset = MemoryLayout<TimerSlot>.offset(of: field) else { return nil }
        return (UnsafeMutableRawPointer(self) + offset).assumingMemoryBound(to: __kernel_timespec.self)
    }
}
