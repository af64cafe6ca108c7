import StrataRuntime
import CStrataShim
import Glibc

ThreadAffineExecutors.install()

actor RingUser {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let executor: QueueExecutor
    init(executor: QueueExecutor) { self.executor = executor; self.unownedExecutor = executor.asUnownedSerialExecutor() }
    func nops(_ count: Int) async -> Bool {
        var ok = true
        for _ in 0..<count { let r = await executor.perform { io_uring_prep_nop($0) }; if r != 0 || !executor.isCurrent { ok = false } }
        return ok
    }
}
let executor = try QueueExecutor(name: "q0")
let user = RingUser(executor: executor)
_ = await user.nops(10)
let before = executor.crossThreadEnqueues
var t0 = timespec(); clock_gettime(CLOCK_MONOTONIC, &t0)
let ok = await user.nops(1_000_000)
var t1 = timespec(); clock_gettime(CLOCK_MONOTONIC, &t1)
print("ok \(ok) crossings \(executor.crossThreadEnqueues - before) ns/op \(Double((t1.tv_sec - t0.tv_sec) * 1_000_000_000 + (t1.tv_nsec - t0.tv_nsec)) / 1e6)")
