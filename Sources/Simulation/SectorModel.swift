/// What the simulated guest knows about its disk: for every sector, the values it was given in
/// order (writes do not overlap while in flight), each with when it was acknowledged, and when
/// the last flush that succeeded was issued. From that it says which values a sector may hold
/// now, and which it must hold after a power cut.
struct SectorModel {
    /// A value a sector was given. `acknowledged` is the event number of a successful completion,
    /// nil while in flight or when the request failed (then the sector may or may not hold it).
    /// A discard is no definite value: the sector may read as zeros, the backing data or as before.
    struct Entry {
        let value: UInt64
        var acknowledged: Int?
        let isDiscard: Bool
    }

    private(set) var sectors: [[Entry]]
    let initialValue: UInt64
    /// Event number of the issue of the last flush that completed successfully.
    private(set) var durableBefore = -1
    private(set) var event = 0

    init(sectorCount: Int, hasBacking: Bool) {
        sectors = Array(repeating: [], count: sectorCount)
        initialValue = hasBacking ? SectorPattern.backingValue : SectorPattern.zeroValue
    }

    var sectorCount: Int { sectors.count }

    mutating func nextEvent() -> Int {
        event += 1
        return event
    }

    /// The guest issued a write of `value` (or a discard) over `range`; returns its entry indexes.
    mutating func issue(_ range: Range<Int>, value: UInt64, isDiscard: Bool) -> [Int] {
        range.map { sector in
            sectors[sector].append(Entry(value: value, acknowledged: nil, isDiscard: isDiscard))
            return sectors[sector].count - 1
        }
    }

    mutating func acknowledge(_ range: Range<Int>, entries: [Int], at event: Int) {
        for (sector, entry) in zip(range, entries) { sectors[sector][entry].acknowledged = event }
    }

    mutating func flushCompleted(issuedAt event: Int) { durableBefore = max(durableBefore, event) }

    /// The disk grew and the resize completed (durably, as qcow2 resizes): the new sectors read as
    /// zeros, since the image has no data for them and the backing file ends before them.
    mutating func grow(to sectorCount: Int) {
        let grown = Entry(value: SectorPattern.zeroValue, acknowledged: Self.beforeEverything, isDiscard: false)
        sectors.append(contentsOf: repeatElement([grown], count: sectorCount - sectors.count))
    }

    /// An event number below every flush's, for values durable from the start.
    private static let beforeEverything = -2

    /// Values a read may return now: the last acknowledged value and anything given since.
    func valuesNow(_ sector: Int) -> Set<UInt64> { values(sector, since: { $0.acknowledged != nil }) }

    /// Values a sector may hold after a power cut: the last value acknowledged before the last
    /// completed flush was issued, and anything given since.
    func valuesAfterPowerCut(_ sector: Int) -> Set<UInt64> {
        values(sector, since: { ($0.acknowledged ?? Int.max) < durableBefore })
    }

    private func values(_ sector: Int, since isFloor: (Entry) -> Bool) -> Set<UInt64> {
        let history = sectors[sector]
        let floor = history.lastIndex { !$0.isDiscard && isFloor($0) }
        var allowed: Set<UInt64> = floor == nil ? [initialValue] : []
        for entry in history[(floor ?? 0)...] {
            if entry.isDiscard {
                allowed.insert(SectorPattern.zeroValue)
                allowed.insert(initialValue)
            } else {
                allowed.insert(entry.value)
            }
        }
        return allowed
    }
}
