import Foundation
import Testing
import Runtime
import RuntimeProto

private func record(_ id: String, _ entrypoint: String = "python run.py") -> JobSubmissions.Record {
  JobSubmissions.Record(submission_id: id, entrypoint: entrypoint)
}

@Suite struct JobSubmissionsTests {
  @Test func aJobGoesFromPendingThroughRunningToSucceededOrFailedByItsExit() throws {
    var jobs = JobSubmissions()
    let actions = try jobs.submitted(record("a"), now: 100)
    #expect(actions.count == 2 && jobs.records["a"]?.status == .pending && jobs.records["a"]?.start_time == 100)
    guard case .launch(let r) = actions.last else { Issue.record("no launch"); return }
    #expect(r.submission_id == "a")
    _ = jobs.driverStarted("a", pid: 42)
    #expect(jobs.records["a"]?.status == .running && jobs.records["a"]?.driver_pid == 42)
    _ = jobs.ended("a", pid: 42, exitCode: 0, signal: 0, now: 200)
    #expect(jobs.records["a"]?.status == .succeeded && jobs.records["a"]?.end_time == 200 && jobs.records["a"]?.driver_exit_code == 0)
    _ = try jobs.submitted(record("b"), now: 300)
    _ = jobs.driverStarted("b", pid: 43)
    _ = jobs.ended("b", pid: 43, exitCode: 3, signal: 0, now: 400)
    #expect(jobs.records["b"]?.status == .failed && jobs.records["b"]?.driver_exit_code == 3)
    #expect(jobs.records["b"]?.message.contains("exit code 3") == true)
    _ = try jobs.submitted(record("c"), now: 500)
    _ = jobs.driverFailedToStart("c", why: "runtime_env setup failed: pip", runtimeEnv: true, now: 600)
    #expect(jobs.records["c"]?.status == .failed && jobs.records["c"]?.error_type == "RUNTIME_ENV_SETUP_FAILED")
    #expect(jobs.all.map(\.submission_id) == ["a", "b", "c"])
  }

  @Test func aStopSignalsARunningDriverAndItsEndIsStopped() throws {
    var jobs = JobSubmissions()
    _ = try jobs.submitted(record("a"), now: 0)
    // Stopped while pending: its launch (a wait for resources) is cancelled, and it is
    // signalled should it start anyway.
    let pending = try jobs.stopRequested("a")
    #expect(pending.stopping && pending.actions.contains(.cancelLaunch("a")))
    #expect(jobs.driverStarted("a", pid: 7).contains(.stop(pid: 7)))
    _ = jobs.ended("a", pid: 7, exitCode: nil, signal: 15, now: 1)
    #expect(jobs.records["a"]?.status == .stopped && jobs.records["a"]?.driver_exit_code == -15)
    #expect(try jobs.stopRequested("a").stopping == false, "an ended job is not stopped again")
    _ = try jobs.submitted(record("b"), now: 2)
    _ = jobs.driverStarted("b", pid: 8)
    #expect(try jobs.stopRequested("b").actions.contains(.stop(pid: 8)))
    #expect(throws: JobSubmissions.Refusal.notFound("x")) { _ = try jobs.stopRequested("x") }
  }

  @Test func submissionsAreCheckedAndOnlyEndedJobsAreDeleted() throws {
    var jobs = JobSubmissions()
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.submitted(record("a", "  "), now: 0) }
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.submitted(record("../x"), now: 0) }
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.submitted(record(String(repeating: "a", count: 300)), now: 0) }
    var negative = record("n")
    negative.entrypoint_num_cpus = -1
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.submitted(negative, now: 0) }
    var cpuByName = record("c")
    cpuByName.entrypoint_resources = ["CPU": 1]
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.submitted(cpuByName, now: 0) }
    var hugeMemory = record("m")
    hugeMemory.entrypoint_memory = .infinity
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.submitted(hugeMemory, now: 0) }
    var many = record("r")
    many.entrypoint_resources = Dictionary(uniqueKeysWithValues: (0...JobSubmissions.maxEntrypointResources).map { ("r\($0)", 1.0) })
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.submitted(many, now: 0) }
    var reserved = record("ok")
    reserved.entrypoint_num_cpus = 1.5
    reserved.entrypoint_memory = 1_048_576
    reserved.entrypoint_resources = ["accel": 2]
    #expect(reserved.reservation == ResourceSet(units: ["CPU": 1.5, "memory": 1048576, "accel": 2]))
    #expect(record("none").reservation.isEmpty)
    _ = try jobs.submitted(record("a"), now: 0)
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.submitted(record("a"), now: 1) }
    #expect(throws: JobSubmissions.Refusal.self) { _ = try jobs.deleted("a") }
    _ = jobs.driverStarted("a", pid: 9)
    _ = jobs.ended("a", pid: 9, exitCode: 0, signal: 0, now: 2)
    #expect(try jobs.deleted("a") == [.erase("a")] && jobs.records.isEmpty)
  }

  @Test func jobsThatWereGoingWhenTheHeadStoppedAreFailedWhenItRestarts() throws {
    var before = JobSubmissions()
    _ = try before.submitted(record("done"), now: 0)
    _ = before.driverStarted("done", pid: 1)
    _ = before.ended("done", pid: 1, exitCode: 0, signal: 0, now: 1)
    _ = try before.submitted(record("going"), now: 2)
    _ = before.driverStarted("going", pid: 2)
    let stored = try before.all.map { try JSONDecoder().decode(JobSubmissions.Record.self, from: JSONEncoder().encode($0)) }
    var after = JobSubmissions()
    let actions = after.restored(stored, now: 10)
    #expect(after.records["done"]?.status == .succeeded)
    #expect(after.records["going"]?.status == .failed && after.records["going"]?.end_time == 10)
    #expect(actions.count == 1)
  }
}

@Suite struct JobTableSubmissionTests {
  func request(pid: Int32, submission: String = "") -> Swiftray_RegisterJobRequest {
    var r = Swiftray_RegisterJobRequest()
    r.driverPid = pid
    r.driverID = Data([UInt8(pid)])
    r.entrypoint = "python job.py"
    r.submissionID = submission
    return r
  }

  @Test func aSubmissionsDriverIsFoundByItsSubmissionAndListedAsOne() {
    var t = JobTable()
    t.started(JobID(1), request(pid: 10), nowMs: 1)
    t.started(JobID(2), request(pid: 11, submission: "raysubmit_a"), nowMs: 2)
    #expect(t.job(submission: "raysubmit_a")?.id == JobID(2))
    #expect(t.job(submission: "other") == nil && t.job(submission: "") == nil, "a hand-started driver is no submission's")
    let row = Dictionary(uniqueKeysWithValues: t.row(t.jobs[2]!).map { ($0.0, $0.1) })
    #expect(row["submission_id"] == .string("raysubmit_a") && row["type"] == .string("SUBMISSION"))
    #expect(Dictionary(uniqueKeysWithValues: t.row(t.jobs[1]!).map { ($0.0, $0.1) })["type"] == .string("DRIVER"))
    let long = String(repeating: "x", count: 1000)
    t.started(JobID(3), request(pid: 12, submission: long), nowMs: 3)
    #expect(t.jobs[3]?.submissionID.count == 256, "a peer's id is bounded")
  }

  @Test func aForgottenJobLeavesNoSubmissionBehind() {
    var t = JobTable()
    for i in 0..<(JobTable.keptFinished + 2) {
      t.started(JobID(UInt32(i)), request(pid: 1, submission: "s\(i)"), nowMs: Int64(i))
      t.ended(JobID(UInt32(i)), status: .succeeded, nowMs: Int64(i))
    }
    #expect(t.job(submission: "s0") == nil && t.job(submission: "s1") == nil, "the oldest finished were forgotten")
    #expect(t.job(submission: "s\(JobTable.keptFinished + 1)") != nil)
  }
}
