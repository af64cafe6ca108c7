import StrataDevices
import Testing

/// The inflight record a vhost-user front end keeps for a restarted back end: whatever moment the
/// predecessor died at, its successor serves again exactly the requests that never reached the
/// used ring, oldest first, and none that did.
@Suite struct VirtqueueInflightTests {
    final class Region {
        let base: UnsafeMutableRawPointer
        let record: VirtqueueInflight

        init(queueSize: Int = 16) {
            let bytes = VirtqueueInflight.regionBytes(queueSize: queueSize)
            base = .allocate(byteCount: bytes, alignment: 64)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            record = VirtqueueInflight(base: base, queueSize: queueSize)
        }

        deinit { base.deallocate() }

        /// The record as a successor finds it in the same memory.
        var successor: VirtqueueInflight { VirtqueueInflight(base: base, queueSize: record.queueSize) }
    }

    @Test func libvhostUsersLayout() {
        #expect(VirtqueueInflight.regionBytes(queueSize: 128) == 2112)
        #expect(VirtqueueInflight.regionBytes(queueSize: 1) == 64)
        let region = Region()
        #expect(region.base.load(fromByteOffset: 8, as: UInt16.self) == 1, "version")
        #expect(region.base.load(fromByteOffset: 10, as: UInt16.self) == 16, "desc_num")
        region.record.fetched(5, counter: 9)
        #expect(region.base.load(fromByteOffset: 16 + 5 * 16, as: UInt8.self) == 1)
        #expect(region.base.load(fromByteOffset: 16 + 5 * 16 + 8, as: UInt64.self) == 9)
    }

    @Test func aFreshRecordHasNothingInFlight() {
        let region = Region()
        let (heads, counter) = region.successor.recover(usedIndex: 0)
        #expect(heads.isEmpty && counter == 1)
    }

    /// A (head 3) and B (head 7) popped; B completes out of order; the back end dies at each point
    /// of B's completion.
    @Test(arguments: ["before B's used element", "between the used index and the record", "after B is recorded done"])
    func aCrashAtAnyPointOfACompletion(point: String) {
        let region = Region()
        let record = region.record
        record.fetched(3, counter: 1)
        record.fetched(7, counter: 2)
        var usedIndex: UInt16 = 0
        if point != "before B's used element" {
            record.completing(7)
            usedIndex = 1  // the device published B's element and used.idx = 1
            if point == "after B is recorded done" { record.completed(7, usedIndex: 1) }
        }
        let (heads, counter) = region.successor.recover(usedIndex: usedIndex)
        #expect(heads == (usedIndex == 0 ? [3, 7] : [3]), "\(point)")
        #expect(counter == 3)
        // Recovery is idempotent: a second successor finds the same.
        #expect(region.successor.recover(usedIndex: usedIndex).heads == heads)
    }

    @Test func resubmissionFollowsTheOrderOfFetching() {
        let region = Region()
        for (head, counter) in [(9, 4), (2, 1), (12, 3), (6, 2)] { region.record.fetched(UInt16(head), counter: UInt64(counter)) }
        region.record.completing(12)
        region.record.completed(12, usedIndex: 1)
        #expect(region.successor.recover(usedIndex: 1) == ([2, 6, 9], 5))
    }
}
