import StrataRuntime

// Before any task exists: keeps resumed continuations on the queue executor threads.
ThreadAffineExecutors.install()
await StrataCommand.dispatch()
