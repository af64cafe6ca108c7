import ArgumentParser
import StrataEngine
import StrataGraph
import StrataImageTools

/// `strata img map`: qemu-img map's allocation map, through the backing chain, as human text
/// or qemu-img 7.2's JSON (start, length, depth, present, zero, data, offset).
struct ImgMapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "map", abstract: "Dump the allocation map of an image (as qemu-img map).")

    @Option(name: .customLong("output"), help: "human or json.")
    var output = "human"
    @Option(name: .customShort("f"), help: "Image format; probed when not given.")
    var format: String?
    @Flag(name: .customShort("U"), help: "Force shared permissions: take no image locks.")
    var forceShare = false
    @Option(name: .customLong("start-offset"), help: "The first byte to map.")
    var startOffset: String?
    @Option(name: .customLong("max-length"), help: "Map at most this many bytes.")
    var maxLength: String?
    @Argument(help: "The image file.")
    var file: String

    func validate() throws {
        guard output == "human" || output == "json" else { throw ValidationError("--output must be 'human' or 'json'") }
    }

    func run() async throws {
        let session: ImageSession
        do {
            session = try await ImageSession.open(file, options: ImageOpenOptions(format: format, readOnly: true, forceShare: forceShare))
        } catch {
            StandardError.print("strata img: Could not open '\(file)': \(error)")
            throw ExitCode(1)
        }
        do {
            try await emit(session)
            await session.close()
        } catch is ImgMapUnmappable {
            await session.close()
            StandardError.print("strata img: File contains external, encrypted or compressed clusters.")
            throw ExitCode(1)
        } catch {
            await session.close()
            StandardError.print("strata img: \(error)")
            throw ExitCode(1)
        }
    }

    private func emit(_ session: ImageSession) async throws {
        let start = try startOffset.map { UInt64(try IoFormat.number($0)) } ?? 0
        let end = try maxLength.map { start + UInt64(try IoFormat.number($0)) }
        let entries = try await ImageMap.entries(of: session, start: start, end: end)
        guard output == "human" else { return print(ImageMap.json(entries)) }
        let (text, stopped) = ImageMap.humanUntilUnmappable(entries)
        print(text)
        if stopped { throw ImgMapUnmappable() }
    }
}

/// Human output met data it cannot place in a file (qemu-img's "external, encrypted or compressed clusters").
private struct ImgMapUnmappable: Error {}
