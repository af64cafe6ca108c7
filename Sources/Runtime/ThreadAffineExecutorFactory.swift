import Synchronization
@_spi(ExperimentalCustomExecutors) import _Concurrency

/// The one place Strata uses experimental runtime SPI (Swift 6.3's `_createExecutors`).
///
/// Why: in Swift 6.3 a resumed continuation is enqueued on the global default executor, so every
/// io_uring completion would cross to the Dispatch pool and back (measured: ~1 µs and 1-2 mallocs
/// per I/O). This default executor keeps a job on the current queue executor's thread when it is
/// enqueued from one, and hands everything else to the platform's own executor. Tasks created with
/// a `QueueExecutor` as their executor preference get the same effect with public API at a higher
/// cost per hop, which is what the test suite (whose runner owns `main`) relies on.
public enum ThreadAffineExecutors {
    private static let installed = Atomic<Bool>(false)

    /// Installs the thread-affine default executor. Call first thing in a synchronous `main`,
    /// before any task exists (checked: a task running now would keep the executor it started on).
    public static func install() {
        precondition(withUnsafeCurrentTask { $0 } == nil, "ThreadAffineExecutors.install() runs before any task exists")
        _createExecutors(factory: ThreadAffineExecutorFactory.self)
        installed.store(true, ordering: .releasing)
    }

    /// Whether `install()` ran. Without it, long-lived request tasks need their queue executor as
    /// executor preference to stay on its thread; with it they must not have one, since a task
    /// preference makes every actor hop re-enqueue (measured: 3x the CPU per request).
    public static var isInstalled: Bool { installed.load(ordering: .acquiring) }

    /// The executor preference a queue's long-lived task should carry.
    public static func preference(for executor: QueueExecutor) -> QueueExecutor? {
        isInstalled ? nil : executor
    }

    /// Starts a long-lived task serving `executor`'s queue. With the thread-affine executors it
    /// is detached: `Task {}` would inherit its creator's preference (an accept loop's control
    /// executor, say), and any preference makes every actor hop lock the task's status records
    /// (measured: 18% of an NBD server's CPU).
    @discardableResult
    public static func startTask<Result: Sendable>(serving executor: QueueExecutor,
                                                   _ operation: @escaping @Sendable () async -> Result) -> Task<Result, Never> {
        isInstalled ? Task.detached(operation: operation) : Task(executorPreference: executor, operation: operation)
    }
}

struct ThreadAffineExecutorFactory: ExecutorFactory {
    static let mainExecutor: any MainExecutor = PlatformExecutorFactory.mainExecutor
    static let defaultExecutor: any TaskExecutor = ThreadAffineDefaultExecutor(fallback: PlatformExecutorFactory.defaultExecutor)
}

final class ThreadAffineDefaultExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked Sendable: immutable after init; `fallback` is itself thread-safe.
    private let fallback: any TaskExecutor

    init(fallback: any TaskExecutor) { self.fallback = fallback }

    func enqueue(_ job: consuming ExecutorJob) {
        if let queue = QueueExecutor.current {
            queue.enqueueGeneric(UnownedJob(job))
        } else {
            fallback.enqueue(job)
        }
    }
}
