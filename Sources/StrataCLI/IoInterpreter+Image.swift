import Glibc
import StrataEngine
import StrataGraph
import StrataNodes

/// The commands about the image rather than its data: length, info, map, alloc, discard, flush
/// and truncate.
extension IoInterpreter {
    func length(_ arguments: [String]) -> Bool {
        out(IoFormat.size(Double(session.sizeBytes)))
        return true
    }

    /// qemu-io's info: format, cluster size, VM state offset, then qcow2's format-specific part.
    func info(_ arguments: [String]) -> Bool {
        let layer = session.layers[0]
        guard let qcow2 = layer.probe.qcow2, layer.format == "qcow2" else {
            out("format name: \(layer.format)\ncluster size: 0 bytes\nvm state offset: 0 bytes")
            return true
        }
        // qcow2_vm_state_offset: the VM state starts after the guest area the L1 table covers.
        let l1Span = qcow2.clusterSize * (qcow2.clusterSize / 8)
        let vmStateOffset = (qcow2.sizeBytes + l1Span - 1) / l1Span * l1Span
        var lines = ["format name: qcow2", "cluster size: \(IoFormat.size(Double(qcow2.clusterSize)))",
                     "vm state offset: \(IoFormat.size(Double(vmStateOffset)))", "Format specific information:"]
        lines.append("    compat: \(qcow2.version >= 3 ? "1.1" : "0.10")")
        lines.append("    compression type: \(qcow2.compressionType == 1 ? "zstd" : "zlib")")
        if qcow2.version >= 3 { lines.append("    lazy refcounts: \(qcow2.lazyRefcounts)") }
        lines.append("    refcount bits: \(qcow2.refcountBits)")
        if qcow2.version >= 3 {
            lines.append("    corrupt: \(qcow2.isCorrupt)")
            lines.append("    extended l2: \(qcow2.hasExtendedL2)")
        }
        out(lines.joined(separator: "\n"))
        return true
    }

    /// Runs of the top layer's allocation, merged while the answer stays the same (map_is_allocated).
    func map(_ arguments: [String]) async -> Bool {
        let size = session.sizeBytes
        var offset: UInt64 = 0
        while offset < size {
            do {
                let first = try await session.layerBlockStatus(offsetBytes: offset, maxLengthBytes: size - offset)
                guard first.lengthBytes > 0 else { error("strata io: Unexpected end of image"); return false }
                var length = first.lengthBytes
                while offset + length < size {
                    let next = try await session.layerBlockStatus(offsetBytes: offset + length, maxLengthBytes: size - offset - length)
                    guard next.lengthBytes > 0, next.isAllocated == first.isAllocated else { break }
                    length += next.lengthBytes
                }
                out("\(IoFormat.size(Double(length))) (0x\(String(length, radix: 16))) bytes \(first.isAllocated ? "    allocated" : "not allocated") at offset \(IoFormat.size(Double(offset))) (0x\(String(offset, radix: 16)))")
                offset += length
            } catch {
                self.error("strata io: Failed to get allocation status: \(error)")
                return false
            }
        }
        return true
    }

    func alloc(_ arguments: [String]) async -> Bool {
        guard let start = number(arguments[0]) else { return false }
        var count: Int64 = 512
        if arguments.count == 2 { guard let value = number(arguments[1]) else { return false }; count = value }
        var offset = UInt64(start)
        var remaining = UInt64(count)
        var allocated: UInt64 = 0
        while remaining > 0 {
            do {
                let extent = try await session.layerBlockStatus(offsetBytes: offset, maxLengthBytes: remaining)
                if extent.lengthBytes == 0 {
                    // Past the end: qemu-io reports only what lay inside the image.
                    count -= Int64(remaining)
                    break
                }
                if extent.isAllocated { allocated += extent.lengthBytes }
                offset += extent.lengthBytes
                remaining -= extent.lengthBytes
            } catch {
                out("is_allocated failed: \(error)")
                return false
            }
        }
        out("\(allocated)/\(count) bytes allocated at offset \(IoFormat.size(Double(start)))")
        return true
    }

    func discard(_ arguments: [String]) async -> Bool {
        guard let options = options(arguments, spec: "Cq", command: "discard") else { return false }
        guard options.operands.count == 2 else { return usage("discard") }
        guard let offset = number(options.operands[0]), let count = length(options.operands[1]) else { return false }
        let (status, seconds) = await timed(BlockRequest(operation: .discard, offsetBytes: UInt64(offset), lengthBytes: Int(count)))
        guard status.isOK else { out("discard failed: \(Self.describe(status))"); return false }
        if !options.has("q") {
            out(IoFormat.report("discard", seconds: seconds, offset: offset, count: count, total: count, ops: 1, csv: options.has("C")))
        }
        return true
    }

    /// qemu-io's flush prints nothing, also when it fails; the exit status tells.
    func flush(_ arguments: [String]) async -> Bool {
        await session.flush().isOK
    }

    func truncate(_ arguments: [String]) async -> Bool {
        guard let options = options(arguments, spec: "m:", command: "truncate") else { return false }
        guard options.operands.count == 1 else { return usage("truncate") }
        if let mode = options.values["m"], mode != "off" {
            error("strata io: Unsupported preallocation mode '\(mode)'")
            return false
        }
        guard let size = number(options.operands[0]) else { return false }
        do {
            try await session.resize(to: UInt64(size))
            return true
        } catch {
            self.error("strata io: \(error)")
            return false
        }
    }
}
