import Glibc
import Synchronization

/// Synchronization's `Mutex`, with its critical sections visible to ThreadSanitizer.
///
/// On Linux `Mutex` parks on a futex directly, which TSan cannot see, so it reports every access
/// guarded by one as a race (checked with two threads incrementing under `Mutex.withLock`). Built
/// with `STRATA_TSAN` (scripts/tsan) the value sits behind a pthread mutex, which TSan intercepts;
/// otherwise this is `Mutex` itself, inlined away.
public struct Locked<Value: ~Copyable>: ~Copyable {
    #if STRATA_TSAN
    @usableFromInline let lock: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline let storage: UnsafeMutablePointer<Value>

    @inlinable public init(_ initialValue: consuming sending Value) {
        lock = .allocate(capacity: 1)
        precondition(pthread_mutex_init(lock, nil) == 0, "pthread_mutex_init")
        storage = .allocate(capacity: 1)
        storage.initialize(to: initialValue)
    }

    deinit {
        storage.deinitialize(count: 1)
        storage.deallocate()
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    @inlinable
    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body(&storage.pointee)
    }
    #else
    @usableFromInline let mutex: Mutex<Value>

    @inlinable public init(_ initialValue: consuming sending Value) {
        mutex = Mutex(initialValue)
    }

    @inlinable
    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try mutex.withLock(body)
    }
    #endif
}

// In the TSan build the value is reached only under the pthread mutex, as Mutex's is under its
// own lock, which is what makes Mutex Sendable for any value.
extension Locked: @unchecked Sendable where Value: ~Copyable {}
