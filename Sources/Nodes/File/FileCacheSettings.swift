/// The three cache switches of a file node, and QEMU's cache mode names for them
/// (bdrv_parse_cache_mode): O_DIRECT, ignoring flushes, and write-through (a flush after every
/// write before it completes, QEMU's emulation of a disabled write cache).
struct FileCacheSettings: Sendable, Equatable {
    var direct: Bool
    var noFlush: Bool
    var writeThrough: Bool

    init(direct: Bool, noFlush: Bool, writeThrough: Bool) {
        self.direct = direct
        self.noFlush = noFlush
        self.writeThrough = writeThrough
    }

    /// QEMU's default: buffered I/O with flushes honoured.
    static let writeback = FileCacheSettings(direct: false, noFlush: false, writeThrough: false)

    static let modeNames = ["none", "writeback", "writethrough", "directsync", "unsafe"]

    /// A QEMU cache mode name; "off" is QEMU's alias for "none".
    init?(mode: String) {
        switch mode {
        case "none", "off": self.init(direct: true, noFlush: false, writeThrough: false)
        case "writeback": self = .writeback
        case "writethrough": self.init(direct: false, noFlush: false, writeThrough: true)
        case "directsync": self.init(direct: true, noFlush: false, writeThrough: true)
        case "unsafe": self.init(direct: false, noFlush: true, writeThrough: false)
        default: return nil
        }
    }
}
