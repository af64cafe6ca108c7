import ArgumentParser
import Glibc
import StrataFormatting
import StrataImageTools
import StrataNodes

/// `strata img measure [--output=human|json] [-O fmt] [-o opts] (--size N | [-f fmt] FILE)`:
/// the file size a new image needs, fully allocated and for the source's data.
struct ImgMeasureCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "measure", abstract: "Measure the size a new image needs.")

    @Option(help: "human or json.")
    var output = "human"
    @Option(name: .customShort("O"), help: "Target format: raw (default) or qcow2.")
    var targetFormat = "raw"
    @Option(name: .customShort("o"), help: "Target create options, key=value,...")
    var options: [String] = []
    @Option(help: "Virtual size of a new, empty image.")
    var size: String?
    @Option(name: .customShort("f"), help: "Source image format (probed when left out).")
    var format: String?
    @Argument(help: "A source image whose contents the new image would hold.")
    var file: String?

    func run() async throws {
        try await ImgCommand.guarded {
            guard output == "human" || output == "json" else { throw ImgCommand.fail("--output must be used with human or json as argument.") }
            guard (size == nil) != (file == nil) else {
                throw ImgCommand.fail(size == nil ? "Either --size N or one filename must be specified." : "--size N cannot be used together with a filename.")
            }
            var virtualSize: UInt64
            var ranges: [Range<UInt64>]?
            var bitmaps: [Qcow2Measure.SourceBitmap]?
            if let size {
                guard let parsed = ImageSizeText.parse(size) else { throw ImgCommand.fail("Invalid image size specified. \(ImageSizeText.suffixHelp)") }
                virtualSize = parsed
            } else {
                let path = file!
                let info = try await ImageInfo.read(path: path, format: format)
                virtualSize = info.virtualSize
                if let image = info.qcow2, image.backingFileName != nil {
                    // What a convert would copy: data anywhere in the chain (QEMU's qcow2_measure
                    // asks bdrv_block_status_above of the whole chain).
                    ranges = try await Self.chainDataRanges(path: path, format: format)
                    if image.header.version >= 3 {
                        bitmaps = info.bitmaps.map { .init(name: $0.name, sizeBytes: image.virtualSize, granularity: $0.granularity) }
                    }
                } else if let image = info.qcow2 {
                    let io = try Qcow2FileIO(path: path, writable: false)
                    ranges = try await Qcow2AllocationScan.dataRanges(io: io, image: image)
                    // As QEMU: only a source that can hold persistent bitmaps (qcow2 v3) reports them.
                    if image.header.version >= 3 {
                        bitmaps = info.bitmaps.map { .init(name: $0.name, sizeBytes: image.virtualSize, granularity: $0.granularity) }
                    }
                } else {
                    ranges = Self.rawDataRanges(path: path, size: virtualSize)
                }
            }
            let optionString = try ImageCreateOptionString(parsing: options)
            let text: String
            switch targetFormat {
            case "qcow2":
                let target: Qcow2CreateOptions
                do {
                    target = try Qcow2CreateOptions(optionString.setting("size", to: "\(virtualSize)"), size: virtualSize)
                } catch {
                    throw ImgCommand.fail("\(error)")
                }
                let allocated = ranges.map { Qcow2AllocationScan.requiredBytes($0, clusterSize: UInt64(target.clusterSize)) }
                let measure = try Qcow2Measure(options: target, allocatedBytes: allocated, sourceBitmaps: bitmaps)
                text = output == "json" ? measure.json + "\n" : measure.human
            case "raw":
                // As QEMU's raw_measure: a raw file needs its whole length, holes or not.
                let aligned = (virtualSize + 511) / 512 * 512
                text = output == "json" ? "{\n    \"required\": \(aligned),\n    \"fully-allocated\": \(aligned)\n}\n"
                    : "required size: \(aligned)\nfully allocated size: \(aligned)\n"
            default:
                throw ImgCommand.fail("Unknown file format '\(targetFormat)'")
            }
            print(text, terminator: "")
        }
    }

    /// The ranges holding data (allocated, not zero) anywhere in the backing chain.
    static func chainDataRanges(path: String, format: String?) async throws -> [Range<UInt64>] {
        let session = try await ImageSession.open(path, options: ImageOpenOptions(format: format, readOnly: true, forceShare: true))
        var ranges: [Range<UInt64>] = []
        var offset: UInt64 = 0
        do {
            while offset < session.sizeBytes {
                let extent = try await session.blockStatus(offsetBytes: offset, maxLengthBytes: min(1 << 30, session.sizeBytes - offset))
                guard extent.lengthBytes > 0 else { break }
                if extent.isData && extent.isAllocated && !extent.isZero {
                    if let last = ranges.last, last.upperBound == offset {
                        ranges[ranges.count - 1] = last.lowerBound..<offset + extent.lengthBytes
                    } else {
                        ranges.append(offset..<offset + extent.lengthBytes)
                    }
                }
                offset += extent.lengthBytes
            }
        } catch {
            await session.close()
            throw error
        }
        await session.close()
        return ranges
    }

    /// Linux's SEEK_DATA and SEEK_HOLE (not exported by the Glibc module).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// The data extents of a raw file, from SEEK_DATA/SEEK_HOLE (all of it if unsupported).
    static func rawDataRanges(path: String, size: UInt64) -> [Range<UInt64>] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [0..<size] }
        defer { close(fd) }
        var ranges: [Range<UInt64>] = []
        var offset: off_t = 0
        while UInt64(offset) < size {
            let data = lseek(fd, offset, Self.seekData)
            if data < 0 { break }
            let hole = lseek(fd, data, Self.seekHole)
            let end = hole < 0 ? off_t(size) : hole
            ranges.append(UInt64(data)..<min(UInt64(end), size))
            offset = end
        }
        return ranges
    }
}
