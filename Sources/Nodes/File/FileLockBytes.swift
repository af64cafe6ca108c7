import CStrataShim
import Glibc
import StrataGraph

/// QEMU's image locking protocol (file-posix raw_apply_lock_bytes / raw_check_lock_bytes), so a
/// Strata node and a QEMU process see each other's use of an image.
///
/// For permission bit i (Permissions.rawValue, equal to QEMU's BLK_PERM_*), a user holds a shared
/// OFD lock on byte 100+i while it takes the permission and on byte 200+i while it does not share
/// it. A conflict is another open file description holding 200+i for a permission we take, or
/// 100+i for one we do not share; a test for an exclusive lock on that byte finds it, and our own
/// locks never count because OFD locks belong to the open file description.
struct FileLockBytes {
    static let permissionBase: Int64 = 100
    static let unsharedBase: Int64 = 200

    /// Permissions whose byte 100+i this node holds.
    private(set) var permissions: Permissions = []
    /// Permissions whose byte 200+i this node holds (the ones it does not share).
    private(set) var unshared: Permissions = []

    /// Moves the held bytes to what `take`/`share` need. As QEMU's prepare/commit/abort in one
    /// step: first lock the union of old and new bytes, then check for conflicts, then drop what
    /// is no longer needed; on failure drop only the bytes this call added, so the old locks stay.
    mutating func apply(fd: Int32, take: Permissions, share: Permissions, node: String, path: String) throws(FileLockError) {
        let take = take.intersection(.all)
        let newUnshared = Permissions.all.subtracting(share)
        // Only dropping bytes cannot conflict with anyone (QEMU skips the check too).
        if !(take.isSubset(of: permissions) && newUnshared.isSubset(of: unshared)) {
            let (oldPermissions, oldUnshared) = (permissions, unshared)
            do {
                try lock(fd: fd, permissions: permissions.union(take), unshared: unshared.union(newUnshared), node: node, path: path)
                try Self.checkConflicts(fd: fd, take: take, share: share, node: node, path: path)
            } catch {
                release(fd: fd, keeping: oldPermissions, unshared: oldUnshared)
                throw error
            }
        }
        release(fd: fd, keeping: take, unshared: newUnshared)
    }

    private mutating func lock(fd: Int32, permissions wanted: Permissions, unshared wantedUnshared: Permissions,
                               node: String, path: String) throws(FileLockError) {
        for (bit, index) in Self.bits {
            if wanted.contains(bit) && !permissions.contains(bit) {
                try Self.lockByte(fd: fd, Self.permissionBase + index, node: node, path: path)
                permissions.insert(bit)
            }
            if wantedUnshared.contains(bit) && !unshared.contains(bit) {
                try Self.lockByte(fd: fd, Self.unsharedBase + index, node: node, path: path)
                unshared.insert(bit)
            }
        }
    }

    /// Unlocks every held byte outside `keeping`. Unlocking a byte we hold cannot conflict; should
    /// the call fail anyway the byte stays recorded as held (QEMU only warns).
    mutating func release(fd: Int32, keeping keptPermissions: Permissions, unshared keptUnshared: Permissions) {
        for (bit, index) in Self.bits {
            if permissions.contains(bit) && !keptPermissions.contains(bit)
                && strata_ofd_lock(fd, Self.permissionBase + index, Int32(F_UNLCK)) == 0 {
                permissions.remove(bit)
            }
            if unshared.contains(bit) && !keptUnshared.contains(bit)
                && strata_ofd_lock(fd, Self.unsharedBase + index, Int32(F_UNLCK)) == 0 {
                unshared.remove(bit)
            }
        }
    }

    private static func checkConflicts(fd: Int32, take: Permissions, share: Permissions, node: String, path: String) throws(FileLockError) {
        for (bit, index) in bits where take.contains(bit) {
            let result = strata_ofd_probe(fd, unsharedBase + index, Int32(F_WRLCK))
            if result != 0 {
                throw FileLockError(node: node, path: path, message: "Failed to get \"\(name(of: bit))\" lock",
                                    errno: result > 0 ? EAGAIN : -result)
            }
        }
        for (bit, index) in bits where !share.contains(bit) {
            let result = strata_ofd_probe(fd, permissionBase + index, Int32(F_WRLCK))
            if result != 0 {
                throw FileLockError(node: node, path: path, message: "Failed to get shared \"\(name(of: bit))\" lock",
                                    errno: result > 0 ? EAGAIN : -result)
            }
        }
    }

    private static func lockByte(fd: Int32, _ offset: Int64, node: String, path: String) throws(FileLockError) {
        let result = strata_ofd_lock(fd, offset, Int32(F_RDLCK))
        if result != 0 {
            throw FileLockError(node: node, path: path, message: "Failed to lock byte \(offset)", errno: -result)
        }
    }

    /// Each single permission with its bit index.
    private static let bits: [(Permissions, Int64)] = Permissions.names.map {
        ($0.0, Int64($0.0.rawValue.trailingZeroBitCount))
    }

    private static func name(of bit: Permissions) -> String {
        Permissions.names.first { $0.0 == bit }?.1 ?? bit.description
    }
}
