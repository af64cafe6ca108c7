import CStrataShim
import Glibc
import StrataRuntime

/// Memory a virtio driver shares with the device, addressed by guest-physical addresses: one or
/// more regions, each a host mapping of a guest-physical range. The load generator maps one
/// anonymous region; a vhost-user front end sends the guest's regions with SET_MEM_TABLE.
/// `translate(address:length:)` is the only way descriptors reach host memory, and a buffer must
/// lie inside one region.
///
/// A trivially copyable value so queue views and descriptor walks carry it without reference
/// counting: the region table is a pointer. Copies are views: exactly one owner calls
/// `deallocate()`, after every queue that uses the memory is gone.
///
/// Why `@unchecked Sendable` is safe: the value and its region table are immutable once made. The
/// memory they name is shared with the other side of a virtqueue by design; the virtqueue protocol
/// (acquire/release on the ring indices) orders accesses to it, not Swift isolation.
public struct GuestMemory: @unchecked Sendable {
    /// One mapped range. `userAddress` is where the front end has the same bytes (vhost-user names
    /// ring addresses that way); 0 when there is no front end.
    ///
    /// Why `@unchecked Sendable` is safe: an immutable description of shared memory, as above.
    public struct Region: Equatable, @unchecked Sendable {
        public var guestAddress: UInt64
        public var size: UInt64
        public var userAddress: UInt64
        /// Host address of the region's first byte.
        public var host: UnsafeMutableRawPointer

        public init(guestAddress: UInt64, size: UInt64, userAddress: UInt64 = 0, host: UnsafeMutableRawPointer) {
            precondition(size > 0 && guestAddress <= UInt64.max - (size - 1), "a region covers 1 to 2^64 - address bytes")
            self.guestAddress = guestAddress
            self.size = size
            self.userAddress = userAddress
            self.host = host
        }
    }

    /// The regions, largest first, so the common lookup ends at the first.
    public let regions: UnsafeBufferPointer<Region>
    /// Set when this value mapped its one region itself (and unmaps it in `deallocate`).
    private let ownsMapping: Bool

    public static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Maps `size` zeroed bytes at guest address `guestBase`, placed on `numaNode` (the queue's
    /// CPU's node) where the machine has several. `guestBase` must be page aligned so that guest
    /// and host addresses have the same alignment (ring indices are accessed atomically, which
    /// needs it).
    public init(guestBase: UInt64 = 0, size: Int, numaNode: Int32 = -1) throws(SystemError) {
        precondition(size > 0, "guest memory needs at least one byte")
        precondition(guestBase % UInt64(Self.pageSize) == 0, "guest base must be page aligned")
        precondition(guestBase <= UInt64.max - UInt64(size) + 1, "guest address range wraps past 2^64")
        let mapped = mmap(nil, Self.mappedLength(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapped, mapped != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SystemError("mmap guest memory", errno: errno)
        }
        strata_place_on_node(mapped, Self.mappedLength(size), numaNode)
        let table = UnsafeMutableBufferPointer<Region>.allocate(capacity: 1)
        table.initialize(repeating: Region(guestAddress: guestBase, size: UInt64(size), host: mapped))
        regions = UnsafeBufferPointer(table)
        ownsMapping = true
    }

    /// A view of regions someone else mapped (and unmaps after `deallocate`). Regions may not
    /// overlap in guest-physical space: an address must name one byte.
    public init(regions: [Region]) {
        precondition(!regions.isEmpty, "guest memory needs a region")
        let sorted = regions.sorted { $0.size > $1.size }
        let byAddress = regions.sorted { $0.guestAddress < $1.guestAddress }
        for (lower, upper) in zip(byAddress, byAddress.dropFirst()) {
            precondition(upper.guestAddress - lower.guestAddress >= lower.size, "guest memory regions overlap")
        }
        let table = UnsafeMutableBufferPointer<Region>.allocate(capacity: sorted.count)
        _ = table.initialize(from: sorted)
        self.regions = UnsafeBufferPointer(table)
        ownsMapping = false
    }

    /// Frees the region table, and unmaps the memory this value mapped. Every copy dangles afterwards.
    public func deallocate() {
        if ownsMapping { munmap(regions[0].host, Self.mappedLength(Int(regions[0].size))) }
        UnsafeMutableBufferPointer(mutating: regions).deallocate()
    }

    /// Guest-physical address of the first byte of the first (largest) region.
    public var guestBase: UInt64 { regions[0].guestAddress }
    /// Usable bytes of the first region.
    public var size: Int { Int(regions[0].size) }
    /// Host address of the first region's first byte.
    public var hostBase: UnsafeMutableRawPointer { regions[0].host }

    /// Host memory for `length` bytes at guest `address`, or nil unless the whole range lies
    /// inside one region. Overflow safe for any 64-bit inputs: nothing is added before checking.
    @inlinable @inline(__always)
    public func translate(address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for region in regions where address >= region.guestAddress {
            let offset = address &- region.guestAddress
            guard offset <= region.size else { continue }
            guard length <= region.size &- offset else { return nil }
            return region.host + Int(offset)
        }
        return nil
    }

    /// Whether `length` bytes at guest `address` lie inside the memory.
    @inlinable public func contains(address: UInt64, length: UInt64) -> Bool {
        translate(address: address, length: length) != nil
    }

    /// The guest address of `length` bytes the front end has at `userAddress`, or nil unless they
    /// lie inside one region.
    public func guestAddress(ofUserAddress userAddress: UInt64, length: UInt64) -> UInt64? {
        for region in regions where userAddress >= region.userAddress {
            let offset = userAddress &- region.userAddress
            guard offset <= region.size, length <= region.size &- offset else { continue }
            return region.guestAddress &+ offset
        }
        return nil
    }

    /// The guest address of a host pointer into this memory, or nil when it points elsewhere.
    /// Drivers use it to put host-built buffers into descriptors.
    @inlinable public func guestAddress(of pointer: UnsafeRawPointer) -> UInt64? {
        for region in regions {
            let start = UnsafeRawPointer(region.host)
            guard pointer >= start, UInt64(pointer - start) <= region.size else { continue }
            return region.guestAddress &+ UInt64(pointer - start)
        }
        return nil
    }

    private static func mappedLength(_ size: Int) -> Int {
        (size + pageSize - 1) / pageSize * pageSize
    }
}
