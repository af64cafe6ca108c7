import ArgumentParser
import StrataEngine
import StrataImageTools
import StrataNodes

/// `strata img snapshot [-l | -c NAME | -a NAME | -d NAME] [-f fmt] [-q] [-U] FILE`, as qemu-img
/// snapshot: list, create, apply or delete internal snapshots of a qcow2 image.
struct ImgSnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshot", abstract: "List, create, apply or delete internal snapshots.")

    @Flag(name: .customShort("l"), help: "List the snapshots.")
    var list = false
    @Option(name: .customShort("c"), help: "Create a snapshot with this name.")
    var create: String?
    @Option(name: .customShort("a"), help: "Apply (revert to) this snapshot.")
    var apply: String?
    @Option(name: .customShort("d"), help: "Delete this snapshot.")
    var delete: String?
    @Option(name: .customShort("f"), help: "Image format (probed when left out).")
    var format: String?
    @Flag(name: .customShort("q"), help: "Quiet.")
    var quiet = false
    @Flag(name: .customShort("U"), help: "Open without locking (with -l only).")
    var forceShare = false
    @Argument(help: "The image file.")
    var file: String

    func validate() throws {
        let chosen = [list, create != nil, apply != nil, delete != nil].filter { $0 }.count
        guard chosen <= 1 else { throw ValidationError("Cannot mix '-l', '-a', '-c', '-d'") }
    }

    func run() async throws {
        try await ImgCommand.guarded {
            let operation: Qcow2SnapshotOperation? = if let create { .create(name: create) }
                else if let apply { .apply(apply) } else if let delete { .delete(delete) } else { nil }
            guard let operation else {
                // Listing reads the table offline, as `img info` does.
                let image = try await Qcow2OfflineImage.load(io: try Qcow2FileIO(path: file, writable: false), name: file)
                if !image.snapshots.isEmpty { print(ImageInfo.snapshotList(image.snapshots), terminator: "") }
                return
            }
            let options = ImageOpenOptions(format: format)
            let session: ImageSession
            do {
                session = try await ImageSession.open(file, options: options)
            } catch {
                throw ImgCommand.fail("Could not open '\(file)': \(error)")
            }
            guard let qcow2 = session.formatState() as? Qcow2NodeState else {
                await session.close()
                throw ImgCommand.fail("This image format does not support snapshots")
            }
            do {
                try await qcow2.perform(operation)
            } catch {
                await session.close()
                throw ImgCommand.fail("\(error)")
            }
            let closed = await session.close()
            guard closed.isOK else { throw ImgCommand.fail("Could not close '\(file)': \(closed)") }
        }
    }
}
