/// Work a queue executor finds by reading memory, not through its ring: a vhost-user virtqueue's
/// available ring, which another process fills. Like QEMU's `io_poll` handlers, a task parks on
/// one with `QueueExecutor.pollWhileIdle`, and the loop checks it every turn and while it spins
/// idle, so the other side needs no notification (a syscall there, a wakeup here) while this
/// queue keeps up with it.
public protocol IdlePollSource: AnyObject {
    /// Whether work is waiting. Called on the executor's thread between jobs: it reads memory
    /// only, never blocks and never suspends.
    func hasWork() -> Bool
}
