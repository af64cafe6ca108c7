import StrataGraph
import StrataRuntime

// Writes: overwrites of clusters this image owns go straight to the file.
extension Qcow2NodeInstance {
    func write(from source: UnsafeRawPointer, length: Int, at offset: UInt64, fua: Bool) async -> IOStatus {
        // A run of owned clusters contiguous in guest and file, not written yet.
        var runHost: UInt64 = 0
        var runStart = 0
        var runLength = 0
        var done = 0
        let flags: RequestFlags = fua ? .fua : []
        while done < length {
            let guestOffset = offset + UInt64(done)
            let (l1Index, l2Index, inCluster) = metadata.locate(guestOffset)
            let chunk = min(length - done, metadata.clusterSize - inCluster)
            let entry: UInt64
            let bitmap: UInt64
            switch await l2Entry(l1Index: l1Index, l2Index: l2Index) {
            case .success(let value): (entry, bitmap) = value
            case .failure(let error): return error.status
            }
            // With subclusters, only writes whose every subcluster is allocated overwrite in place.
            if entry & Qcow2ClusterMapping.copiedFlag != 0,
               case .normal(let hostCluster) = Qcow2ClusterMapping(l2Entry: entry, clusterBits: metadata.clusterBits, dataFile: hasDataFile),
               !extendedL2 || Qcow2SubclusterBitmap(bitmap).allowsOverwrite(inCluster: inCluster, length: chunk, subclusterBits: metadata.subclusterBits) {
                let host = hostCluster + UInt64(inCluster)
                if runLength > 0 && runStart + runLength == done && runHost + UInt64(runLength) == host {
                    runLength += chunk
                } else {
                    if runLength > 0 {
                        let status = await writeFile(from: source + runStart, length: runLength, at: runHost, flags: flags)
                        guard status.isOK else { return status }
                    }
                    (runHost, runStart, runLength) = (host, done, chunk)
                }
                done += chunk
                continue
            }
            if runLength > 0 {
                let status = await writeFile(from: source + runStart, length: runLength, at: runHost, flags: flags)
                guard status.isOK else { return status }
                runLength = 0
            }
            switch await allocatingWrite(from: source + done, length: length - done, at: guestOffset, fua: fua) {
            case .success(let written): done += written
            case .failure(let error): return error.status
            }
        }
        if runLength > 0 { return await writeFile(from: source + runStart, length: runLength, at: runHost, flags: flags) }
        return .ok
    }

    func writeFile(from source: UnsafeRawPointer, length: Int, at offset: UInt64, flags: RequestFlags) async -> IOStatus {
        do {
            try await dataIO.write(from: source, length: length, at: offset, flags: flags, event: .none)
            return .ok
        } catch {
            return error.status
        }
    }
}
