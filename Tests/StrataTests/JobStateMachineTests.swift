import Foundation
import StrataJobs
import StrataRuntime
import Synchronization
import Testing

/// QEMU's job lifecycle, verb by verb and status by status (as qemu-iotests 219 walks it), on a
/// job whose steps the test releases one at a time.
@Suite(.serialized, .timeLimit(.minutes(1))) struct JobStateMachineTests {
    /// A block job of `steps` steps, each waiting for the test to release it; it turns READY after
    /// the last one when `readyAtEnd`, and then runs until job-complete.
    final class SteppedJob: JobDriver, @unchecked Sendable {
        // `released`, `failAt` and `completed` are Mutex/Atomic-guarded; the rest is immutable.
        let steps: Int
        let readyAtEnd: Bool
        let released = Locked(0)
        let failAt: Int?
        let completed = Atomic<Bool>(false)
        private let abortedFlag = Atomic<Bool>(false)
        private let committedFlag = Atomic<Bool>(false)
        var aborted: Bool { abortedFlag.load(ordering: .relaxed) }
        var committed: Bool { committedFlag.load(ordering: .relaxed) }

        init(steps: Int, readyAtEnd: Bool = false, failAt: Int? = nil) {
            self.steps = steps
            self.readyAtEnd = readyAtEnd
            self.failAt = failAt
        }

        var type: JobType { .stream }

        func release(_ count: Int = 1) { released.withLock { $0 += count } }

        func run(_ context: JobContext) async throws {
            for step in 0..<steps {
                while released.withLock({ $0 }) <= step {
                    if await context.isCancelled { return }
                    try await Task.sleep(nanoseconds: 1_000_000)
                    await context.pausePoint()
                }
                if step == failAt { throw JobError("Input/output error") }
                await context.setProgress(current: UInt64(step + 1), total: UInt64(steps))
                await context.pausePoint()
                if await context.isCancelled { return }
            }
            guard readyAtEnd else { return }
            await context.becomeReady()
            while !completed.load(ordering: .relaxed) {
                if await context.isCancelled { return }
                try await Task.sleep(nanoseconds: 1_000_000)
                await context.pausePoint()
            }
        }

        func commit() async throws { committedFlag.store(true, ordering: .relaxed) }
        func abort() async { abortedFlag.store(true, ordering: .relaxed) }
        func complete(_ context: JobContext) async throws { completed.store(true, ordering: .relaxed) }
    }

    /// Collects the events a manager sends.
    final class EventLog: @unchecked Sendable {
        // Guarded by the Mutex.
        private let events = Locked<[(name: String, text: String)]>([])
        func append(_ event: JobEvent) { events.withLock { $0.append((event.name, event.data.compactText())) } }
        var statuses: [String] {
            events.withLock { list in
                list.compactMap { event in
                    guard event.name == "JOB_STATUS_CHANGE", let range = event.text.range(of: #""status": ""#) else { return nil }
                    return String(event.text[range.upperBound...].prefix { $0 != "\"" })
                }
            }
        }
        var names: [String] { events.withLock { $0.map(\.name) } }
        var all: [(name: String, text: String)] { events.withLock { $0 } }
    }

    func withManager(_ body: (JobManager, EventLog) async throws -> Void) async throws {
        let control = try QueueExecutor(name: "strata-jobs-test")
        let log = EventLog()
        let manager = JobManager(control: control) { log.append($0) }
        do { try await body(manager, log) } catch {
            await control.shutdown()
            throw error
        }
        await control.shutdown()
    }

    /// Waits (bounded) until the job shows `status`.
    func wait(_ job: Job, for status: JobStatus) async throws {
        for _ in 0..<5000 {
            if await job.status == status { return }
            try await Task.sleep(nanoseconds: 1_000_000)
        }
        Issue.record("job \(job.id) never reached \(status.rawValue); it is \(await job.status.rawValue)")
    }

    @Test func theTablesAreQemus() {
        // Every status but null leads somewhere, every verb is accepted somewhere, and dismiss only
        // where a job has concluded: the shape of job.c's tables.
        for status in JobStatus.allCases where status != .null {
            #expect(!(JobTables.transitions[status] ?? []).isEmpty, "\(status) is a dead end")
        }
        for verb in JobVerb.allCases { #expect(!(JobTables.verbs[verb] ?? []).isEmpty) }
        #expect(JobTables.verbs[.dismiss] == [.concluded])
        #expect(JobTables.allows(.standby, .ready) && !JobTables.allows(.standby, .running))
        #expect(!JobTables.allows(.concluded, .running) && JobTables.allows(.aborting, .concluded))
    }

    @Test func theOpBlockerTableCoversEveryRole() {
        for role in [JobNodeRole.streamTop, .streamIntermediate, .commitSource, .commitTarget, .commitOverlay, .mirrorSource, .mirrorTarget,
                     .createTarget] {
            #expect(OpBlockers.allowed[role] != nil, "\(role) has no row")
            // As QEMU's block_job_add_bdrv: no job lets another job of its kind start on its nodes.
            #expect(!OpBlockers.allows(.stream, whileUsedAs: role) && !OpBlockers.allows(.commit, whileUsedAs: role)
                    && !OpBlockers.allows(.mirror, whileUsedAs: role)
                    && !OpBlockers.allows(.create, whileUsedAs: role))
        }
    }

    @Test func aJobThatSucceedsGoesThroughQemusStatuses() async throws {
        try await withManager { manager, log in
            let driver = SteppedJob(steps: 3)
            let job = try await manager.start(id: "j0", driver: driver)
            #expect(await job.status == .running)
            driver.release(3)
            try await wait(job, for: .null)
            #expect(log.statuses == ["created", "running", "waiting", "pending", "concluded", "null"])
            #expect(log.names.filter { $0 != "JOB_STATUS_CHANGE" } == ["BLOCK_JOB_COMPLETED"])
            let completed = try #require(log.all.first { $0.name == "BLOCK_JOB_COMPLETED" }?.text)
            #expect(completed.contains(#""len": 3"#) && completed.contains(#""offset": 3"#) && completed.contains(#""device": "j0""#))
            #expect(driver.committed)
            await #expect(throws: JobError.self) { try await manager.job("j0") }
        }
    }

    /// Every verb in every status a job can be held in: accepted exactly where QEMU's table says.
    @Test func everyVerbInEveryStatus() async throws {
        try await withManager { manager, _ in
            func attempt(_ verb: JobVerb, on job: Job) async -> JobError? {
                do {
                    switch verb {
                    case .cancel: return nil  // tried last: it ends the job
                    case .pause: try await job.pause()
                    case .resume: try await job.resume()
                    case .setSpeed: try await job.setSpeed(1 << 20)
                    case .complete: try await job.complete()
                    case .finalize: try await job.finalize()
                    case .dismiss: try await job.dismiss()
                    }
                    return nil
                } catch {
                    return error
                }
            }
            // running, paused, ready, standby, pending, concluded: the statuses a job rests in.
            let driver = SteppedJob(steps: 1, readyAtEnd: true)
            let job = try await manager.start(id: "walk", driver: driver, autoFinalize: false, autoDismiss: false)
            #expect(await attempt(.complete, on: job)?.description == "Job 'walk' in state 'running' cannot accept command verb 'complete'")
            #expect(await attempt(.finalize, on: job)?.description == "Job 'walk' in state 'running' cannot accept command verb 'finalize'")
            #expect(await attempt(.dismiss, on: job)?.description == "Job 'walk' in state 'running' cannot accept command verb 'dismiss'")
            #expect(await attempt(.setSpeed, on: job) == nil)
            #expect(await attempt(.resume, on: job)?.description == "Can't resume a job that was not paused")
            #expect(await attempt(.pause, on: job) == nil)
            try await wait(job, for: .paused)
            #expect(await attempt(.pause, on: job)?.description == "Job is already paused")
            #expect(await attempt(.complete, on: job)?.description == "Job 'walk' in state 'paused' cannot accept command verb 'complete'")
            #expect(await attempt(.resume, on: job) == nil)
            driver.release()
            try await wait(job, for: .ready)
            #expect(await attempt(.pause, on: job) == nil)
            try await wait(job, for: .standby)
            #expect(await attempt(.dismiss, on: job)?.description == "Job 'walk' in state 'standby' cannot accept command verb 'dismiss'")
            // As QEMU 7.2, a paused job may be asked to complete; it does once resumed.
            #expect(await attempt(.complete, on: job) == nil)
            #expect(await job.status == .standby)
            #expect(await attempt(.resume, on: job) == nil)
            try await wait(job, for: .pending)
            for verb in [JobVerb.pause, .resume, .setSpeed, .complete, .dismiss] {
                #expect(await attempt(verb, on: job) != nil, "\(verb) in pending")
            }
            #expect(await attempt(.finalize, on: job) == nil)
            try await wait(job, for: .concluded)
            for verb in [JobVerb.pause, .setSpeed, .complete, .finalize] {
                #expect(await attempt(verb, on: job)?.description == "Job 'walk' in state 'concluded' cannot accept command verb '\(verb.rawValue)'")
            }
            await #expect(throws: JobError.self) { try await job.cancel(force: true) }
            #expect(await attempt(.dismiss, on: job) == nil)
            #expect(await job.status == .null)
        }
    }

    @Test func cancellingAbortsAndSaysSo() async throws {
        try await withManager { manager, log in
            let driver = SteppedJob(steps: 5)
            let job = try await manager.start(id: "c0", driver: driver)
            driver.release(2)
            try await job.cancel(force: true)
            try await wait(job, for: .null)
            #expect(log.statuses == ["created", "running", "aborting", "concluded", "null"])
            #expect(log.names.contains("BLOCK_JOB_CANCELLED") && !log.names.contains("BLOCK_JOB_COMPLETED"))
            #expect(driver.aborted && !driver.committed)
        }
    }

    @Test func aFailedJobConcludesWithItsError() async throws {
        try await withManager { manager, log in
            let driver = SteppedJob(steps: 3, failAt: 1)
            let job = try await manager.start(id: "f0", driver: driver, autoDismiss: false)
            driver.release(3)
            try await wait(job, for: .concluded)
            #expect(log.statuses == ["created", "running", "aborting", "concluded"])
            let completed = try #require(log.all.first { $0.name == "BLOCK_JOB_COMPLETED" }?.text)
            #expect(completed.contains(#""error": "Input/output error""#))
            #expect(await job.snapshot().error == "Input/output error")
            try await job.dismiss()
        }
    }

    @Test func withoutAutoFinalizeTheJobWaitsInPending() async throws {
        try await withManager { manager, log in
            let driver = SteppedJob(steps: 1)
            let job = try await manager.start(id: "p0", driver: driver, autoFinalize: false)
            driver.release()
            try await wait(job, for: .pending)
            #expect(log.names.contains("BLOCK_JOB_PENDING") && !driver.committed)
            try await job.finalize()
            try await wait(job, for: .null)
            #expect(driver.committed)
        }
    }

    @Test func jobIDsAreCheckedAsQemuChecksThem() async throws {
        try await withManager { manager, _ in
            for bad in ["", "1abc", "a b", "#block1", "a/b"] {
                await #expect(throws: JobError("Invalid job ID '\(bad)'")) { try await manager.start(id: bad, driver: SteppedJob(steps: 1)) }
            }
            let driver = SteppedJob(steps: 1)
            let started = try await manager.start(id: "ok-1.x_y", driver: driver)
            await #expect(throws: JobError("Job ID 'ok-1.x_y' already in use")) { try await manager.start(id: "ok-1.x_y", driver: SteppedJob(steps: 1)) }
            await #expect(throws: JobError("Job not found")) { try await manager.job("nothing") }
            await #expect(throws: JobError("Block job 'nothing' not found", class: .deviceNotActive)) { try await manager.blockJob("nothing") }
            driver.release()
            try await wait(started, for: .null)
        }
    }
}
