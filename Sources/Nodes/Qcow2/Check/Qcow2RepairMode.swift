/// What `check -r` may repair: leaked clusters only, or every inconsistency it can fix
/// (refcounts too low or high, COPIED flags, and a rebuilt refcount structure).
public enum Qcow2RepairMode: String, Sendable {
    case leaks
    case all
}
