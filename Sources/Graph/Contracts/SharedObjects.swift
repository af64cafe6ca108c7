import StrataRuntime

/// Named objects shared by several nodes (throttle groups, later dirty bitmaps and secrets), created
/// on first use. The graph layer stores them without knowing their types.
public final class SharedObjects: Sendable {
    private let objects = Locked<[String: any Sendable & AnyObject]>([:])

    public init() {}

    /// The object called `name`, made by `create` if there is none yet. Throws when an object of
    /// another type already has that name.
    public func object<T: Sendable & AnyObject>(named name: String, as type: T.Type, create: () throws -> T) throws -> T {
        try objects.withLock { objects in
            if let existing = objects[name] {
                guard let typed = existing as? T else {
                    throw GraphError.badEdit("object '\(name)' exists and is not a \(T.self)")
                }
                return typed
            }
            let created = try create()
            objects[name] = created
            return created
        }
    }

    public func existing<T: Sendable & AnyObject>(named name: String, as type: T.Type) -> T? {
        objects.withLock { $0[name] as? T }
    }

    public func remove(named name: String) {
        _ = objects.withLock { $0.removeValue(forKey: name) }
    }
}
