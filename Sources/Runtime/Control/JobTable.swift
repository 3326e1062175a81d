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
  /// Jobs starting and ending (bounded), for `list cluster-events`.
  public private(set) var lifecycle = LifecycleLog()

  public init() {}

  public mutating func started(_ id: JobID, _ r: Swiftray_RegisterJobRequest, nowMs: Int64) {
    order.append(id.value)
    while jobs.count >= Self.kept, let old = order.popFirst() { jobs[old] = nil }
    jobs[id.value] = Job(id: id, entrypoint: String(r.entrypoint.prefix(4096)), driverID: r.driverID, driverPid: r.driverPid,
                         nodeID: r.nodeID, nodeIP: String(r.nodeIp.prefix(256)), startTimeMs: nowMs)
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
    while finished.count > Self.keptFinished, let old = finished.popFirst() { jobs[old] = nil }
  }

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
    [("job_id", .string(j.id.hex)), ("submission_id", .null), ("entrypoint", .string(j.entrypoint)),
     ("type", .string("DRIVER")), ("status", .string(j.status.rawValue)), ("message", .string(j.message)),
     ("start_time", .int(j.startTimeMs)), ("end_time", j.endTimeMs == 0 ? .null : .int(j.endTimeMs)),
     ("driver_info", .object([("id", StateValue.hex(j.driverID)), ("node_ip_address", .string(j.nodeIP)),
                              ("node_id", StateValue.hex(j.nodeID)), ("pid", .string(String(j.driverPid)))]))]
  }
}
