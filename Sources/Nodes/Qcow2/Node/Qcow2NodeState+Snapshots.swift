import Glibc
import StrataGraph
import StrataRuntime

/// Why a snapshot operation failed, worded as qemu-img words it.
public struct Qcow2SnapshotError: Error, CustomStringConvertible {
    public let description: String
}

extension Qcow2NodeState {
    /// The internal snapshots, as the table stands now (read-only nodes: as opened).
    public var snapshots: [Qcow2Snapshot] { allocator?.snapshots ?? [] }

    /// Creates, applies or deletes an internal snapshot. The node must be writable, and no guest
    /// I/O may be in flight (the caller drains it, as QEMU does).
    @discardableResult
    public func perform(_ operation: Qcow2SnapshotOperation) async throws(Qcow2SnapshotError) -> Qcow2Snapshot {
        let (verb, key): (String, String) = switch operation {
        case .create(let name): ("create", name)
        case .apply(let key): ("apply", key)
        case .delete(let key): ("delete", key)
        }
        guard let allocator, !allocator.refusesWrites else {
            throw Qcow2SnapshotError(description: "Could not \(verb) snapshot '\(key)': \(IOStatus.readOnly)")
        }
        // As QEMU: a snapshot's data would have to live in the data file, which has one copy.
        guard !metadata.hasDataFile else {
            throw Qcow2SnapshotError(description: "Could not \(verb) snapshot '\(key)': internal snapshots are not supported with an external data file")
        }
        do {
            return try await controlIO.snapshotOperation(allocator, operation)
        } catch {
            // A snapshot operation that failed part-way may have switched the header's snapshot
            // table or L1 table on disk without memory knowing: write nothing more.
            allocator.fence()
            if allocator.isCorrupt { await controlIO.markCorrupt(allocator) }
            let reason = error.status.errno == ENOENT ? "Can't find the snapshot" : "\(error.status)"
            throw Qcow2SnapshotError(description: "Could not \(verb) snapshot '\(key)': \(reason)")
        }
    }
}
