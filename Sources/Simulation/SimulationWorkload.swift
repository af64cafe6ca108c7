import StrataGraph
import StrataNodes
import StrataRuntime

/// The simulated guest: `depth` workers on the image's one queue issuing seeded writes, reads,
/// write-zeroes, discards, compressed writes and flushes that never overlap while in flight, with
/// now and then an internal snapshot created or deleted or the image grown while no request is in
/// flight (as QEMU drains for them). Every read is checked against the model, and every
/// completion goes into the run's digest. Workers stop once the power is cut.
actor SimulationWorkload {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    private let port: BackendPort
    private let executor: QueueExecutor
    private let image: Qcow2NodeState
    private let disk: SimNodeState
    private let settings: SimulationSettings
    private var random: SeededRandom
    private(set) var model: SectorModel
    private(set) var digest = RunDigest()
    private(set) var tally = SimulationTally()
    private(set) var wrongReads: [String] = []
    /// A snapshot operation failed or the power went during one: refcounts and COPIED flags may
    /// then disagree after the cut, which no ordering of QEMU's writes avoids either.
    private(set) var snapshotInterrupted = false
    /// Sizes the image may have after a power cut: the one of the last completed resize and any tried since.
    private(set) var possibleSizes: Set<UInt64>
    private var operationsLeft: Int
    private var inFlight: [Range<Int>] = []
    private var nextValue = SectorPattern.backingValue + 1
    private var snapshots: [String] = []
    private var snapshotsMade = 0
    private var draining = false
    private var drainWaiter: ParkedContinuation<Void>?
    private var drainBlocked: [ParkedContinuation<Void>] = []

    /// `strata sim --trace`: every completion, as it happens.
    private let trace: Bool

    init(port: BackendPort, queue: QueueContext, image: Qcow2NodeState, disk: SimNodeState, settings: SimulationSettings, trace: Bool) {
        self.trace = trace
        unownedExecutor = queue.executor.asUnownedSerialExecutor()
        executor = queue.executor
        self.port = port
        self.image = image
        self.disk = disk
        self.settings = settings
        random = SeededRandom(seed: settings.seed ^ 0x6775_6573_7420_696f)
        model = SectorModel(sectorCount: Int(settings.sizeBytes) / SectorPattern.sectorBytes, hasBacking: settings.hasBacking)
        possibleSizes = [settings.sizeBytes]
        operationsLeft = settings.operations
    }

    private var sizeBytes: UInt64 { UInt64(model.sectorCount * SectorPattern.sectorBytes) }
    private var powerIsOff: Bool { disk.powerCut != nil }

    /// What the run promised and saw, for judging the image after the cut.
    struct Promises: Sendable {
        let model: SectorModel
        let possibleSizes: Set<UInt64>
        let tally: SimulationTally
        let digest: RunDigest
        let wrongReads: [String]
        let snapshotInterrupted: Bool
    }

    var promises: Promises {
        Promises(model: model, possibleSizes: possibleSizes, tally: tally, digest: digest, wrongReads: wrongReads,
                 snapshotInterrupted: snapshotInterrupted)
    }

    func run() async {
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<settings.depth {
                group.addTask { await self.work(asWorker: worker) }
            }
        }
    }

    private func work(asWorker worker: Int) async {
        while operationsLeft > 0 && !powerIsOff {
            if draining {
                await park { (continuation: ParkedContinuation<Void>) in
                    if draining { drainBlocked.append(continuation) } else { continuation.resume() }
                }
                continue
            }
            operationsLeft -= 1
            await performOne(worker: worker)
        }
    }

    // MARK: Operations

    private func performOne(worker: Int) async {
        let roll = random.next() % 1000
        let shares = settings.mix.cumulativeShares
        switch roll {
        case 0..<shares[0]: await write(range: pickRange(), compressed: false)
        case shares[0]..<shares[1]: await read(range: pickRange())
        case shares[1]..<shares[2]: await zero(range: pickRange(), unmap: random.next() % 2 == 0)
        case shares[2]..<shares[3]: await discard(range: pickRange(clusterAligned: true))
        case shares[3]..<shares[4]: await write(range: pickRange(clusterAligned: true, oneCluster: true), compressed: true)
        case shares[4]..<shares[5]: await flush()
        default:
            // Whole-image edits come from one worker, between requests, as QEMU drains for them.
            if worker == 0 { await edit() } else { await flush() }
        }
    }

    /// A range of sectors no request in flight touches, or nil after a few tries.
    private func pickRange(clusterAligned: Bool = false, oneCluster: Bool = false) -> Range<Int>? {
        let clusterSectors = max(1, settings.clusterSize / SectorPattern.sectorBytes)
        for _ in 0..<4 {
            var start = Int(random.next() % UInt64(model.sectorCount))
            var count = 1 + Int(random.next() % UInt64(min(128, 2 * clusterSectors)))
            if clusterAligned || random.next() % 4 == 0 {
                start = start / clusterSectors * clusterSectors
                count = oneCluster ? clusterSectors : clusterSectors * (1 + Int(random.next() % 2))
            }
            let range = start..<min(model.sectorCount, start + count)
            if !range.isEmpty && !inFlight.contains(where: { $0.overlaps(range) }) { return range }
        }
        return nil
    }

    private func write(range: Range<Int>?, compressed: Bool) async {
        guard let range else { return await flush() }
        let value = nextValue
        nextValue += 1
        let entries = model.issue(range, value: value, isDiscard: false)
        let buffer = SectorBuffer(sectors: range.count)
        defer { buffer.release() }
        for (index, sector) in range.enumerated() {
            SectorPattern.fill(buffer.sector(index), value: value, sector: UInt64(sector))
        }
        let status = await submit(.write, range, buffer: buffer, flags: compressed ? [.compressed] : [])
        if status.isOK { model.acknowledge(range, entries: entries, at: model.nextEvent()) }
        tally.count(compressed ? .compressedWrite : .write, status)
    }

    private func zero(range: Range<Int>?, unmap: Bool) async {
        guard let range else { return await flush() }
        let entries = model.issue(range, value: SectorPattern.zeroValue, isDiscard: false)
        let status = await submit(.writeZeroes, range, buffer: nil, flags: unmap ? [.mayUnmap] : [])
        if status.isOK { model.acknowledge(range, entries: entries, at: model.nextEvent()) }
        tally.count(.writeZeroes, status)
    }

    private func discard(range: Range<Int>?) async {
        guard let range else { return await flush() }
        let entries = model.issue(range, value: SectorPattern.zeroValue, isDiscard: true)
        let status = await submit(.discard, range, buffer: nil, flags: [])
        if status.isOK { model.acknowledge(range, entries: entries, at: model.nextEvent()) }
        tally.count(.discard, status)
    }

    private func read(range: Range<Int>?) async {
        guard let range else { return await flush() }
        let buffer = SectorBuffer(sectors: range.count)
        defer { buffer.release() }
        let status = await submit(.read, range, buffer: buffer, flags: [])
        tally.count(.read, status)
        guard status.isOK else { return }
        for (index, sector) in range.enumerated() {
            let found = SectorPattern.decode(buffer.sector(index), sector: UInt64(sector))
            digest.add(found ?? UInt64.max)
            let allowed = model.valuesNow(sector)
            if found == nil || !allowed.contains(found!) {
                wrongReads.append("a read of sector \(sector) returned \(found.map { "value \($0)" } ?? "bytes no write put there"), expected one of \(allowed.sorted())")
            }
        }
    }

    private func flush() async {
        let issued = model.nextEvent()
        let status = await submit(.flush, 0..<0, buffer: nil, flags: [])
        if status.isOK { model.flushCompleted(issuedAt: issued) }
        tally.count(.flush, status)
    }

    private func submit(_ operation: BlockOperation, _ range: Range<Int>, buffer: SectorBuffer?, flags: RequestFlags) async -> IOStatus {
        inFlight.append(range)
        let request = BlockRequest(operation: operation, offsetBytes: UInt64(range.lowerBound * SectorPattern.sectorBytes),
                                   lengthBytes: range.count * SectorPattern.sectorBytes,
                                   buffer: buffer?.ioBuffer ?? .empty, flags: flags)
        let status = await port.submit(request)
        inFlight.remove(at: inFlight.firstIndex(of: range)!)
        digest.add(UInt64(operation.rawValue), UInt64(range.lowerBound), UInt64(range.count), UInt64(UInt32(bitPattern: status.errno)))
        if trace { print("  \(operation) sectors \(range.lowerBound)..<\(range.upperBound)\(flags.isEmpty ? "" : " flags \(flags.rawValue)") value \(nextValue - 1): \(status)") }
        if inFlight.isEmpty, let waiter = drainWaiter {
            drainWaiter = nil
            waiter.resume()
        }
        return status
    }

    // MARK: Whole-image edits

    /// Runs one whole-image edit; false when it failed (traced with why).
    private func attempt(_ what: String, _ edit: @Sendable () async throws -> Any) async -> Bool {
        do {
            _ = try await edit()
            if trace { print("  \(what): ok") }
            return true
        } catch {
            if trace { print("  \(what): \(error)") }
            return false
        }
    }

    /// A snapshot created or deleted, or the image grown, with no request in flight.
    private func edit() async {
        draining = true
        await park { (continuation: ParkedContinuation<Void>) in
            if inFlight.isEmpty { continuation.resume() } else { drainWaiter = continuation }
        }
        defer {
            draining = false
            let blocked = drainBlocked
            drainBlocked = []
            for waiter in blocked { waiter.resume() }
        }
        guard !powerIsOff else { return }
        let canResize = snapshots.isEmpty && !settings.extendedL2
        switch random.next() % 3 {
        case 0 where !snapshots.isEmpty:
            let name = snapshots.remove(at: Int(random.next() % UInt64(snapshots.count)))
            let ok = await attempt("delete snapshot \(name)") { try await self.image.perform(.delete(name)) }
            if !ok { snapshots.append(name) }  // the deletion may or may not have happened; try again later
            if !ok || powerIsOff { snapshotInterrupted = true }
            tally.count(.snapshotDelete, ok ? .ok : .ioError)
        case 1 where canResize:
            let newSize = sizeBytes + UInt64(settings.clusterSize) * (1 + random.next() % 64)
            possibleSizes.insert(newSize)
            let ok = await attempt("grow to \(newSize)") { try await self.image.resize(to: newSize, executor: self.executor) }
            if ok {
                model.grow(to: Int(newSize) / SectorPattern.sectorBytes)
                possibleSizes = [newSize]
            }
            tally.count(.resize, ok ? .ok : .ioError)
        default:
            snapshotsMade += 1
            let name = "sim\(snapshotsMade)"
            let ok = await attempt("create snapshot \(name)") { try await self.image.perform(.create(name: name)) }
            snapshots.append(name)  // even when it failed: it may exist, and deleting it is how to find out
            if !ok || powerIsOff { snapshotInterrupted = true }
            tally.count(.snapshotCreate, ok ? .ok : .ioError)
        }
        digest.add(UInt64(tally.total))
        if trace { print("  edit done: snapshots \(snapshots), size \(sizeBytes)") }
    }
}

/// Page-aligned memory for one request's sectors, freed by the request's owner.
struct SectorBuffer: @unchecked Sendable {
    // @unchecked Sendable: the memory is used by one request at a time, on the simulation's one queue.
    let base: UnsafeMutableRawPointer
    let count: Int

    init(sectors: Int) {
        count = sectors * SectorPattern.sectorBytes
        base = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 4096)
    }

    var ioBuffer: IOBuffer { IOBuffer(base: base, count: count) }
    func sector(_ index: Int) -> UnsafeMutableRawPointer { base + index * SectorPattern.sectorBytes }
    func release() { base.deallocate() }
}
