import DequeModule
import Foundation

/// The head's submitted jobs (Ray Jobs): each an entrypoint the head runs as a
/// supervised driver process, from PENDING (its environment being set up) through
/// RUNNING to SUCCEEDED, FAILED or STOPPED. One `mutating func` per event, each
/// returning what the shell must do; records are JSON (`Record`), stored through
/// `ControlStorage` so that on Redis they outlive the head.
///
/// Threading: a value type under the job manager's lock; time is passed in.
public struct JobSubmissions: Sendable {
  public enum Status: String, Codable, Sendable {
    case pending = "PENDING", running = "RUNNING", stopped = "STOPPED", succeeded = "SUCCEEDED", failed = "FAILED"
    public var isTerminal: Bool { self == .stopped || self == .succeeded || self == .failed }
  }

  /// Ray's `JobDetails` fields, as its REST API names them.
  public struct Record: Codable, Sendable, Equatable {
    public var submission_id: String
    public var entrypoint: String
    public var status: Status = .pending
    public var message = "Job has not started yet."
    public var error_type: String?
    /// Wall-clock milliseconds (0: not yet).
    public var start_time: Int64 = 0
    public var end_time: Int64?
    public var metadata: [String: String] = [:]
    /// The language layer's canonical runtime_env JSON ("" none).
    public var runtime_env: String = ""
    public var driver_exit_code: Int32?
    public var entrypoint_num_cpus: Double = 0
    public var entrypoint_num_gpus: Double = 0
    public var entrypoint_resources: [String: Double] = [:]
    /// Bytes (Ray's `entrypoint_memory`); nil: none.
    public var entrypoint_memory: Double?
    /// Set by the head: whether a stop was asked for (its end is then STOPPED).
    public var stop_requested = false
    public var driver_pid: Int32?

    public init(submission_id: String, entrypoint: String) {
      self.submission_id = submission_id; self.entrypoint = entrypoint
    }

    /// What the entrypoint holds on its node while it runs (Ray: its supervisor actor's
    /// resources), in the scheduler's names.
    public var reservation: ResourceSet {
      var units = entrypoint_resources
      units[ResourceSet.cpu] = entrypoint_num_cpus
      units[ResourceSet.gpu] = entrypoint_num_gpus
      units[ResourceSet.memory] = entrypoint_memory ?? 0
      return ResourceSet(units: units)
    }
  }

  public enum Refusal: Error, Equatable, Sendable {
    case badSubmission(String)
    case exists(String)
    case notFound(String)
    case notTerminal(String)
    case full
  }

  /// What the shell does after an event.
  public enum Action: Equatable, Sendable {
    case persist(Record)
    case erase(String)
    /// Set up the job's environment, then start its driver (`driverStarted`/`driverFailedToStart`).
    case launch(Record)
    /// Signal the driver (SIGTERM; SIGKILL after the grace period if it lives on).
    case stop(pid: Int32)
    /// Stop the launch of a job not started yet (its wait for resources, its set-up).
    case cancelLaunch(String)
  }

  public static let maxJobs = 10_000
  public static let maxEntrypointBytes = 64 << 10
  public static let maxMetadataBytes = 16 << 10
  public static let maxEntrypointResources = 64
  public static let maxSubmissionIDBytes = 256

  public private(set) var records: [String: Record] = [:]
  /// Submission ids oldest first: past `maxJobs` the oldest finished one is forgotten.
  private var order: Deque<String> = []

  public init() {}

  /// Records read back from storage at start: a job that was pending or running when
  /// the head went down lost its driver with it (drivers are the head's children).
  public mutating func restored(_ stored: [Record], now: Int64) -> [Action] {
    var actions: [Action] = []
    for var r in stored.sorted(by: { $0.start_time < $1.start_time }) where records[r.submission_id] == nil {
      if !r.status.isTerminal {
        r.status = .failed
        r.error_type = "JOB_SUPERVISOR_ACTOR_DIED"
        r.message = "The head restarted while the job ran; its driver ended with the old head."
        r.end_time = now
        actions.append(.persist(r))
      }
      records[r.submission_id] = r
      order.append(r.submission_id)
    }
    return actions
  }

  /// A job was submitted. Ids are the user's or made up (`raysubmit_<16 chars>`).
  public mutating func submitted(_ record: Record, now: Int64) throws(Refusal) -> [Action] {
    var r = record
    guard !r.entrypoint.trimmingCharacters(in: .whitespaces).isEmpty, r.entrypoint.utf8.count <= Self.maxEntrypointBytes,
          !r.entrypoint.contains("\0") else {
      throw .badSubmission("entrypoint must be a non-empty shell command of at most \(Self.maxEntrypointBytes) bytes")
    }
    guard !r.submission_id.isEmpty, r.submission_id.utf8.count <= Self.maxSubmissionIDBytes,
          r.submission_id.allSatisfy({ $0.isLetter || $0.isNumber || "-_.:".contains($0) }) else {
      throw .badSubmission("submission_id must be 1-\(Self.maxSubmissionIDBytes) letters, digits, '-', '_', '.' or ':'")
    }
    guard r.metadata.reduce(0, { $0 + $1.key.utf8.count + $1.value.utf8.count }) <= Self.maxMetadataBytes else {
      throw .badSubmission("metadata may hold at most \(Self.maxMetadataBytes) bytes")
    }
    guard r.entrypoint_resources.count <= Self.maxEntrypointResources else {
      throw .badSubmission("entrypoint_resources may name at most \(Self.maxEntrypointResources) resources")
    }
    let named = r.entrypoint_resources.merging(["num_cpus": r.entrypoint_num_cpus, "num_gpus": r.entrypoint_num_gpus], uniquingKeysWith: { a, _ in a })
    for (name, q) in named where !(q >= 0 && q <= 1e9) || name.isEmpty || name.utf8.count > 256 {
      throw .badSubmission("entrypoint resource \(name.prefix(256)) must be a number from 0 to 1e9, got \(q)")
    }
    for name in [ResourceSet.cpu, ResourceSet.gpu, ResourceSet.memory] where r.entrypoint_resources[name] != nil {
      throw .badSubmission("entrypoint_resources may not name \(name): use entrypoint_num_cpus, entrypoint_num_gpus or entrypoint_memory")
    }
    if let m = r.entrypoint_memory, !(m >= 0 && m <= 1e15) {
      throw .badSubmission("entrypoint_memory must be a number of bytes from 0 to 1e15, got \(m)")
    }
    guard records[r.submission_id] == nil else {
      throw .exists("Job with submission_id \(r.submission_id) already exists. Please use a different submission_id.")
    }
    var actions: [Action] = []
    if records.count >= Self.maxJobs {
      guard let oldest = order.first(where: { records[$0]?.status.isTerminal == true }) else { throw .full }
      records[oldest] = nil
      order.removeAll { $0 == oldest }
      actions.append(.erase(oldest))
    }
    r.status = .pending
    r.message = "Job has not started yet. It may be waiting for resources (CPUs, GPUs, memory, custom resources) to become available. It may be waiting for the runtime environment to be set up."
    r.start_time = now
    r.end_time = nil
    r.stop_requested = false
    records[r.submission_id] = r
    order.append(r.submission_id)
    return actions + [.persist(r), .launch(r)]
  }

  /// Its driver process started.
  public mutating func driverStarted(_ id: String, pid: Int32) -> [Action] {
    guard var r = records[id], r.status == .pending else { return [] }
    r.status = .running
    r.driver_pid = pid
    r.message = "Job is currently running."
    records[id] = r
    // Stopped while it was being set up: it ends now, and its end says STOPPED.
    return r.stop_requested ? [.persist(r), .stop(pid: pid)] : [.persist(r)]
  }

  /// Its environment could not be set up, or its process not started.
  public mutating func driverFailedToStart(_ id: String, why: String, runtimeEnv: Bool, now: Int64) -> [Action] {
    guard var r = records[id], r.status == .pending else { return [] }
    r.status = r.stop_requested ? .stopped : .failed
    r.error_type = runtimeEnv ? "RUNTIME_ENV_SETUP_FAILED" : "JOB_ENTRYPOINT_COMMAND_START_ERROR"
    r.message = r.stop_requested ? "Job was intentionally stopped." : why
    r.end_time = now
    records[id] = r
    return [.persist(r)]
  }

  /// Its driver process ended (`signal` > 0: killed by it).
  public mutating func ended(_ id: String, pid: Int32, exitCode: Int32?, signal: Int32, now: Int64) -> [Action] {
    guard var r = records[id], !r.status.isTerminal else { return [] }
    r.end_time = now
    r.driver_exit_code = signal > 0 ? -signal : exitCode
    if r.stop_requested {
      r.status = .stopped
      r.message = "Job was intentionally stopped."
    } else if signal == 0 && exitCode == 0 {
      r.status = .succeeded
      r.message = "Job finished successfully."
    } else {
      r.status = .failed
      r.error_type = "JOB_ENTRYPOINT_COMMAND_ERROR"
      r.message = signal > 0 ? "Job entrypoint command was killed by signal \(signal)."
        : "Job entrypoint command failed with exit code \(exitCode.map(String.init) ?? "unknown")."
    }
    records[id] = r
    return [.persist(r)]
  }

  /// `stop`: true when the job was still going (its driver is signalled once started).
  public mutating func stopRequested(_ id: String) throws(Refusal) -> (stopping: Bool, actions: [Action]) {
    guard var r = records[id] else { throw .notFound(id) }
    guard !r.status.isTerminal else { return (false, []) }
    r.stop_requested = true
    records[id] = r
    if let pid = r.driver_pid, r.status == .running { return (true, [.persist(r), .stop(pid: pid)]) }
    return (true, [.persist(r), .cancelLaunch(id)])
  }

  /// `delete`: only a job that ended.
  public mutating func deleted(_ id: String) throws(Refusal) -> [Action] {
    guard let r = records[id] else { throw .notFound(id) }
    guard r.status.isTerminal else {
      throw .notTerminal("Attempted to delete job with submission_id \(id), but it is in a non-terminal state \(r.status.rawValue). Stop it first.")
    }
    records[id] = nil
    order.removeAll { $0 == id }
    return [.erase(id)]
  }

  /// Jobs in submission order.
  public var all: [Record] { order.compactMap { records[$0] } }
}
