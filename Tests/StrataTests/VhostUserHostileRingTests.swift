import CStrataShim
import Foundation
import Glibc
import StrataDevices
import StrataEngine
import Testing

@testable import StrataLoad

/// A front end that negotiates properly and then writes descriptor chains no driver should:
/// loops, buffers outside guest memory, more segments than seg_max, requests past the capacity,
/// and an available index that runs ahead of the ring. Each bad chain fails on its own (used
/// length 0, or VIRTIO_BLK_S_IOERR), a good request after them still completes, and once the
/// ring is broken the daemon goes on serving the next front end.
@Suite(.serialized, .timeLimit(.minutes(2))) struct VhostUserHostileRingTests {
    static let ringSize = 256
    static let capacitySectors: UInt64 = 64 << 11  // 64 MiB

    /// Writes one chain from `first` on and publishes it; returns the used element it gets.
    static func submit(_ descriptors: [VirtqueueDescriptor], first: UInt16, queue: SplitVirtqueue, published: inout UInt16,
                       kickFD: Int32) -> (id: UInt32, length: UInt32)? {
        for (offset, var descriptor) in descriptors.enumerated() {
            let index = first + UInt16(offset)
            if offset < descriptors.count - 1 && !descriptor.flags.contains(.next) {
                descriptor.flags.insert(.next)
                descriptor.next = index + 1
            }
            queue.storeDescriptor(descriptor, at: index)
        }
        let usedBefore = queue.loadUsedIndexAcquire()
        queue.storeAvailableEntry(published, head: first)
        published &+= 1
        queue.storeAvailableIndexRelease(published)
        _ = strata_eventfd_signal(kickFD)
        let deadline = Date().addingTimeInterval(10)
        while queue.loadUsedIndexAcquire() == usedBefore {
            if Date() > deadline { return nil }
            usleep(1000)
        }
        return queue.loadUsedElement(usedBefore)
    }

    static func header(_ memory: GuestMemory, at address: UInt64, type: UInt32, sector: UInt64) -> VirtqueueDescriptor {
        let bytes = memory.translate(address: address, length: 16)!
        bytes.storeBytes(of: type.littleEndian, as: UInt32.self)
        bytes.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        bytes.storeBytes(of: sector.littleEndian, toByteOffset: 8, as: UInt64.self)
        return VirtqueueDescriptor(address: address, length: 16)
    }

    struct SetupFailed: Error { let step: String }

    /// Ring 0 started by a fresh front end of the export at `socket`, in 4 MiB of shared guest
    /// memory, for `body` to write chains into; everything is released when `body` returns.
    static func withStartedRing<T: Sendable>(
        socket: String, engine: Engine,
        _ body: @escaping @Sendable (VhostUserFrontEnd, SplitVirtqueue, GuestMemory, Int32) async throws -> T
    ) async throws -> T {
        try await Task(executorPreference: engine.control) {
            let size = 4 << 20
            let memfd = strata_memfd_create("hostile-ring")
            guard memfd >= 0, ftruncate(memfd, off_t(size)) == 0 else { throw SetupFailed(step: "memfd") }
            defer { close(memfd) }
            guard let host = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0), host != MAP_FAILED else {
                throw SetupFailed(step: "mmap")
            }
            defer { munmap(host, size) }
            let memory = GuestMemory(regions: [GuestMemory.Region(guestAddress: 0, size: UInt64(size),
                                                                  userAddress: UInt64(UInt(bitPattern: host)), host: host)])
            defer { memory.deallocate() }
            let kickFD = strata_eventfd_create()
            let callFD = strata_eventfd_create()
            defer {
                close(kickFD)
                close(callFD)
            }
            let frontEnd = try VhostUserFrontEnd(path: socket)
            _ = try await frontEnd.negotiate(queues: 2)
            try await frontEnd.setMemory(fd: memfd, size: UInt64(size), host: host)
            let queue = try SplitVirtqueue(memory: memory, size: Self.ringSize, at: 0)
            _ = VirtqueueDriver(queue: queue)  // zeroes the rings
            try await frontEnd.startVring(0, queue: queue, kickFD: kickFD, callFD: callFD)
            return try await body(frontEnd, queue, memory, kickFD)
        }.value
    }

    @Test func badChainsFailAloneAndABrokenRingStopsOnlyItself() async throws {
        let scratch = try ScratchDirectory("vhost-hostile-ring")
        let socket = scratch.path("vhost.sock")
        let (daemon, _) = try QMPMonitorTests.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"null-co","node-name":"disk","size":67108864,"read-zeroes":true}"#,
            "--export", VhostUserExportTests.exportSpec("v0", socket: socket),
        ])
        defer { _ = daemon.stop() }
        let engine = try Engine(queueCount: 1, cpus: nil)
        let outcomes: [String] = try await Self.withStartedRing(socket: socket, engine: engine) { frontEnd, queue, memory, kickFD in
            var published: UInt16 = 0
            var outcomes: [String] = []
            func status(_ address: UInt64) -> UInt8 { memory.translate(address: address, length: 1)!.load(as: UInt8.self) }
            func record(_ name: String, _ used: (id: UInt32, length: UInt32)?, head: UInt16, expectLength: UInt32, status address: UInt64? = nil,
                        expectStatus: UInt8? = nil) {
                guard let used else { return outcomes.append("\(name): no used element") }
                if used.id != UInt32(head) || used.length != expectLength { outcomes.append("\(name): used \(used)") }
                if let address, let expectStatus, status(address) != expectStatus { outcomes.append("\(name): status \(status(address))") }
            }
            let read: UInt32 = 0
            let data: UInt64 = 0x10_0000
            let statusAddress: UInt64 = 0x8000
            let statusDescriptor = VirtqueueDescriptor(address: statusAddress, length: 1, flags: .write)
            // A chain that loops back to its head.
            let loop = [Self.header(memory, at: 0x4000, type: read, sector: 0),
                        VirtqueueDescriptor(address: data, length: 512, flags: [.write, .next], next: 0)]
            record("a loop", Self.submit(loop, first: 0, queue: queue, published: &published, kickFD: kickFD), head: 0, expectLength: 0)
            // A buffer far outside guest memory.
            let outside = [Self.header(memory, at: 0x4000, type: read, sector: 0),
                           VirtqueueDescriptor(address: 0x7fff_0000_0000, length: 4096, flags: .write), statusDescriptor]
            record("a buffer outside memory", Self.submit(outside, first: 2, queue: queue, published: &published, kickFD: kickFD), head: 2,
                   expectLength: 0)
            // More data segments than seg_max (126): 130 buffers that cannot be merged.
            let segments = (0..<130).map { VirtqueueDescriptor(address: data + UInt64($0) * 1024, length: 512, flags: .write) }
            let scattered = [Self.header(memory, at: 0x4000, type: read, sector: 0)] + segments + [statusDescriptor]
            record("130 segments", Self.submit(scattered, first: 5, queue: queue, published: &published, kickFD: kickFD), head: 5,
                   expectLength: 1, status: statusAddress, expectStatus: VirtioBlkStatus.ioError.rawValue)
            // A read that ends past the capacity.
            let past = [Self.header(memory, at: 0x4000, type: read, sector: Self.capacitySectors - 1),
                        VirtqueueDescriptor(address: data, length: 1024, flags: .write), statusDescriptor]
            record("a read past the end", Self.submit(past, first: 140, queue: queue, published: &published, kickFD: kickFD), head: 140,
                   expectLength: 1, status: statusAddress, expectStatus: VirtioBlkStatus.ioError.rawValue)
            // After all that, a good read completes.
            let good = [Self.header(memory, at: 0x4000, type: read, sector: 8),
                        VirtqueueDescriptor(address: data, length: 4096, flags: .write), statusDescriptor]
            record("a good read", Self.submit(good, first: 150, queue: queue, published: &published, kickFD: kickFD), head: 150,
                   expectLength: 4097, status: statusAddress, expectStatus: VirtioBlkStatus.ok.rawValue)
            // An available index a whole ring ahead: the queue is broken and stops.
            queue.storeAvailableIndexRelease(published &+ UInt16(Self.ringSize + 5))
            _ = strata_eventfd_signal(kickFD)
            // The ring stops cleanly all the same.
            _ = try await frontEnd.stopVring(0)
            return outcomes
        }
        #expect(outcomes.isEmpty, "\(outcomes)")
        await engine.shutdown()
        #expect(daemon.reap(wait: false) == nil, "the daemon died: \(daemon.log)")
        #expect(daemon.log.contains("needs a reset"), "\(daemon.log)")
        let (run, report) = try await VhostUserExportTests.bench(socket, ["--queues", "2", "--ops", "500"])
        #expect(run.status == 0 && report?["ops"] as? Int == 1000, "\(run.output)\n\(daemon.log)")
    }

    /// A head published again while its request is still in flight (a throttle of 2 IOPS holds
    /// it after the head before it): its slot is taken, so the ring is broken, and the daemon
    /// neither crashes nor stops serving the next front end.
    @Test func aHeadPublishedTwiceWhileInFlightBreaksOnlyItsRing() async throws {
        let scratch = try ScratchDirectory("vhost-hostile-twice")
        let socket = scratch.path("vhost.sock")
        let (daemon, _) = try QMPMonitorTests.daemon(scratch, extra: [
            "--blockdev", #"{"driver":"null-co","node-name":"disk","size":67108864,"read-zeroes":true}"#,
            "--blockdev", #"{"driver":"throttle","node-name":"slow","file":"disk","limits":{"iops-total":2}}"#,
            "--export", VhostUserExportTests.exportSpec("v0", socket: socket, node: "slow"),
        ])
        defer { _ = daemon.stop() }
        let engine = try Engine(queueCount: 1, cpus: nil)
        let used: UInt16 = try await Self.withStartedRing(socket: socket, engine: engine) { frontEnd, queue, memory, kickFD in
            var header = Self.header(memory, at: 0x4000, type: 0, sector: 0)
            header.flags.insert(.next)
            header.next = 1
            queue.storeDescriptor(header, at: 0)
            queue.storeDescriptor(VirtqueueDescriptor(address: 0x10_0000, length: 4096, flags: [.write, .next], next: 2), at: 1)
            queue.storeDescriptor(VirtqueueDescriptor(address: 0x8000, length: 1, flags: .write), at: 2)
            // Head 0 three times in one batch: the first passes the throttle, the second waits
            // there, and the third is popped while the second is in flight.
            queue.storeAvailableEntry(0, head: 0)
            queue.storeAvailableEntry(1, head: 0)
            queue.storeAvailableEntry(2, head: 0)
            queue.storeAvailableIndexRelease(3)
            _ = strata_eventfd_signal(kickFD)
            _ = try await frontEnd.stopVring(0)
            return queue.loadUsedIndexAcquire()
        }
        await engine.shutdown()
        #expect(used == 2, "used index \(used)")
        #expect(daemon.reap(wait: false) == nil, "the daemon died: \(daemon.log)")
        // Through the throttle: a few requests, a second or so.
        let (run, report) = try await VhostUserExportTests.bench(socket, ["--queues", "1", "--ops", "3"])
        #expect(run.status == 0 && report?["ops"] as? Int == 3, "\(run.output)\n\(daemon.log)")
    }
}
