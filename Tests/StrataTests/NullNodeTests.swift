import StrataGraph
import StrataNodes
import StrataRuntime
import Testing

@Suite struct NullNodeTests {
    @Test func defaultsFollowQemu() async throws {
        let harness = try NodeTestHarness("nulldefaults")
        defer { harness.shutdown() }
        let state = try await harness.open(NullNode.descriptor, name: "null0", options: [:])
        #expect(state.sizeBytes == 1 << 30)
        var reader = OptionReader(nodeName: "null0", options: [:])
        #expect(try NullNode.descriptor.parse(&reader).children.isEmpty)
        let node = harness.instance(state)
        // Without read-zeroes the buffer is left as it was, as QEMU does.
        let buffer = TestBuffer(count: 4096, filledWith: 0xFF)
        #expect(await harness.read(node, buffer, at: 0) == .ok)
        #expect(buffer.allEqual(0xFF))
        #expect(await harness.write(node, buffer, at: 4096) == .ok)
        #expect(await harness.flush(node) == .ok)
        #expect(await harness.submit(node, BlockRequest(operation: .writeZeroes, offsetBytes: 0, lengthBytes: 1 << 20)) == .ok)
        #expect(await harness.submit(node, BlockRequest(operation: .discard, offsetBytes: 0, lengthBytes: 1 << 20)) == .ok)
    }

    @Test func readZeroesFillsTheBuffer() async throws {
        let harness = try NodeTestHarness("nullzero")
        defer { harness.shutdown() }
        let state = try await harness.open(NullNode.descriptor, name: "null0", options: ["read-zeroes": .bool(true), "size": .string("1M")])
        #expect(state.sizeBytes == 1 << 20)
        let node = harness.instance(state)
        let buffer = TestBuffer(count: 8192, misalignment: 3, filledWith: 0xFF)
        #expect(await harness.read(node, buffer, at: 4096) == .ok)
        #expect(buffer.allEqual(0))
    }

    @Test func latencyDelaysEveryRequest() async throws {
        let harness = try NodeTestHarness("nulllat")
        defer { harness.shutdown() }
        let latencyNs: UInt64 = 20_000_000
        let state = try await harness.open(NullNode.descriptor, name: "null0", options: ["latency-ns": .int(Int64(latencyNs))])
        let node = harness.instance(state)
        let buffer = TestBuffer(count: 512)
        let io = buffer.io
        let elapsed = await harness.onQueue { () -> [UInt64] in
            var samples: [UInt64] = []
            for operation in [BlockOperation.read, .write, .flush] {
                let start = MonotonicClock.now()
                let status = await node.submit(BlockRequest(operation: operation, offsetBytes: 0, lengthBytes: 512, buffer: io))
                samples.append(status.isOK ? MonotonicClock.now() - start : 0)
            }
            return samples
        }
        for sample in elapsed { #expect(sample >= latencyNs, "\(sample) ns") }
    }

    /// null-aio answers nothing while routing: every request suspends and completes through the
    /// queue's ring, with null-co's checks and read-zeroes.
    @Test func nullAioCompletesThroughTheRing() async throws {
        let harness = try NodeTestHarness("nullaio")
        defer { harness.shutdown() }
        let state = try await harness.open(NullNode.aioDescriptor, name: "aio0", options: ["read-zeroes": .bool(true), "size": .int(1 << 20)])
        let node = harness.instance(state)
        let buffer = TestBuffer(count: 4096, filledWith: 0xFF)
        var routed = BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 4096, buffer: buffer.io)
        guard case .suspend = node.route(&routed) else {
            Issue.record("null-aio completed a request while routing")
            return
        }
        #expect(await harness.read(node, buffer, at: 4096) == .ok)
        #expect(buffer.allEqual(0))
        #expect(await harness.write(node, buffer, at: 0) == .ok)
        #expect(await harness.flush(node) == .ok)
        #expect(await harness.read(node, buffer, at: 1 << 20) != .ok)
    }

    /// QEMU's BlockBackend refuses requests past the end with EIO (blk_check_byte_request).
    @Test func requestsPastTheEndFail() async throws {
        let harness = try NodeTestHarness("nullrange")
        defer { harness.shutdown() }
        let state = try await harness.open(NullNode.descriptor, name: "null0", options: ["size": .int(65536)])
        let node = harness.instance(state)
        let buffer = TestBuffer(count: 1024)
        #expect(await harness.read(node, buffer, at: 65536 - 1024) == .ok)
        #expect(await harness.read(node, buffer, at: 65536 - 512) == .ioError)
        #expect(await harness.write(node, buffer, at: 65536) == .ioError)
        #expect(await harness.submit(node, BlockRequest(operation: .discard, offsetBytes: 0, lengthBytes: 65537)) == .ioError)
        #expect(await harness.submit(node, BlockRequest(operation: .read, offsetBytes: .max, lengthBytes: 2, buffer: buffer.io)) == .invalid)
        #expect(await harness.submit(node, BlockRequest(operation: .read, offsetBytes: 0, lengthBytes: 2048, buffer: buffer.io)) == .invalid)
        #expect(await harness.flush(node) == .ok)
    }

    @Test func readOnlyRefusesWrites() async throws {
        let harness = try NodeTestHarness("nullro")
        defer { harness.shutdown() }
        let state = try await harness.open(NullNode.descriptor, name: "null0", options: ["read-only": .bool(true)])
        let node = harness.instance(state)
        let buffer = TestBuffer(count: 512)
        #expect(await harness.write(node, buffer, at: 0) == .readOnly)
        #expect(await harness.read(node, buffer, at: 0) == .ok)
    }

    @Test func hostileOptionsGiveErrorsNamingTheOption() async throws {
        let harness = try NodeTestHarness("nullopts")
        defer { harness.shutdown() }
        let cases: [([String: JSONValue], String)] = [
            (["size": .int(-1)], "null0: Parameter 'size' must be between 0 and"),
            (["size": .string("lots")], "null0: Parameter 'size' expects a number, got 'lots'"),
            (["size": .double(1.5)], "null0: Parameter 'size' expects a number"),
            (["latency-ns": .int(-5)], "null0: Parameter 'latency-ns' must be between 0 and"),
            (["latency-ns": .string("fast")], "null0: Parameter 'latency-ns' expects a number, got 'fast'"),
            (["read-zeroes": .string("yes")], "null0: Parameter 'read-zeroes' expects a boolean"),
            (["file": .string("x")], "null0: Parameter 'file' is unexpected"),
        ]
        for (options, expected) in cases {
            let error = await harness.openError(NullNode.descriptor, name: "null0", options: options)
            #expect(error?.hasPrefix(expected) == true, "\(options): got \(error ?? "no error")")
        }
    }
}
