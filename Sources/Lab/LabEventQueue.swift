/// The simulation's pending events, earliest first (ties in the order they were scheduled, so a
/// run never depends on the heap's layout): a binary heap over one array, reused for the whole run.
struct LabEventQueue {
    enum Kind: UInt8 {
        /// An open-loop tenant's next request arrives; `value` is the tenant.
        case arrival
        /// A closed-loop tenant starts; `value` is the tenant.
        case start
        /// The device completes a request; `value` is its ticket.
        case completion
        /// The policy may let a request go; `value` is the timer's generation.
        case timer
    }

    struct Event {
        let timeNs: UInt64
        let sequence: UInt64
        let kind: Kind
        let value: Int

        func precedes(_ other: Event) -> Bool { (timeNs, sequence) < (other.timeNs, other.sequence) }
    }

    private var heap: [Event] = []
    private var sequence: UInt64 = 0

    init() { heap.reserveCapacity(4096) }

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }
    var nextTimeNs: UInt64? { heap.first?.timeNs }

    mutating func schedule(_ kind: Kind, atNs timeNs: UInt64, value: Int) {
        sequence &+= 1
        heap.append(Event(timeNs: timeNs, sequence: sequence, kind: kind, value: value))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Event? {
        guard let first = heap.first else { return nil }
        let last = heap.removeLast()
        guard !heap.isEmpty else { return first }
        heap[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            guard left < heap.count else { break }
            let right = left + 1
            let smaller = right < heap.count && heap[right].precedes(heap[left]) ? right : left
            guard heap[smaller].precedes(heap[parent]) else { break }
            heap.swapAt(smaller, parent)
            parent = smaller
        }
        return first
    }
}
