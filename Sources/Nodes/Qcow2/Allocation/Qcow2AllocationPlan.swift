/// What one allocating write decided under the allocation lock, carried across the unlocked data
/// write to the locked mapping step.
struct Qcow2AllocationPlan {
    /// The writable L2 table and the first entry the write maps.
    let table: UInt64
    let firstIndex: Int
    let firstGuestCluster: UInt64
    /// Where the request starts in the first cluster, and how many of its bytes the plan covers.
    let inCluster: Int
    let covered: Int
    /// The first of the contiguous host clusters allocated.
    let hostBase: UInt64
    /// The host clusters were never used and read as zeros.
    let fresh: Bool
    /// The old L2 entries of the clusters, one per cluster.
    let replaced: [UInt64]
}
