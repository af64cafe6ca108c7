/// Why an image could not be opened or changed, worded as qemu-img words it.
public enum ImageSessionError: Error, Equatable, CustomStringConvertible {
    case unknownFormat(String)
    case badCacheMode(String)
    case backingChainTooDeep(String)
    case backingLoop(String)
    case notSupported(String)
    case badBlkdebugFilename(String)
    case badBlkverifyFilename(String)
    case closed

    public var description: String {
        switch self {
        case .unknownFormat(let name): "Unknown driver '\(name)'"
        case .badCacheMode(let mode): "Invalid cache option: \(mode)"
        case .backingChainTooDeep(let path): "Backing chain of '\(path)' is too deep"
        case .backingLoop(let path): "Backing file '\(path)' refers to itself through its chain"
        case .notSupported(let what): what
        case .badBlkdebugFilename(let name): "'\(name)': a blkdebug filename is blkdebug:CONFIG:FILENAME (CONFIG may be empty)"
        case .badBlkverifyFilename(let name): "'\(name)': a blkverify filename is blkverify:RAW:TEST"
        case .closed: "The image is closed"
        }
    }
}
