import StrataGraph

/// The validated options of a raw node. Checks that need the child's size run at open.
struct RawNodeConfiguration: NodeConfiguration {
    /// QEMU's BDRV_SECTOR_SIZE: raw_apply_options refuses a size that is not a multiple of it, so
    /// a parent's sector rounding never leaks past the window. QEMU puts no such rule on `offset`.
    static let sectorSize: UInt64 = 512

    let file: ChildLink
    let offsetBytes: UInt64
    /// The `size` option; nil means "up to the end of the child", following the child's size.
    let explicitSizeBytes: UInt64?
    let readOnly: Bool
    /// `discard=ignore` answers discards here without passing them on, as QEMU drops them at any
    /// node without BDRV_O_UNMAP. Without the option they pass (QEMU's default is ignore; Strata's
    /// raw node has always passed them, and images served by `--image` rely on it).
    let dropsDiscards: Bool

    var children: [ChildLink] { [file] }

    /// A window (offset or size given) makes the child a data child in QEMU's terms, not a filtered one.
    var hasWindow: Bool { offsetBytes != 0 || explicitSizeBytes != nil }

    init(parsing reader: inout OptionReader) throws(GraphError) {
        file = try reader.child("file", role: .file)
        offsetBytes = UInt64(try reader.integer("offset", default: 0, range: 0...Int64.max))
        explicitSizeBytes = try reader.optionalInteger("size", range: 0...Int64.max).map { UInt64($0) }
        readOnly = try reader.bool("read-only", default: false)
        // "on"/"off" are QEMU's older spellings (bdrv_parse_discard_flags).
        dropsDiscards = try reader.optionalString("discard").map { value throws(GraphError) in
            guard ["ignore", "unmap", "off", "on"].contains(value) else {
                throw reader.bad("discard", "expects ignore or unmap, got '\(value)'")
            }
            return value == "ignore" || value == "off"
        } ?? false
        if let size = explicitSizeBytes, size % Self.sectorSize != 0 {
            throw reader.bad("size", "is not a multiple of \(Self.sectorSize) (got \(size))")
        }
        try reader.finish()
    }

    /// QEMU's raw_child_perm: the parents' needs pass through unchanged; with a window the child is
    /// a data child, so others may not resize it under the window (bdrv_default_perms_for_storage),
    /// and write/resize are taken only when a parent takes them.
    func childPermissions(for link: ChildLink, parentsTake: Permissions, parentsShare: Permissions) -> (take: Permissions, share: Permissions) {
        (parentsTake, hasWindow ? parentsShare.subtracting(.resize) : parentsShare)
    }

    func open(name: String, children: [ChildLink: any NodeState], context: OpenContext) async throws -> any NodeState {
        guard let child = children[file] else {
            throw GraphError.missingChild(node: name, role: .file, child: file.nodeName)
        }
        let childSize = child.sizeBytes
        // QEMU's raw_apply_options wording.
        if offsetBytes > childSize {
            throw GraphError.badOption(node: name, option: "offset",
                                       reason: "(\(offsetBytes)) cannot be greater than size of the containing file (\(childSize))")
        }
        if let size = explicitSizeBytes, childSize - offsetBytes < size {
            throw GraphError.badOption(node: name, option: "size",
                                       reason: "(\(size)) plus offset (\(offsetBytes)) has to be smaller or equal to the actual size of the containing file (\(childSize))")
        }
        return RawNodeState(configuration: self, child: child)
    }
}
