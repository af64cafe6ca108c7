import StrataFormatting

/// The result of checking an image, with the fields of `qemu-img check --output=json` and the
/// diagnostics QEMU prints to stderr while checking.
public struct Qcow2CheckReport: Sendable, Equatable {
    public var filename: String
    public var format = "qcow2"
    public var checkErrors = 0
    public var corruptions = 0
    public var leaks = 0
    public var corruptionsFixed = 0
    public var leaksFixed = 0
    public var imageEndOffset: UInt64 = 0
    public var totalClusters: UInt64 = 0
    public var allocatedClusters: UInt64 = 0
    public var fragmentedClusters: UInt64 = 0
    public var compressedClusters: UInt64 = 0
    /// Lines such as "ERROR cluster 5 refcount=0 reference=1", in the order found.
    public var messages: [String] = []
    /// Set when a repair ran and the image was checked again: the counts are the second check's.
    public var repaired = false
    /// Why the check could not complete ("need to rebuild refcount structures"), if it did not.
    public var failure: String?

    public init(filename: String) { self.filename = filename }

    /// qemu-img check's exit status: 1 check not completed, 2 corruptions, 3 leaks, else 0.
    public var exitCode: Int32 {
        if failure != nil || checkErrors > 0 { return 1 }
        if corruptions > 0 { return 2 }
        if leaks > 0 { return 3 }
        return 0
    }

    /// The JSON object `qemu-img check --output=json` prints: zero counts are left out, as there.
    public var json: String {
        var fields: [(String, String)] = []
        if imageEndOffset != 0 { fields.append(("image-end-offset", "\(imageEndOffset)")) }
        if totalClusters != 0 { fields.append(("total-clusters", "\(totalClusters)")) }
        if allocatedClusters != 0 { fields.append(("allocated-clusters", "\(allocatedClusters)")) }
        if fragmentedClusters != 0 { fields.append(("fragmented-clusters", "\(fragmentedClusters)")) }
        if compressedClusters != 0 { fields.append(("compressed-clusters", "\(compressedClusters)")) }
        fields.append(("check-errors", "\(checkErrors)"))
        if leaks != 0 { fields.append(("leaks", "\(leaks)")) }
        if leaksFixed != 0 { fields.append(("leaks-fixed", "\(leaksFixed)")) }
        if corruptions != 0 { fields.append(("corruptions", "\(corruptions)")) }
        if corruptionsFixed != 0 { fields.append(("corruptions-fixed", "\(corruptionsFixed)")) }
        fields.append(("filename", JSONText.quote(filename)))
        fields.append(("format", JSONText.quote(format)))
        return "{\n" + fields.map { "    \"\($0.0)\": \($0.1)" }.joined(separator: ",\n") + "\n}"
    }

    /// The text `qemu-img check` prints on stdout.
    public var human: String {
        var text = ""
        if repaired {
            text += "The following inconsistencies were found and repaired:\n\n    \(leaksFixed) leaked clusters\n    \(corruptionsFixed) corruptions\n\nDouble checking the fixed image now...\n"
        }
        if corruptions == 0, leaks == 0, checkErrors == 0 {
            text += "No errors were found on the image.\n"
        } else {
            if corruptions > 0 {
                text += "\n\(corruptions) errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n"
            }
            if leaks > 0 {
                text += "\n\(leaks) leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n"
            }
            if checkErrors > 0 {
                text += "\n\(checkErrors) internal errors have occurred during the check.\n"
            }
        }
        if totalClusters != 0, allocatedClusters != 0 {
            let allocated = Double(allocatedClusters)
            text += "\(allocatedClusters)/\(totalClusters) = \(Self.percent(allocated * 100 / Double(totalClusters)))% allocated, "
                + "\(Self.percent(Double(fragmentedClusters) * 100 / allocated))% fragmented, "
                + "\(Self.percent(Double(compressedClusters) * 100 / allocated))% compressed clusters\n"
        }
        if imageEndOffset != 0 { text += "Image end offset: \(imageEndOffset)\n" }
        return text
    }

    /// printf's "%0.2f".
    /// As QEMU's `%.2f`.
    static func percent(_ value: Double) -> String { DecimalText.fixed(value, 2) }
}
