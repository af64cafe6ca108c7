import Dispatch
import Glibc
import StrataRuntime

// Synchronous top-level code, so no task exists yet when the default executor is replaced
// (a top-level `await` would make this whole file the body of the async main task).
ThreadAffineExecutors.install()
Task.detached {
    await StrataCommand.dispatch()
    exit(EXIT_SUCCESS)
}
dispatchMain()
