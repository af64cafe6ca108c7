/// What a server does with a parsed request before touching the export.
public enum NBDRequestVerdict: Sendable, Hashable {
    /// Valid: run it (DISC included: the caller then closes after in-flight requests finish).
    case accept
    /// Answer with this error; a WRITE's payload must still be read and dropped first.
    case reject(NBDErrno, String)
    /// The request cannot be answered sanely (a payload too large to even drain): hang up.
    case disconnect(String)
}

extension NBDRequest {
    /// Largest WRITE payload drained to send an error instead of hanging up; the spec says
    /// payloads up to 32 MiB should never be treated as an attack.
    public static let maxDrainedPayload: UInt32 = 32 << 20

    /// Checks the request against the negotiated session as doc/proto.md asks servers to:
    /// unknown commands and flags, unadvertised features, read-only exports, ranges past the end,
    /// misalignment and oversized payloads each get the error the spec names.
    public func validate(for session: NBDNegotiatedSession) -> NBDRequestVerdict {
        let advertised = session.transmissionFlags
        let limits = session.export.blockSize
        if type == NBDCommand.write.rawValue && length > max(limits.maximumPayload, Self.maxDrainedPayload) {
            return .disconnect("NBD client sent a \(length)-byte write, over the \(limits.maximumPayload)-byte limit")
        }
        guard let command else { return .reject(.invalid, "unknown command \(type)") }
        guard flags.isSubset(of: .known) else { return .reject(.invalid, "unknown command flags 0x\(String(flags.rawValue, radix: 16))") }

        if flags.contains(.fua) && !advertised.contains(.sendFUA) { return .reject(.invalid, "FUA was not advertised") }
        if !flags.isDisjoint(with: [.noHole, .fastZero]) && command != .writeZeroes {
            return .reject(.invalid, "NO_HOLE and FAST_ZERO apply only to WRITE_ZEROES")
        }
        if flags.contains(.dontFragment) && (command != .read || !session.structuredReplies) {
            return .reject(.invalid, "DF applies only to READ with structured replies")
        }
        if flags.contains(.requestOne) && command != .blockStatus { return .reject(.invalid, "REQ_ONE applies only to BLOCK_STATUS") }
        if flags.contains(.fastZero) && !advertised.contains(.sendFastZero) { return .reject(.invalid, "FAST_ZERO was not advertised") }

        switch command {
        case .disconnect: return .accept
        case .flush: return advertised.contains(.sendFlush) ? .accept : .reject(.invalid, "FLUSH was not advertised")
        case .resize: return .reject(.invalid, "RESIZE is not supported")
        case .trim where !advertised.contains(.sendTrim), .writeZeroes where !advertised.contains(.sendWriteZeroes),
            .cache where !advertised.contains(.sendCache):
            if session.export.isReadOnly && command != .cache { return .reject(.permissionDenied, "export is read-only") }
            return .reject(.invalid, "\(command) was not advertised")
        case .blockStatus where !session.structuredReplies || session.metaContexts.isEmpty:
            return .reject(.invalid, "BLOCK_STATUS without a negotiated meta context")
        default: break
        }
        if session.export.isReadOnly && (command == .write || command == .trim || command == .writeZeroes) {
            return .reject(.permissionDenied, "export is read-only")
        }

        let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
        if overflow || end > session.export.sizeBytes {
            // doc/proto.md: ENOSPC for writes past the end, EINVAL for the rest.
            let errno: NBDErrno = command == .write || command == .writeZeroes ? .noSpace : .invalid
            return .reject(errno, "range \(offset)+\(length) runs past the export's \(session.export.sizeBytes) bytes")
        }
        let minimum = UInt64(max(limits.minimum, 1))
        if offset % minimum != 0 || UInt64(length) % minimum != 0 {
            return .reject(.invalid, "range \(offset)+\(length) is not aligned to \(minimum) bytes")
        }
        switch command {
        case .read where length > limits.maximumPayload:
            return flags.contains(.dontFragment)
                ? .reject(.overflow, "unfragmented read of \(length) bytes over the \(limits.maximumPayload)-byte limit")
                : .reject(.invalid, "read of \(length) bytes over the \(limits.maximumPayload)-byte limit")
        case .write where length > limits.maximumPayload:
            return .reject(.invalid, "write of \(length) bytes over the \(limits.maximumPayload)-byte limit")
        case .blockStatus where length == 0:
            return .reject(.invalid, "BLOCK_STATUS of zero bytes")
        default:
            return .accept
        }
    }
}
