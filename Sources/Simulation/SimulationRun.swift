import Glibc
import StrataEngine
import StrataGraph
import StrataImageTools
import StrataNodes
import StrataRuntime

/// One seed, start to end: an image made with the seed's features, opened as device -> blkdebug
/// -> qcow2 -> sim (with a raw backing file on a sim disk of its own), the guest's workload until
/// the power goes, then the image the cut left judged three ways: Strata's checker, `qemu-img
/// check`, and every sector read back through a fresh open against what the guest was promised.
public enum SimulationRun {
    public static func run(_ settings: SimulationSettings, directory: String, qemuImg: String?, keep: Bool, trace: Bool = false) async -> SimulationOutcome {
        var outcome = SimulationOutcome(settings: settings)
        let folder = "\(directory)/seed-\(settings.seed)"
        mkdir(folder, 0o755)
        let imagePath = "\(folder)/image.qcow2"
        do {
            try await prepare(settings, folder: folder, imagePath: imagePath)
            let promises = try await runWorkload(settings, folder: folder, imagePath: imagePath, trace: trace, outcome: &outcome)
            await judge(settings, imagePath: imagePath, promises: promises, qemuImg: qemuImg, outcome: &outcome)
        } catch {
            outcome.problems.append("the run stopped: \(error)")
        }
        outcome.keptAt = keep || !outcome.passed ? folder : nil
        if outcome.keptAt == nil { removeFolder(folder) }
        return outcome
    }

    // MARK: Steps

    private static func prepare(_ settings: SimulationSettings, folder: String, imagePath: String) async throws {
        var options = Qcow2CreateOptions(sizeBytes: settings.sizeBytes)
        options.version = settings.version
        options.clusterSize = settings.clusterSize
        options.refcountBits = settings.refcountBits
        options.lazyRefcounts = settings.lazyRefcounts
        options.extendedL2 = settings.extendedL2
        options.compressionType = settings.compression
        if settings.hasBacking {
            var backing = [UInt8](repeating: 0, count: Int(settings.sizeBytes))
            backing.withUnsafeMutableBytes { bytes in
                for sector in 0..<(bytes.count / SectorPattern.sectorBytes) {
                    SectorPattern.fill(bytes.baseAddress! + sector * SectorPattern.sectorBytes, value: SectorPattern.backingValue, sector: UInt64(sector))
                }
            }
            try writeFile("\(folder)/backing.raw", backing)
            options.backingFile = "backing.raw"
            options.backingFormat = "raw"
        }
        try await Qcow2Creator.create(path: imagePath, options: options)
    }

    /// The guest's run on a fresh engine; returns what the guest was promised.
    private static func runWorkload(_ settings: SimulationSettings, folder: String, imagePath: String, trace: Bool,
                                    outcome: inout SimulationOutcome) async throws -> SimulationWorkload.Promises {
        let engine = try Engine(queueCount: 1, cpus: nil)
        var actions: [JSONValue] = []
        func add(_ fields: [String: JSONValue]) { actions.append(.object(["type": "blockdev-add", "data": .object(fields)])) }
        if settings.hasBacking {
            add(["driver": "sim", "node-name": "backing-disk", "filename": .string("\(folder)/backing.raw"), "read-only": true,
                 "seed": .int(Int64(bitPattern: settings.seed &+ 1)), "latency-max-turns": .int(Int64(settings.maxLatencyTurns))])
            add(["driver": "raw", "node-name": "backing", "file": "backing-disk", "read-only": true])
        }
        add(["driver": "sim", "node-name": "disk", "filename": .string(imagePath), "seed": .int(Int64(bitPattern: settings.seed)),
             "latency-max-turns": .int(Int64(settings.maxLatencyTurns)), "fault-ppm": .int(Int64(settings.faultPerMillion)),
             "flush": settings.lyingDisk ? "ignore" : "on"])
        add(["driver": "qcow2", "node-name": "image", "file": "disk", "backing": settings.hasBacking ? "backing" : .null,
             "l2-cache-size": .int(Int64(settings.l2CacheBytes))])
        // A filter between the guest and the format, as in a real graph. Not copy-on-read: its
        // block-status queries read L2 tables on the control executor, another thread, whose
        // timing against the queue's would make a seed's run differ from one run to the next.
        add(["driver": "blkdebug", "node-name": "filter", "image": "image"])
        actions.append(.object(["type": "backend-add", "data": .object([
            "id": "guest", "node-name": "filter", "writable": true,
        ])]))
        let queue = engine.queues[0]
        do {
            try await engine.controller.apply(json: .array(actions))
            let port = BackendPort(backendName: "guest", queue: queue)
            try await engine.controller.attach(port)
            guard let disk = try await engine.controller.state(of: "disk") as? SimNodeState,
                  let image = try await engine.controller.state(of: "image") as? Qcow2NodeState else {
                preconditionFailure("the simulation's graph has a sim disk under a qcow2 image")
            }
            let workload = SimulationWorkload(port: port, queue: queue, image: image, disk: disk, settings: settings, trace: trace)
            disk.arm(faults: settings.faultPerMillion > 0, cutAtRequest: settings.cutAtRequest)
            await ThreadAffineExecutors.startTask(serving: queue.executor) { await workload.run() }.value
            // Past the last operation: the guest's promises end here, and so does the power.
            disk.cutPower()
            // Read before the shutdown: the workload lives on the queue's executor.
            let promises = await workload.promises
            await engine.controller.detach(port)
            await engine.shutdown()
            guard let cut = disk.powerCut else { preconditionFailure("the power was cut") }
            outcome.cut = cut
            outcome.disk = disk.counters
            outcome.tally = promises.tally
            outcome.digest = promises.digest
            outcome.digest.add(UInt64(cut.atRequest), UInt64(cut.sectorsKept), UInt64(cut.sectorsLost))
            outcome.problems += promises.wrongReads.prefix(5).map { "during the run, \($0)" }
            try writeFile(imagePath, cut.image)
            return promises
        } catch {
            await engine.shutdown()
            throw error
        }
    }

    /// The image after the cut: consistent by both checkers (leaks allowed, as QEMU leaves them
    /// after a crash), and holding everything flushed.
    private static func judge(_ settings: SimulationSettings, imagePath: String, promises: SimulationWorkload.Promises,
                              qemuImg: String?, outcome: inout SimulationOutcome) async {
        do {
            let io = try Qcow2FileIO(path: imagePath, writable: true)
            let offline = try await Qcow2OfflineImage.load(io: io, name: imagePath)
            if offline.isDirty {
                // Lazy refcounts leave them stale until repaired, which any open for writing does first.
                guard settings.lazyRefcounts else { return outcome.problems.append("the image is dirty without lazy refcounts") }
                outcome.repairedDirty = true
                let repair = try await Qcow2Checker.check(io: io, filename: imagePath, repair: .all)
                if let failure = repair.failure { return outcome.problems.append("repairing the dirty image failed: \(failure)") }
            }
            let report = try await Qcow2Checker.check(io: io, filename: imagePath, repair: nil)
            outcome.leakedClusters = report.leaks
            let copiedFlags = report.messages.filter { $0.hasPrefix("ERROR OFLAG_COPIED") }.count
            outcome.copiedFlagErrors = copiedFlags
            let allowed = promises.snapshotInterrupted ? copiedFlags : 0
            if report.checkErrors > 0 || report.failure != nil || report.corruptions > allowed {
                let serious = report.messages.filter { !$0.hasPrefix("Leaked") && (allowed == 0 || !$0.hasPrefix("ERROR OFLAG_COPIED")) }
                outcome.problems.append("strata's check: \(report.corruptions) corruptions, \(report.checkErrors) errors: \(serious.prefix(3).joined(separator: "; "))")
            }
        } catch {
            return outcome.problems.append("strata's check could not read the image: \(error)")
        }
        if let qemuImg {
            switch ExternalCheck.qemuImgCheck(qemuImg, path: imagePath) {
            case nil: outcome.problems.append("could not run \(qemuImg)")
            case (let status, let output)?:
                outcome.qemuImgChecked = true
                // With OFLAG_COPIED mismatches allowed (above), exit status 2 is expected when they are all it found.
                let lines = output.split(separator: "\n").map(String.init)
                let serious = lines.filter { $0.hasPrefix("ERROR") && !(promises.snapshotInterrupted && $0.hasPrefix("ERROR OFLAG_COPIED")) }
                if status == 1 || status > 3 || (status == 2 && !serious.isEmpty) {
                    outcome.problems.append("qemu-img check exited \(status): \((serious.isEmpty ? lines : serious).prefix(4).joined(separator: "; "))")
                }
            }
        }
        await verifyData(imagePath: imagePath, promises: promises, outcome: &outcome)
    }

    /// Every sector read back through a fresh open: what was flushed is there, and nothing else
    /// is but values the guest wrote.
    private static func verifyData(imagePath: String, promises: SimulationWorkload.Promises, outcome: inout SimulationOutcome) async {
        let model = promises.model
        let sizes = promises.possibleSizes
        let session: ImageSession
        do {
            session = try await ImageSession.open(imagePath, options: ImageOpenOptions(readOnly: true))
        } catch {
            return outcome.problems.append("the image does not open after the power cut: \(error)")
        }
        if !sizes.contains(session.sizeBytes) {
            outcome.problems.append("the image's size is \(session.sizeBytes), expected one of \(sizes.sorted())")
        }
        let sectors = min(model.sectorCount, Int(session.sizeBytes) / SectorPattern.sectorBytes)
        let chunk = 2048
        let buffer = SectorBuffer(sectors: chunk)
        defer { buffer.release() }
        var wrong: [String] = []
        var first = 0
        while first < sectors {
            let count = min(chunk, sectors - first)
            let request = BlockRequest(operation: .read, offsetBytes: UInt64(first * SectorPattern.sectorBytes),
                                       lengthBytes: count * SectorPattern.sectorBytes, buffer: buffer.ioBuffer)
            let status = await session.submit(request)
            guard status.isOK else {
                wrong.append("reading sectors \(first)..<\(first + count) failed: \(status)")
                break
            }
            for index in 0..<count {
                let sector = first + index
                let found = SectorPattern.decode(buffer.sector(index), sector: UInt64(sector))
                outcome.digest.add(found ?? UInt64.max)
                let allowed = model.valuesAfterPowerCut(sector)
                if found == nil || !allowed.contains(found!) {
                    wrong.append("sector \(sector) holds \(found.map { "value \($0)" } ?? "bytes no write put there"), expected one of \(allowed.sorted())")
                }
            }
            first += count
        }
        await session.close()
        outcome.sectorsVerified = sectors
        outcome.wrongSectors = wrong.count
        outcome.problems += wrong.prefix(5).map { "after the power cut, \($0)" }
    }

    // MARK: Files

    public static func writeFile(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError("open \(path)", errno: errno) }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            guard count > 0 else { throw SystemError("write \(path)", errno: errno) }
            done += count
        }
    }

    private static func removeFolder(_ folder: String) {
        for name in ["image.qcow2", "backing.raw"] { unlink("\(folder)/\(name)") }
        rmdir(folder)
    }
}
