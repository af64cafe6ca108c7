import Dispatch
import Glibc
import StrataGraph
import StrataImageTools
import StrataNodes
import StrataRuntime

/// blockdev-create as QEMU runs it: a job of type `create` whose one step writes the new file or
/// image (QEMU's blockdev_create_run), reported as progress 1 of 1. A failure concludes the job
/// with its error; nothing is added to the graph (blockdev-add does that afterwards).
public struct BlockdevCreateJob: JobDriver {
    public let options: BlockdevCreateOptions
    let controller: GraphController

    public init(options: BlockdevCreateOptions, controller: GraphController) {
        self.options = options
        self.controller = controller
    }

    public var type: JobType { .create }
    public var isBlockJob: Bool { false }

    public func run(_ context: JobContext) async throws {
        await context.setProgress(current: 0, total: 1)
        // As blockdev_create_run: the one step counts as done whether it worked or not.
        do {
            try await create()
        } catch {
            await context.setProgress(current: 1, total: 1)
            throw error
        }
        await context.setProgress(current: 1, total: 1)
    }

    private func create() async throws {
        switch options {
        case .file(let filename, let size, let preallocation):
            try await Self.offThread { try Self.createFile(filename, sizeBytes: size, preallocation: preallocation) }
        case .qcow2(let file, let dataFile, var values):
            let fileState = try await fileNode(file)
            var dataState: FileNodeState?
            if let dataFile {
                dataState = try await fileNode(dataFile)
                values.dataFile = dataState?.path
            }
            try values.validate()
            let image = values
            // Over blocking pread and pwrite, on the global executor (never the control executor).
            try await Qcow2Creator.create(path: fileState.path, options: image)
            try fileState.refreshSize()
            try dataState?.refreshSize()
        }
    }

    /// The node `name` as a file node: Strata writes new images through the host file.
    private func fileNode(_ name: String) async throws -> FileNodeState {
        guard let state = try? await controller.state(of: name) else {
            throw JobError("Cannot find device='\(name)' nor node-name='\(name)'")
        }
        guard let file = state as? FileNodeState else {
            throw JobError("Node '\(name)': Strata creates images only in 'file' nodes")
        }
        guard !file.readOnly else { throw JobError("Node '\(name)' is read-only") }
        return file
    }

    /// Blocking file work on a thread of its own, so the control executor keeps serving.
    static func offThread(_ body: @escaping @Sendable () throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            DispatchQueue.global().async {
                do {
                    try body()
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// raw_co_create: create or open the file, empty it, then give it the size.
    static func createFile(_ filename: String, sizeBytes: UInt64, preallocation: BlockdevCreateOptions.FilePreallocation) throws {
        func failure(_ what: String) -> JobError { JobError("\(what) '\(filename)': \(String(cString: strerror(errno)))") }
        let fd = open(filename, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw failure("Could not create") }
        defer { close(fd) }
        guard ftruncate(fd, 0) == 0 else { throw failure("Could not clear") }
        guard sizeBytes <= UInt64(Int64.max) else { throw JobError("Could not resize '\(filename)': File too large") }
        switch preallocation {
        case .off:
            guard ftruncate(fd, off_t(sizeBytes)) == 0 else { throw failure("Could not resize file") }
        case .falloc:
            let result = sizeBytes == 0 ? 0 : posix_fallocate(fd, 0, off_t(sizeBytes))
            guard result == 0 else { throw JobError("Could not preallocate data for the new file '\(filename)': \(String(cString: strerror(result)))") }
        case .full:
            let chunk = [UInt8](repeating: 0, count: 1 << 20)
            var done: UInt64 = 0
            while done < sizeBytes {
                let count = Int(min(UInt64(chunk.count), sizeBytes - done))
                let written = chunk.withUnsafeBytes { pwrite(fd, $0.baseAddress!, count, off_t(done)) }
                guard written > 0 else { throw failure("Could not write zeros for preallocation of") }
                done += UInt64(written)
            }
        }
        guard fsync(fd) == 0 else { throw failure("Could not flush") }
    }
}
