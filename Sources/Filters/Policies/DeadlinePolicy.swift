import DequeModule
import StrataGraph

/// Linux's mq-deadline (block/mq-deadline.c), by direction rather than by tenant: reads and writes
/// each wait in arrival order with a deadline (`read-expire`, `write-expire`, in milliseconds) and
/// in offset order. A batch of up to `fifo-batch` requests goes in offset order, one direction at a
/// time; a new batch prefers reads, but not more than `writes-starved` times in a row while writes
/// wait, and starts at the oldest request when that one's deadline has passed (else where the last
/// batch of that direction stopped). Work-conserving: it reorders, it never holds a request back.
public struct DeadlinePolicy: SchedulingPolicy {
    public struct Tenant: Sendable {}

    public static let driverName = "deadline"
    public static let summary = "mq-deadline: read/write deadlines, offset-ordered batches, write starvation bound"

    private struct Entry {
        let request: PolicyRequest
        let sequence: UInt64
        let deadlineNs: UInt64
    }

    private struct Direction {
        let expireNs: UInt64
        /// Arrival order; entries already sent out of order (no longer in `sorted`) are skipped
        /// when they reach the front.
        var fifo = Deque<Entry>(minimumCapacity: 64)
        /// Offset order (then arrival order).
        var sorted: [Entry] = []
        /// Where the elevator goes on from: the end of the last request sent in this direction.
        var position: UInt64 = 0

        init(expireNs: UInt64) {
            self.expireNs = expireNs
            sorted.reserveCapacity(64)
        }

        var isEmpty: Bool { sorted.isEmpty }

        mutating func insert(_ entry: Entry) {
            fifo.append(entry)
            sorted.insert(entry, at: position(of: entry))
        }

        /// Where `entry` is or belongs in offset order (binary search on offset, then sequence).
        func position(of entry: Entry) -> Int {
            var low = 0
            var high = sorted.count
            while low < high {
                let middle = (low + high) / 2
                let probe = sorted[middle]
                if (probe.request.offsetBytes, probe.sequence) < (entry.request.offsetBytes, entry.sequence) {
                    low = middle + 1
                } else {
                    high = middle
                }
            }
            return low
        }

        func isWaiting(_ entry: Entry) -> Bool {
            let index = position(of: entry)
            return index < sorted.count && sorted[index].sequence == entry.sequence
        }

        /// The oldest entry still waiting.
        mutating func oldest() -> Entry? {
            while let head = fifo.first, !isWaiting(head) { fifo.removeFirst() }
            return fifo.first
        }

        /// The first entry at or after the elevator's position.
        func nextInOffsetOrder() -> Int? {
            var low = 0
            var high = sorted.count
            while low < high {
                let middle = (low + high) / 2
                if sorted[middle].request.offsetBytes < position { low = middle + 1 } else { high = middle }
            }
            return low < sorted.count ? low : nil
        }

        mutating func take(sortedIndex: Int) -> PolicyRequest {
            let entry = sorted.remove(at: sortedIndex)
            if fifo.first?.sequence == entry.sequence { fifo.removeFirst() }
            position = entry.request.offsetBytes + UInt64(entry.request.bytes)
            return entry.request
        }

        func sortedIndex(of entry: Entry) -> Int {
            let index = position(of: entry)
            precondition(index < sorted.count && sorted[index].sequence == entry.sequence, "deadline: the oldest request is not in offset order")
            return index
        }
    }

    private var directions: [Direction]
    private let fifoBatch: Int
    private let writesStarved: Int
    private var batchDirection = 0
    /// Requests sent in the current batch; starts full, so the first request starts a batch.
    private var batching: Int
    private var starved = 0
    private var sequence: UInt64 = 0

    public static func tenant(parsing reader: inout OptionReader) throws(GraphError) -> Tenant { Tenant() }

    public init(parsing reader: inout OptionReader, tenants: [Tenant]) throws(GraphError) {
        let readExpireMs = try reader.integer("read-expire", default: 500, range: 1...3_600_000)
        let writeExpireMs = try reader.integer("write-expire", default: 5_000, range: 1...3_600_000)
        let fifoBatch = try reader.integer("fifo-batch", default: 16, range: 1...4096)
        let writesStarved = try reader.integer("writes-starved", default: 2, range: 0...1024)
        self.init(readExpireNs: UInt64(readExpireMs) * 1_000_000, writeExpireNs: UInt64(writeExpireMs) * 1_000_000,
                  fifoBatch: Int(fifoBatch), writesStarved: Int(writesStarved))
    }

    public init(readExpireNs: UInt64 = 500_000_000, writeExpireNs: UInt64 = 5_000_000_000, fifoBatch: Int = 16,
                writesStarved: Int = 2) {
        directions = [Direction(expireNs: readExpireNs), Direction(expireNs: writeExpireNs)]
        self.fifoBatch = fifoBatch
        self.writesStarved = writesStarved
        batching = fifoBatch
    }

    public mutating func enqueue(_ request: PolicyRequest, nowNs: UInt64) {
        let direction = request.isWrite ? 1 : 0
        sequence &+= 1
        directions[direction].insert(Entry(request: request, sequence: sequence,
                                           deadlineNs: nowNs &+ directions[direction].expireNs))
    }

    public mutating func next(nowNs: UInt64) -> PolicyDecision {
        // Carry on the batch in offset order while it lasts.
        if batching < fifoBatch, let index = directions[batchDirection].nextInOffsetOrder() {
            batching += 1
            return .dispatch(directions[batchDirection].take(sortedIndex: index))
        }
        let readsWait = !directions[0].isEmpty
        let writesWait = !directions[1].isEmpty
        if readsWait && !(writesWait && starved >= writesStarved) {
            if writesWait { starved += 1 }
            batchDirection = 0
        } else if writesWait {
            starved = 0
            batchDirection = 1
        } else {
            return .idle
        }
        batching = 1
        // In place throughout: a copy of the direction would share its queues' storage, and the
        // first change would copy them.
        let chosen = batchDirection
        guard let oldest = directions[chosen].oldest() else { preconditionFailure("deadline: a direction with requests has no oldest") }
        // A new batch starts at the oldest request when its deadline passed or the elevator has run
        // off the end; else where this direction's last batch stopped.
        let index: Int
        if oldest.deadlineNs <= nowNs {
            index = directions[chosen].sortedIndex(of: oldest)
        } else if let next = directions[chosen].nextInOffsetOrder() {
            index = next
        } else {
            index = directions[chosen].sortedIndex(of: oldest)
        }
        return .dispatch(directions[chosen].take(sortedIndex: index))
    }
}
