/// A continuation parked where another task will find and resume it (a waiter list, a request
/// slot). Checked in debug builds, so a second resume traps and one dropped unresumed is
/// reported; unchecked in release builds, where the checked one's allocation would cost every
/// wait on the hot paths.
#if DEBUG
public typealias ParkedContinuation<T> = CheckedContinuation<T, Never>
#else
public typealias ParkedContinuation<T> = UnsafeContinuation<T, Never>
#endif

/// Suspends the caller and runs `decide` with its continuation, on the caller's isolation and
/// with nothing else of that actor running in between: `decide` either stores the continuation
/// for a waker or resumes it at once. The decision to wait belongs in `decide`, never before the
/// call: the call is a suspension point, and what was checked before it may have changed
/// (executors.md, "Parking").
@inline(__always)
public nonisolated(nonsending) func park<T>(_ decide: (ParkedContinuation<T>) -> Void) async -> T {
    #if DEBUG
    await withCheckedContinuation(decide)
    #else
    await withUnsafeContinuation(decide)
    #endif
}
