import Glibc
import StrataDevices
import StrataRuntime
import StrataVhostUser

/// The guest memory a front end shared with SET_MEM_TABLE: each region's descriptor mapped
/// shared, as `GuestMemory` regions. Owned by the connection; unmapped only once no queue runs on
/// it any more.
final class VhostUserMappedMemory {
    let memory: GuestMemory
    private let mappings: [(base: UnsafeMutableRawPointer, length: Int)]

    /// Maps every region from its descriptor (the descriptors are closed here, mapped or not). A
    /// region that reaches past the end of its file is refused: touching it would raise SIGBUS.
    init(regions: [VhostUserMemoryRegion], descriptors: [Int32]) throws(VhostUserProtocolError) {
        precondition(regions.count == descriptors.count, "one descriptor per region")
        defer { for fd in descriptors { close(fd) } }
        var mapped: [(base: UnsafeMutableRawPointer, length: Int)] = []
        var views: [GuestMemory.Region] = []
        func unmapAll() { for mapping in mapped { munmap(mapping.base, mapping.length) } }
        for (index, (region, fd)) in zip(regions, descriptors).enumerated() {
            let (length, overflow) = region.mmapOffset.addingReportingOverflow(region.size)
            var status = stat()
            guard !overflow, length <= UInt64(Int.max), fstat(fd, &status) == 0 else {
                unmapAll()
                throw VhostUserProtocolError("memory region \(index): cannot map \(region.size) bytes at offset \(region.mmapOffset)")
            }
            if status.st_mode & S_IFMT == S_IFREG, UInt64(status.st_size) < length {
                unmapAll()
                throw VhostUserProtocolError("memory region \(index): \(region.size) bytes at offset \(region.mmapOffset) run past the end of its \(status.st_size)-byte file")
            }
            let base = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            guard let base, base != UnsafeMutableRawPointer(bitPattern: -1) else {
                let error = errno
                unmapAll()
                throw VhostUserProtocolError("memory region \(index): mmap of \(length) bytes failed: \(String(cString: strerror(error)))")
            }
            mapped.append((base, Int(length)))
            views.append(GuestMemory.Region(guestAddress: region.guestAddress, size: region.size, userAddress: region.userAddress,
                                            host: base + Int(region.mmapOffset)))
        }
        let byAddress = views.sorted { $0.guestAddress < $1.guestAddress }
        for (lower, upper) in zip(byAddress, byAddress.dropFirst()) where upper.guestAddress - lower.guestAddress < lower.size {
            unmapAll()
            throw VhostUserProtocolError("memory regions at guest addresses 0x\(String(lower.guestAddress, radix: 16)) and 0x\(String(upper.guestAddress, radix: 16)) overlap")
        }
        memory = GuestMemory(regions: views)
        mappings = mapped
    }

    deinit {
        memory.deallocate()
        for mapping in mappings { munmap(mapping.base, mapping.length) }
    }
}
