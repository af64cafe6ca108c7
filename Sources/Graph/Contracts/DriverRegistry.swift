/// The drivers known by name. The top (the command line) registers the concrete drivers: the
/// graph layer knows none of them.
public struct DriverRegistry: Sendable {
    private var drivers: [String: DriverDescriptor] = [:]

    public init(_ descriptors: [DriverDescriptor] = []) {
        for descriptor in descriptors { register(descriptor) }
    }

    public mutating func register(_ descriptor: DriverDescriptor) {
        precondition(drivers[descriptor.name] == nil, "driver \(descriptor.name) registered twice")
        for prefix in descriptor.filenamePrefixes {
            precondition(protocolDriver(forFilename: prefix) == nil, "filename prefix \(prefix) claimed twice")
        }
        drivers[descriptor.name] = descriptor
    }

    /// The protocol driver whose filename prefix `filename` starts with (`nbd://...`), or nil for a
    /// plain path, which the `file` driver opens.
    public func protocolDriver(forFilename filename: String) -> DriverDescriptor? {
        drivers.values.first { descriptor in descriptor.filenamePrefixes.contains { filename.hasPrefix($0) } }
    }

    public func descriptor(_ name: String) throws(GraphError) -> DriverDescriptor {
        guard let descriptor = drivers[name] else { throw .unknownDriver(name) }
        return descriptor
    }

    public var names: [String] { drivers.keys.sorted() }
}
