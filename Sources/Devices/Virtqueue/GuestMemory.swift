import CStrataShim
import Glibc
import StrataRuntime

/// Memory a virtio driver shares with the device, addressed by guest-physical addresses.
///
/// Today it is one anonymous, page-aligned mapping whose guest addresses start at `guestBase`.
/// vhost-user will map several regions of real guest memory: they join as more regions behind the
/// same `translate(address:length:)`, which stays the only way descriptors reach host memory.
///
/// A trivially copyable value so queue views and descriptor walks carry it without reference
/// counting. Copies are views: exactly one owner calls `deallocate()`, after every queue that uses
/// the memory is gone.
///
/// Why `@unchecked Sendable` is safe: the value is immutable. The memory it names is shared with
/// the other side of a virtqueue by design; the virtqueue protocol (acquire/release on the ring
/// indices) orders accesses to it, not Swift isolation.
public struct GuestMemory: @unchecked Sendable {
    /// Guest-physical address of the first byte.
    public let guestBase: UInt64
    /// Usable bytes; the mapping itself is rounded up to whole pages.
    public let size: Int
    /// Host address of the first byte; page aligned.
    public let hostBase: UnsafeMutableRawPointer

    public static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Maps `size` zeroed bytes, placed on `numaNode` (the queue's CPU's node) where the machine
    /// has several. `guestBase` must be page aligned so that guest and host addresses have the same
    /// alignment (ring indices are accessed atomically, which needs it).
    public init(guestBase: UInt64 = 0, size: Int, numaNode: Int32 = -1) throws(SystemError) {
        precondition(size > 0, "guest memory needs at least one byte")
        precondition(guestBase % UInt64(Self.pageSize) == 0, "guest base must be page aligned")
        precondition(guestBase <= UInt64.max - UInt64(size) + 1, "guest address range wraps past 2^64")
        let mapped = mmap(nil, Self.mappedLength(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapped, mapped != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SystemError("mmap guest memory", errno: errno)
        }
        strata_place_on_node(mapped, Self.mappedLength(size), numaNode)
        self.guestBase = guestBase
        self.size = size
        self.hostBase = mapped
    }

    /// Unmaps the memory. Every copy of this value dangles afterwards.
    public func deallocate() {
        munmap(hostBase, Self.mappedLength(size))
    }

    /// Host memory for `length` bytes at guest `address`, or nil unless the whole range lies
    /// inside the memory. Overflow safe for any 64-bit inputs: nothing is added before checking.
    @inlinable @inline(__always)
    public func translate(address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        guard address >= guestBase else { return nil }
        let offset = address &- guestBase
        let limit = UInt64(size)
        guard offset <= limit, length <= limit &- offset else { return nil }
        return hostBase + Int(offset)
    }

    /// Whether `length` bytes at guest `address` lie inside the memory.
    @inlinable public func contains(address: UInt64, length: UInt64) -> Bool {
        translate(address: address, length: length) != nil
    }

    /// The guest address of a host pointer into this memory, or nil when it points elsewhere.
    /// Drivers use it to put host-built buffers into descriptors.
    @inlinable public func guestAddress(of pointer: UnsafeRawPointer) -> UInt64? {
        let start = UnsafeRawPointer(hostBase)
        guard pointer >= start, pointer - start <= size else { return nil }
        return guestBase &+ UInt64(pointer - start)
    }

    private static func mappedLength(_ size: Int) -> Int {
        (size + pageSize - 1) / pageSize * pageSize
    }
}
