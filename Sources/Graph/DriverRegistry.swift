/// The drivers known by name. The top (the command line) registers the concrete drivers: the
/// graph layer knows none of them.
public struct DriverRegistry: Sendable {
    private var drivers: [String: DriverDescriptor] = [:]

    public init(_ descriptors: [DriverDescriptor] = []) {
        for descriptor in descriptors { register(descriptor) }
    }

    public mutating func register(_ descriptor: DriverDescriptor) {
        precondition(drivers[descriptor.name] == nil, "driver \(descriptor.name) registered twice")
        drivers[descriptor.name] = descriptor
    }

    public func descriptor(_ name: String) throws(GraphError) -> DriverDescriptor {
        guard let descriptor = drivers[name] else { throw .unknownDriver(name) }
        return descriptor
    }

    public var names: [String] { drivers.keys.sorted() }
}
