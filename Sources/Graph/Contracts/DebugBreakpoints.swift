import Glibc

/// A node that can hold requests at an event until told to go on: blkdebug's breakpoints, which
/// qemu-io's `break`, `remove_break`, `resume` and `wait_break` drive. Each returns 0 or a
/// negative errno, as QEMU's `bdrv_debug_*` calls do.
public protocol DebugBreakpoints: NodeState {
    /// The next request that fires `event` waits under `tag` (-ENOENT for an event never fired).
    func setBreakpoint(event: String, tag: String) -> Int32
    /// Drops the breakpoints set under `tag` and lets the requests waiting under it go
    /// (-ENOENT when there was neither).
    func removeBreakpoint(tag: String) -> Int32
    /// Lets the first request waiting under `tag` go (-ENOENT when none waits).
    func resume(tag: String) -> Int32
    /// Whether a request waits under `tag`.
    func isSuspended(tag: String) -> Bool
}
