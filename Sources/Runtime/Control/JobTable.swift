import DequeModule
import Foundation
import RuntimeProto

/// The head's jobs (one per driver), for `list jobs`: who runs them, since when, and
/// how they ended. Finished jobs beyond `keptFinished` are forgotten, oldest first.
///
/// Threading: a value type under the ControlService's lock; time is passed in.
public struct JobTable: Sendable {
  public enum Status: String, Sendable { case running = "RUNNING", succeeded = "SUCCEEDED", failed = "FAILED" }

  public struct Job: Sendable {
    public var id: JobID
    public var status: Status = .running
    public var entrypoint: String
    /// The Jobs API submission it runs ("": a driver started by hand).
    public var submissionID = ""
    public var driverID: Data, driverPid: Int32, nodeID: Data, nodeIP: String
    /// Wall-clock milliseconds.
    public var startTimeMs: Int64, endTimeMs: Int64 = 0
    public var message = ""
  }

  public static let keptFinished = 10_000
  /// Most jobs kept at all: drivers that vanished unseen must not grow the table.
  public static let kept = 100_000
  public private(set) var jobs: [UInt32: Job] = [:]
  private var finished: Deque<UInt32> = []
  private var order: Deque<UInt32> = []
  /// The newest job of each submission (bounded with `jobs`).
  private var bySubmission: [String: UInt32] = [:]
  /// Jobs starting and ending (bounded), for `list cluster-events`.
  public private(set) var lifecycle = LifecycleLog()

  public init() {}

  public mutating func started(_ id: JobID, _ r: Swiftray_RegisterJobRequest, nowMs: Int64) {
    order.append(id.value)
    while jobs.count >= Self.kept, let old = order.popFirst() { forget(old) }
    let submission = String(r.submissionID.prefix(256))
    jobs[id.value] = Job(id: id, entrypoint: String(r.entrypoint.prefix(4096)), submissionID: submission, driverID: r.driverID,
                         driverPid: r.driverPid, nodeID: r.nodeID, nodeIP: String(r.nodeIp.prefix(256)), startTimeMs: nowMs)
    if !submission.isEmpty { bySubmission[submission] = id.value }
    lifecycle.changed("JOB", Data(id.binary), "RUNNING", "driver pid \(r.driverPid) on \(r.nodeIp.prefix(256))")
  }

  /// The driver said it finished (`shutdown`, exit), or it died (`status` failed).
  public mutating func ended(_ id: JobID, status: Status, message: String = "", nowMs: Int64) {
    guard var j = jobs[id.value], j.status == .running else { return }
    j.status = status
    lifecycle.changed("JOB", Data(id.binary), status.rawValue, message)
    j.endTimeMs = nowMs
    j.message = message
    jobs[id.value] = j
    finished.append(id.value)
    while finished.count > Self.keptFinished, let old = finished.popFirst() { forget(old) }
  }

  private mutating func forget(_ id: UInt32) {
    if let s = jobs.removeValue(forKey: id)?.submissionID, bySubmission[s] == id { bySubmission[s] = nil }
  }

  /// The driver's job of a Jobs API submission (its newest, should it have run twice).
  public func job(submission: String) -> Job? { bySubmission[submission].flatMap { jobs[$0] } }

  /// The jobs of drivers that exited (their worker ids): failed, unless they said so.
  public mutating func driversExited(_ drivers: Set<Data>, why: String, nowMs: Int64) {
    for j in jobs.values where j.status == .running && drivers.contains(j.driverID) {
      ended(j.id, status: .failed, message: why, nowMs: nowMs)
    }
  }

  /// Ray's `list jobs` columns.
  public static let columns = ["job_id", "submission_id", "entrypoint", "type", "status", "message", "start_time",
                               "end_time", "driver_info"]

  public func row(_ j: Job) -> [(String, StateValue)] {
    [("job_id", .string(j.id.hex)), ("submission_id", j.submissionID.isEmpty ? .null : .string(j.submissionID)),
     ("entrypoint", .string(j.entrypoint)), ("type", .string(j.submissionID.isEmpty ? "DRIVER" : "SUBMISSION")), ("status", .string(j.status.rawValue)), ("message", .string(j.message)),
     ("start_time", .int(j.startTimeMs)), ("end_time", j.endTimeMs == 0 ? .null : .int(j.endTimeMs)),
     ("driver_info", .object([("id", StateValue.hex(j.driverID)), ("node_ip_address", .string(j.nodeIP)),
                              ("node_id", StateValue.hex(j.nodeID)), ("pid", .string(String(j.driverPid)))]))]
  }
}
