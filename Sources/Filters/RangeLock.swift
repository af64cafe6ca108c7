import StrataRuntime

/// Serialises copies against guest writes of the same range, on every queue (QEMU marks such
/// requests serialising for the same reason): copy-on-read reads backing data and writes it back,
/// copy-before-write reads old data for the target before the guest overwrites it; a guest write
/// landing in between would be lost or copied too late. Copies hold their range exclusively,
/// writes shared; grants go in arrival order, so a waiting copy is not starved by a stream of
/// writes. Only filters that copy take it, and only while they have something to copy.
final class RangeLock: Sendable {
    private struct Hold {
        let id: UInt64
        let range: Range<UInt64>
        let exclusive: Bool

        func conflicts(with other: Hold) -> Bool {
            (exclusive || other.exclusive) && range.overlaps(other.range)
        }
    }

    private struct Waiter {
        let hold: Hold
        let continuation: CheckedContinuation<Void, Never>
    }

    private struct Table {
        var nextID: UInt64 = 1
        var holds: [Hold] = []
        var waiters: [Waiter] = []

        func isFree(_ hold: Hold, before waiterCount: Int) -> Bool {
            !holds.contains { $0.conflicts(with: hold) } && !waiters.prefix(waiterCount).contains { $0.hold.conflicts(with: hold) }
        }
    }

    private let table = Locked(Table())

    /// Waits until `range` may be held and holds it; returns the id to release it with.
    nonisolated(nonsending) func acquire(_ range: Range<UInt64>, exclusive: Bool) async -> UInt64 {
        let (hold, granted) = table.withLock { table -> (Hold, Bool) in
            let hold = Hold(id: table.nextID, range: range, exclusive: exclusive)
            table.nextID += 1
            guard table.isFree(hold, before: table.waiters.count) else { return (hold, false) }
            table.holds.append(hold)
            return (hold, true)
        }
        if granted { return hold.id }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = table.withLock { table -> Bool in
                if table.isFree(hold, before: table.waiters.count) {
                    table.holds.append(hold)
                    return true
                }
                table.waiters.append(Waiter(hold: hold, continuation: continuation))
                return false
            }
            if now { continuation.resume() }
        }
        return hold.id
    }

    /// Releases a hold and wakes the waiters that may now proceed.
    func release(_ id: UInt64) {
        let woken = table.withLock { table -> [CheckedContinuation<Void, Never>] in
            table.holds.removeAll { $0.id == id }
            var woken: [CheckedContinuation<Void, Never>] = []
            var index = 0
            while index < table.waiters.count {
                let waiter = table.waiters[index]
                if table.isFree(waiter.hold, before: index) {
                    table.holds.append(waiter.hold)
                    table.waiters.remove(at: index)
                    woken.append(waiter.continuation)
                } else {
                    index += 1
                }
            }
            return woken
        }
        for continuation in woken { continuation.resume() }
    }
}
