/// An export's size constraints (NBD_INFO_BLOCK_SIZE): alignment, efficient size, largest payload.
public struct NBDBlockSizeConstraints: Sendable, Hashable {
    public var minimum: UInt32
    public var preferred: UInt32
    public var maximumPayload: UInt32

    /// The defaults doc/proto.md assumes when nothing is advertised.
    public static let `default` = NBDBlockSizeConstraints(minimum: 1, preferred: 4096, maximumPayload: 32 << 20)

    public init(minimum: UInt32, preferred: UInt32, maximumPayload: UInt32) {
        self.minimum = minimum
        self.preferred = preferred
        self.maximumPayload = maximumPayload
    }

    /// Whether the values obey the spec: powers of two, minimum at most 64 KiB, preferred at least
    /// max(minimum, 512), maximum payload at least preferred.
    public var isValid: Bool {
        minimum != 0 && minimum & (minimum - 1) == 0 && minimum <= 65536
            && preferred & (preferred - 1) == 0 && preferred >= max(minimum, 512)
            && maximumPayload >= preferred
    }
}
