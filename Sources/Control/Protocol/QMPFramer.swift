/// Splits a QMP byte stream into top-level JSON texts as QEMU's JSON streamer does: by the depth
/// of braces and brackets outside strings, so a client may send several messages in one write or
/// one message across many, with or without newlines. A bare scalar at the top level ends at
/// whitespace or at the next brace and is handed on as its own text (it then fails as "QMP input
/// must be a JSON object"). Memory is bounded: a message longer than `maxMessageBytes` is refused.
struct QMPFramer {
    /// QEMU refuses tokens past 64 MiB; a block-layer command is a few KiB, so 1 MiB is ample.
    static let maxMessageBytes = 1 << 20
    /// Nesting deeper than QEMU's MAX_NESTING (1024) is refused as it is there.
    static let maxDepth = 1024

    enum Piece: Equatable {
        case message(String)
        /// A byte that cannot start or continue a message (a stray closing bracket).
        case stray(UInt8)
        case tooLong
        case tooDeep
    }

    private var current: [UInt8] = []
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var inScalar = false

    /// Feeds received bytes; returns the pieces they completed, in order.
    mutating func feed(_ bytes: UnsafeRawBufferPointer) -> [Piece] {
        var pieces: [Piece] = []
        for byte in bytes {
            if let piece = take(byte) { pieces.append(piece) }
        }
        return pieces
    }

    private mutating func take(_ byte: UInt8) -> Piece? {
        if inScalar {
            if isSpace(byte) || byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") {
                let piece = finish()
                if !isSpace(byte) { _ = take(byte) }
                return piece
            }
            return append(byte)
        }
        if depth == 0 {
            switch byte {
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                depth = 1
                return append(byte)
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                return .stray(byte)
            default:
                if isSpace(byte) { return nil }
                inScalar = true
                return append(byte)
            }
        }
        if let overflow = append(byte) { return overflow }
        if inString {
            if escaped {
                escaped = false
            } else if byte == UInt8(ascii: "\\") {
                escaped = true
            } else if byte == UInt8(ascii: "\"") {
                inString = false
            }
            return nil
        }
        switch byte {
        case UInt8(ascii: "\""):
            inString = true
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            depth += 1
            if depth > Self.maxDepth {
                reset()
                return .tooDeep
            }
        case UInt8(ascii: "}"), UInt8(ascii: "]"):
            depth -= 1
            if depth == 0 { return finish() }
        default:
            break
        }
        return nil
    }

    private mutating func append(_ byte: UInt8) -> Piece? {
        guard current.count < Self.maxMessageBytes else {
            reset()
            return .tooLong
        }
        current.append(byte)
        return nil
    }

    private mutating func finish() -> Piece {
        let text = String(decoding: current, as: UTF8.self)
        reset()
        return .message(text)
    }

    private mutating func reset() {
        current.removeAll(keepingCapacity: current.count <= 64 << 10)
        depth = 0
        inString = false
        escaped = false
        inScalar = false
    }

    private func isSpace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\t")
    }
}
