import StrataRuntime
import Synchronization

/// A dirty bitmap of a node (QEMU's BdrvDirtyBitmap): which chunks were written since it was
/// created or last cleared, recorded on every queue by the node's request path.
///
/// The bits live in an `AtomicBitmap` the request path marks; everything else (recording,
/// persistent, busy, a backup's frozen bits) changes only on the control path, which then moves
/// every queue to a new graph version so the request path sees the change without a lock.
public final class DirtyBitmap: Sendable {
    /// Nil for a job's own bitmaps, which QMP lists without a name.
    public let name: String?
    public let granularity: UInt64

    private struct State {
        var bits: AtomicBitmap
        /// While a backup copies what `bits` held: new writes go here (QEMU's successor).
        var successor: AtomicBitmap?
        var recording: Bool
        var persistent: Bool
        /// Who uses it (an export, a backup job); such a bitmap can be neither changed nor removed.
        var busyUsers = 0
        /// Loaded from an image that was not closed cleanly: its bits are unknown; it can only be removed.
        var inconsistent = false
    }

    private let state: Locked<State>

    public init(name: String?, sizeBytes: UInt64, granularity: UInt64, recording: Bool = true, persistent: Bool = false,
                inconsistent: Bool = false) {
        self.name = name
        self.granularity = granularity
        state = Locked(State(bits: AtomicBitmap(sizeBytes: sizeBytes, granularity: granularity), recording: recording,
                            persistent: persistent, inconsistent: inconsistent))
    }

    /// What the request path marks: nil when it records nothing.
    var recordingTarget: AtomicBitmap? {
        state.withLock { state in state.recording ? (state.successor ?? state.bits) : nil }
    }

    public var bits: AtomicBitmap { state.withLock { $0.bits } }
    public var isRecording: Bool { state.withLock { $0.recording && $0.successor == nil } }
    public var isPersistent: Bool { state.withLock { $0.persistent } }
    public var isBusy: Bool { state.withLock { $0.busyUsers > 0 || $0.successor != nil } }
    public var isInconsistent: Bool { state.withLock { $0.inconsistent } }
    /// Dirty bytes, as QEMU counts them: set bits times the granularity.
    public var dirtyBytes: UInt64 { state.withLock { UInt64($0.bits.dirtyCount) * granularity } }
    /// Enabled, as the qcow2 `auto` flag stores it.
    public var isEnabled: Bool { state.withLock { $0.recording } }

    /// Its bits are not to be trusted any more (writes reached the node unrecorded).
    public func markInconsistent() { state.withLock { $0.inconsistent = true } }
    func setRecording(_ recording: Bool) { state.withLock { $0.recording = recording } }
    public func setPersistent(_ persistent: Bool) { state.withLock { $0.persistent = persistent } }
    func addUser() { state.withLock { $0.busyUsers += 1 } }
    func removeUser() { state.withLock { $0.busyUsers = max(0, $0.busyUsers - 1) } }

    /// Why the bitmap may not be changed now (QEMU's bdrv_dirty_bitmap_check), nil when it may.
    public func refusal(allowInconsistent: Bool = false) -> String? {
        let label = name ?? ""
        return state.withLock { state in
            if state.busyUsers > 0 || state.successor != nil {
                return "Bitmap '\(label)' is currently in use by another operation and cannot be used"
            }
            if state.inconsistent && !allowInconsistent {
                return "Bitmap '\(label)' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk"
            }
            return nil
        }
    }

    /// Starts a backup's use: writes from the next graph version on go to a successor, and the
    /// bits so far are the ones the backup copies. Call through `GraphController.freeze`.
    func freeze() -> AtomicBitmap? {
        state.withLock { state in
            guard state.successor == nil && state.busyUsers == 0 else { return nil }
            state.successor = AtomicBitmap(sizeBytes: state.bits.sizeBytes, granularity: granularity)
            return state.bits
        }
    }

    /// Ends a backup's use. `keep`: bits of the frozen set to keep (what the backup did not copy,
    /// or all of them when it should count as not done); the successor's bits are kept always.
    func thaw(keeping keep: AtomicBitmap?) {
        state.withLock { state in
            guard let successor = state.successor else { return }
            if let keep { successor.merge(keep) }
            state.bits = successor
            state.successor = nil
        }
    }

    /// New, empty bits for a node of `sizeBytes` (a resize); returns the old ones to merge back once
    /// no write marks them any more.
    func refit(to sizeBytes: UInt64) -> AtomicBitmap? {
        state.withLock { state in
            guard state.successor == nil, state.bits.sizeBytes != sizeBytes else { return nil }
            let old = state.bits
            state.bits = AtomicBitmap(sizeBytes: sizeBytes, granularity: granularity)
            return old
        }
    }
}
