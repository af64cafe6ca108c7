// The floors under Bench/results/vhost.md, measured on this machine as it is now.
//
// Default: what a request costs that does nothing but suspend a Swift task on a queue executor
// until an io_uring NOP completes (row 6''). DEPTH tasks on one pinned executor (the thread-affine
// default executor installed, as in `strata bench`) each await `perform { nop }` in a loop; no
// node, no device model, no load generator. Prints one JSON line: NOPs per second and the
// process's user and system CPU per NOP.
// strata-ring-floor [--depth N] [--seconds S] [--submit-batch N] [--cpu C]
//
// --cache-round-trip A,B: two threads pinned to CPUs A and B pass a counter back and forth
// through two cache lines; prints the mean round trip. Every request between a vhost-user front
// end and back end crosses between their CPUs several times, so this bounds what rows 1 and 2
// can reach, and it changes with where the hypervisor places the vCPUs.
import CStrataShim
import Dispatch
import Glibc
import StrataRuntime
import Synchronization

struct Options {
    var depth = 32
    var seconds = 3.0
    var submitBatch: UInt32 = 4
    var cpu: Int? = 0
    var roundTripCPUs: (Int, Int)?

    init(_ arguments: [String]) {
        var rest = arguments[...]
        while let flag = rest.popFirst() {
            guard let value = rest.popFirst() else { fail("\(flag) needs a value") }
            switch flag {
            case "--depth": depth = parsed(Int(value), "--depth takes a count, got '\(value)'")
            case "--seconds": seconds = parsed(Double(value), "--seconds takes a number, got '\(value)'")
            case "--submit-batch": submitBatch = parsed(UInt32(value), "--submit-batch takes a count, got '\(value)'")
            case "--cpu": cpu = value == "none" ? nil : parsed(Int(value), "--cpu takes a CPU number or none, got '\(value)'")
            case "--cache-round-trip":
                let cpus = value.split(separator: ",").compactMap { Int($0) }
                guard cpus.count == 2 else { fail("--cache-round-trip takes two CPUs, as 0,1; got '\(value)'") }
                roundTripCPUs = (cpus[0], cpus[1])
            default: fail("unknown option \(flag)")
            }
        }
        guard depth > 0, seconds > 0, submitBatch > 0 else { fail("--depth, --seconds and --submit-batch must be positive") }
    }
}

func parsed<Value>(_ value: Value?, _ message: String) -> Value {
    guard let value else { fail(message) }
    return value
}

func fail(_ message: String) -> Never {
    print("strata-ring-floor: \(message)")
    exit(EXIT_FAILURE)
}

/// Set once the run's time is up; every loop ends at its next NOP.
final class StopFlag: Sendable {
    let flag = Atomic<Bool>(false)
}

/// Bound to the queue executor, so its loops run on that thread (a detached task alone would run
/// on the global executor).
actor NopIssuer {
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let executor: QueueExecutor

    init(executor: QueueExecutor) {
        self.executor = executor
        unownedExecutor = executor.asUnownedSerialExecutor()
    }

    func loop(until stop: StopFlag) async -> Int {
        var count = 0
        while !stop.flag.load(ordering: .relaxed) {
            let result = await executor.perform { io_uring_prep_nop($0) }
            precondition(result == 0, "a NOP completed with \(result)")
            count += 1
        }
        return count
    }
}

func cpuNs() -> (user: Double, system: Double) {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func ns(_ time: timeval) -> Double { Double(time.tv_sec) * 1e9 + Double(time.tv_usec) * 1e3 }
    return (ns(usage.ru_utime), ns(usage.ru_stime))
}

/// Two counters on lines of their own: the pinger writes one and waits for the ponger to echo it
/// on the other.
final class PingPong: Sendable {
    let ping = Atomic<Int>(0)
    let padding = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    let pong = Atomic<Int>(0)
    let rounds: Int
    let echoCPU: Int

    init(rounds: Int, echoCPU: Int) {
        self.rounds = rounds
        self.echoCPU = echoCPU
    }

    func echo() {
        _ = strata_pin_current_thread(Int32(echoCPU))
        for round in 1...rounds {
            while ping.load(ordering: .acquiring) != round {}
            pong.store(round, ordering: .releasing)
        }
    }
}

func cacheRoundTripNs(between first: Int, and second: Int) -> Double {
    let game = PingPong(rounds: 1_000_000, echoCPU: second)
    var thread = pthread_t()
    let created = pthread_create(&thread, nil, { raw in
        Unmanaged<PingPong>.fromOpaque(raw!).takeRetainedValue().echo()
        return nil
    }, Unmanaged.passRetained(game).toOpaque())
    guard created == 0 else { fail("pthread_create: \(created)") }
    guard strata_pin_current_thread(Int32(first)) == 0 else { fail("cannot pin to CPU \(first)") }
    let startNs = MonotonicClock.now()
    for round in 1...game.rounds {
        game.ping.store(round, ordering: .releasing)
        while game.pong.load(ordering: .acquiring) != round {}
    }
    let elapsedNs = Double(MonotonicClock.now() - startNs)
    pthread_join(thread, nil)
    return elapsedNs / Double(game.rounds)
}

let commandLineOptions = Options(Array(CommandLine.arguments.dropFirst()))
if let (first, second) = commandLineOptions.roundTripCPUs {
    print("{\"cache_round_trip_ns\":\(Int(cacheRoundTripNs(between: first, and: second)))}")
    exit(EXIT_SUCCESS)
}
ThreadAffineExecutors.install()
Task.detached {
    let options = Options(Array(CommandLine.arguments.dropFirst()))
    let stop = StopFlag()
    do {
        let executor = try QueueExecutor(name: "floor-q0", cpu: options.cpu, submitBatchLimit: options.submitBatch)
        let issuer = NopIssuer(executor: executor)
        let tasks = (0..<options.depth).map { _ in
            ThreadAffineExecutors.startTask(serving: executor) { await issuer.loop(until: stop) }
        }
        let startNs = MonotonicClock.now()
        let cpuBefore = cpuNs()
        // Dispatch's timer, not `Task.sleep`: the thread-affine default executor has no delayed jobs.
        DispatchQueue.global().asyncAfter(deadline: .now() + options.seconds) { stop.flag.store(true, ordering: .relaxed) }
        var nops = 0
        for task in tasks { nops += await task.value }
        let elapsed = Double(MonotonicClock.now() - startNs) / 1e9
        let cpuAfter = cpuNs()
        let perNop = Double(max(nops, 1))
        print("{\"nops\":\(nops),\"nops_per_second\":\(Int(Double(nops) / elapsed)),"
            + "\"user_ns_per_nop\":\(Int((cpuAfter.user - cpuBefore.user) / perNop)),"
            + "\"system_ns_per_nop\":\(Int((cpuAfter.system - cpuBefore.system) / perNop))}")
        await executor.shutdown()
        exit(EXIT_SUCCESS)
    } catch {
        fail("\(error)")
    }
}
dispatchMain()
