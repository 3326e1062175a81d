import Foundation
import GRPCCore
import Logging
import RuntimeProto

/// The head's job manager (Ray Jobs): runs each submitted entrypoint as a supervised
/// driver process on the head, in the job's runtime environment (set up by the head's
/// node, as a task's would be), has what it prints written to `<session>/logs/job-driver-<id>.log`,
/// stops it on request, and keeps the records in the ControlService's storage. The
/// decisions are `JobSubmissions`'; this performs them.
///
/// Threading: any thread or task; its state is under one lock, never held across I/O.
/// Exits come on its monitor's thread and take the lock briefly.
public final class JobManager: Sendable {
  public static let table = "job_submissions"
  /// How long a stopped driver has after SIGTERM before SIGKILL (Ray: 3 s).
  public static let stopGrace: Duration = .seconds(3)
  /// The most of a job's log one answer carries (its end).
  public static let maxLogAnswerBytes = 16 << 20

  struct State {
    var jobs = JobSubmissions()
    var byPid: [Int32: String] = [:]
    /// Ends seen before the launch said the pid (a driver that exits at once), claimed
    /// by the launch; bounded.
    var earlyExits = RecentMap<Int32, ProcessMonitor.ExitStatus>(capacity: 256)
    /// Launches not yet started (cancelled by a stop), by job; bounded by the job table
    /// (an erased job's goes too).
    var launches: [String: Task<Void, Never>] = [:]
    /// The lease each running job's entrypoint holds its resources with, by job.
    var reservations: [String: UInt64] = [:]
  }
  let state = Locked(State())
  let storage: any ControlStorage
  /// Record writes in the order they were decided (a job that ends at once must not be
  /// stored as running after its end).
  let writer: StorageWriter
  let node: NodeManager
  let logsDir: String
  let driverEnvironment: [String: String]
  let monitor = Locked<ProcessMonitor?>(nil)
  let clock: @Sendable () -> Int64
  /// Who the reservations' leases are for (the node's lease table names an owner).
  let owner = WorkerID.random()

  /// `address`: what a driver joins (`SWIFTRAY_ADDRESS`, the head node's session);
  /// `environment`: the drivers' base environment (the head's own).
  public init(storage: any ControlStorage, node: NodeManager, address: String, environment: [String: String],
              clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }) {
    self.storage = storage; self.node = node; self.clock = clock
    let log = Logger(label: "swiftray.jobs")
    writer = StorageWriter(storage) { table, error in log.error("jobs/storage-failed", metadata: ["table": "\(table)", "error": "\(error)"]) }
    logsDir = node.options.sessionDir + "/logs"
    var env = environment
    env["SWIFTRAY_ADDRESS"] = address
    env["RAY_ADDRESS"] = address
    env["PYTHONUNBUFFERED"] = "1"
    driverEnvironment = env
  }

  /// Reads the records back (a head restarted on Redis keeps its jobs).
  public func restore() async throws {
    let stored = try await storage.getAll(Self.table).values.compactMap { try? JSONDecoder().decode(JobSubmissions.Record.self, from: $0) }
    let now = clock()
    perform(decide { $0.jobs.restored(stored, now: now) })
  }

  // MARK: requests

  public func submit(_ record: JobSubmissions.Record) throws(JobSubmissions.Refusal) -> String {
    let now = clock()
    let actions = try decide { s throws(JobSubmissions.Refusal) in try s.jobs.submitted(record, now: now) }
    perform(actions)
    return record.submission_id
  }

  public func stop(_ id: String) throws(JobSubmissions.Refusal) -> Bool {
    var stopping = false
    let actions = try decide { s throws(JobSubmissions.Refusal) in
      let (going, actions) = try s.jobs.stopRequested(id)
      stopping = going
      return actions
    }
    perform(actions)
    return stopping
  }

  public func delete(_ id: String) throws(JobSubmissions.Refusal) {
    let actions = try decide { s throws(JobSubmissions.Refusal) in try s.jobs.deleted(id) }
    perform(actions)
    try? FileManager.default.removeItem(atPath: logPath(id))
  }

  public func job(_ id: String) -> JobSubmissions.Record? { state.withLock { $0.jobs.records[id] } }
  public var jobs: [JobSubmissions.Record] { state.withLock { $0.jobs.all } }

  func logPath(_ id: String) -> String { "\(logsDir)/job-driver-\(id).log" }

  /// What the job printed from byte `offset` on (at most `maxLogAnswerBytes`, its end),
  /// and where it ends. Blocking file reads: call off the event loops.
  public func logs(_ id: String, from offset: Int) async -> (text: String, end: Int)? {
    guard job(id) != nil else { return nil }
    let path = logPath(id)
    return try? await NodeLogs.offLoop {
      guard let h = FileHandle(forReadingAtPath: path) else { return ("", 0) }
      defer { try? h.close() }
      let end = Int(try h.seekToEnd())
      let start = max(min(max(0, offset), end), end - Self.maxLogAnswerBytes)
      try h.seek(toOffset: UInt64(start))
      let data = try h.readToEnd() ?? Data()
      return (String(decoding: data, as: UTF8.self), start + data.count)
    }
  }

  // MARK: actions

  /// Runs a decision under the lock. Its records are queued for storage in the same
  /// critical section (an enqueue, never a call out), so they are stored in the order
  /// they were decided; the rest of its actions are for `perform`, after the lock.
  func decide<E: Error>(_ body: (inout State) throws(E) -> [JobSubmissions.Action]) throws(E) -> [JobSubmissions.Action] {
    try state.withLock { s throws(E) in
      let actions = try body(&s)
      for a in actions {
        switch a {
        case .persist(let r):
          if let data = try? JSONEncoder().encode(r) {
            writer.write(Self.table, Data(r.submission_id.utf8), data)  // lock-ok: an enqueue (StorageWriter.write), in the order of the decisions
          }
        case .erase(let id):
          writer.erase(Self.table, Data(id.utf8))  // lock-ok: an enqueue (StorageWriter.erase), in the order of the decisions
        case .launch, .stop, .cancelLaunch: break
        }
      }
      return actions
    }
  }

  /// Carries out what `decide` left: launches and stops.
  func perform(_ actions: [JobSubmissions.Action]) {
    for a in actions {
      switch a {
      case .persist(let r) where r.status.isTerminal:
        // Queued by `decide`; a job that ended gives its entrypoint's resources back.
        releaseReservation(of: r.submission_id)
      case .persist:
        break  // queued by `decide`
      case .erase(let id):
        state.withLock { _ = $0.launches.removeValue(forKey: id) }
      case .launch(let r):
        let task = Task { await launch(r) }
        state.withLock { $0.launches[r.submission_id] = task }
      case .cancelLaunch(let id):
        state.withLock { $0.launches[id] }?.cancel()
      case .stop(let pid):
        signalGroup(pid, SIGTERM)
        Task { [weak self] in
          try? await Task.sleep(for: Self.stopGrace)
          self?.signalGroup(pid, SIGKILL)
        }
      }
    }
  }

  func signalGroup(_ pid: Int32, _ sig: Int32) {
    // The driver leads a process group of its own (the monitor spawns every child so):
    // the entrypoint's shell and whatever it started go with it.
    guard state.withLock({ $0.byPid[pid] != nil }) else { return }
    kill(-pid, sig)
  }

  func processMonitor() -> ProcessMonitor {
    monitor.withLock { m in
      if let m { return m }
      let made = ProcessMonitor(
        onOutput: { _, _, _ in },  // drivers write their own log files (`supervisorScript`)
        onExit: { [weak self] status in self?.exited(status) })
      m = made
      return made
    }
  }

  /// Holds the job's entrypoint resources on the head's node, sets its environment up
  /// there, then starts its entrypoint.
  func launch(_ r: JobSubmissions.Record) async {
    let id = r.submission_id
    defer { state.withLock { _ = $0.launches.removeValue(forKey: id) } }
    let needs = r.reservation
    if !needs.isEmpty {
      switch await reserve(needs, for: id) {
      case .failure(let e):
        return perform(decide { $0.jobs.driverFailedToStart(id, why: e.why, runtimeEnv: false, now: clock()) })
      case .success(let lease):
        // Ended meanwhile (stopped): the lease goes back at once.
        let kept = state.withLock { s in
          guard s.jobs.records[id]?.status == .pending, s.jobs.records[id]?.stop_requested == false else { return false }
          s.reservations[id] = lease
          return true
        }
        if !kept {
          await returnLease(lease)
          return perform(decide { $0.jobs.driverFailedToStart(id, why: "stopped before it started", runtimeEnv: false, now: clock()) })
        }
      }
    }
    var env = driverEnvironment
    env["SWIFTRAY_SUBMISSION_ID"] = id
    var cwd: String?
    do {
      if let runtimeEnv = try RuntimeEnv.parse(r.runtime_env) {
        env["SWIFTRAY_JOB_RUNTIME_ENV"] = runtimeEnv.json
        switch await node.runtimeEnvAgent().setUp(runtimeEnv, now: { DispatchTime.now().uptimeNanoseconds }) {
        case .failure(let e):
          return perform(decide { $0.jobs.driverFailedToStart(id, why: "runtime_env setup failed: \(e.message)", runtimeEnv: true, now: clock()) })
        case .success(let context):
          cwd = Self.apply(context, to: &env)
        }
      }
    } catch {
      return perform(decide { $0.jobs.driverFailedToStart(id, why: "bad runtime_env: \(error.message)", runtimeEnv: true, now: clock()) })
    }
    do {
      try FileManager.default.createDirectory(atPath: logsDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    } catch {
      return perform(decide { $0.jobs.driverFailedToStart(id, why: "cannot make \(logsDir): \(error)", runtimeEnv: false, now: clock()) })
    }
    FileManager.default.createFile(atPath: logPath(id), contents: nil, attributes: [.posixPermissions: 0o600])
    let shell = Self.supervisorScript(entrypoint: r.entrypoint, cwd: cwd, log: logPath(id))
    let m = processMonitor()
    let result: Result<Int32, SwiftrayError> = await withCheckedContinuation { c in
      m.launch(executable: "/bin/sh", arguments: ["-c", shell], environment: env) { c.resume(returning: $0) }
    }
    switch result {
    case .failure(let e):
      perform(decide { $0.jobs.driverFailedToStart(id, why: "cannot start the entrypoint: \(e.message)", runtimeEnv: false, now: clock()) })
    case .success(let pid):
      let now = clock()
      let actions = decide { s in
        s.byPid[pid] = id
        let started = s.jobs.driverStarted(id, pid: pid)
        guard let early = s.earlyExits.remove(pid) else { return started }
        s.byPid[pid] = nil
        return started.filter { if case .stop = $0 { return false } else { return true } } + Self.end(&s.jobs, id, early, now: now)
      }
      perform(actions)
    }
  }

  /// Applies a runtime environment's worker context to a driver's environment: its
  /// variables, its code on PYTHONPATH; returns its working folder.
  static func apply(_ context: String, to env: inout [String: String]) -> String? {
    guard let c = try? JSONSerialization.jsonObject(with: Data(context.utf8)) as? [String: Any] else { return nil }
    for (k, v) in c["env_vars"] as? [String: String] ?? [:] { env[k] = v }
    let paths = (c["sys_path"] as? [String] ?? []) + (c["site_dirs"] as? [String] ?? [])
    if !paths.isEmpty { env["PYTHONPATH"] = (paths + [env["PYTHONPATH"]].compactMap { $0 }).joined(separator: ":") }
    return c["cwd"] as? String
  }

  /// The shell that runs an entrypoint: in the job's working_dir (else the head's own
  /// folder), its stdin /dev/null, as the child of a shell that leads the job's process
  /// group (as every child of a `ProcessMonitor`, so `stop` reaches everything the job
  /// started) and
  /// passes on its exit status. Beside it a watcher reads the node's lifeline (the
  /// supervisor's stdin, which nothing writes): when the head dies, however it dies, the
  /// read ends and the watcher kills the whole group, so no job outlives its head.
  static func supervisorScript(entrypoint: String, cwd: String?, log: String) -> String {
    "exec 3<&0 </dev/null >>\(quoted(log)) 2>&1; " + (cwd.map { "cd \(quoted($0)) || exit 126; " } ?? "")
      + "/bin/sh -c \(quoted(entrypoint)) 3<&- & job=$!; (read _ignored <&3; kill -KILL 0) & watcher=$!; exec 3<&-; "
      + "wait $job; status=$?; kill $watcher 2>/dev/null; exit $status"
  }

  static func quoted(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

  // MARK: entrypoint resources

  /// Holds `needs` on the head's node for a job's entrypoint, as Ray's supervisor actor
  /// holds them: a lease of the node (its worker idles), waited for while the node is
  /// busy. The wait ends early when the launch's task is cancelled (a stop). Fails at
  /// once when the head's node does not have that much at all: entrypoints run there.
  func reserve(_ needs: ResourceSet, for id: String) async -> Result<UInt64, ReservationFailure> {
    let total = node.totalResources
    guard total.contains(needs) else {
      return .failure(ReservationFailure(why: "The entrypoint asks for \(needs) but the head node has \(total) in all; swiftray runs entrypoints on "
        + "the head node: ask for less, or start the head with more (swiftray start --head --num-cpus/--num-gpus/--resources)."))
    }
    var req = Swiftray_RequestWorkerLeaseRequest()
    req.leaseRequestID = UInt64.random(in: 1 ... (1 << 62))
    req.resources = needs.proto
    req.owner = .with { $0.workerID = Data(owner.binary); $0.nodeID = Data(node.options.nodeID.binary) }
    req.taskName = "entrypoint of job \(id)"
    req.grantOrReject = true  // here: the driver runs on this node
    let reply: Swiftray_RequestWorkerLeaseReply
    do {
      reply = try await node.requestWorkerLease(request: req, context: Self.inProcess(Swiftray_NodeManagerService.Method.RequestWorkerLease.descriptor))
    } catch {
      return .failure(ReservationFailure(why: "The head node refused the entrypoint's resources: \(error)"))
    }
    switch reply.status {
    case .granted: return .success(reply.leaseID)
    case .canceled: return .failure(ReservationFailure(why: "The job was stopped while it waited for its entrypoint's resources."))
    default: return .failure(ReservationFailure(why: "The head node cannot hold the entrypoint's resources \(needs): \(reply.detail)"))
    }
  }

  struct ReservationFailure: Error { var why: String }

  func releaseReservation(of id: String) {
    guard let lease = state.withLock({ $0.reservations.removeValue(forKey: id) }) else { return }
    Task { await returnLease(lease) }
  }

  func returnLease(_ lease: UInt64) async {
    _ = try? await node.returnWorkerLease(request: .with { $0.leaseID = lease; $0.ownerWorkerID = Data(owner.binary) },
                                          context: Self.inProcess(Swiftray_NodeManagerService.Method.ReturnWorkerLease.descriptor))
  }

  static func inProcess(_ method: MethodDescriptor) -> ServerContext {
    ServerContext(descriptor: method, remotePeer: "in-process:jobs", localPeer: "in-process", cancellation: .init())
  }

  // MARK: monitor callbacks

  func exited(_ status: ProcessMonitor.ExitStatus) {
    let now = clock()
    let actions = decide { s in
      guard let id = s.byPid.removeValue(forKey: status.pid) else {
        s.earlyExits.insert(status, for: status.pid)
        return []
      }
      return Self.end(&s.jobs, id, status, now: now)
    }
    perform(actions)
  }

  static func end(_ jobs: inout JobSubmissions, _ id: String, _ status: ProcessMonitor.ExitStatus, now: Int64) -> [JobSubmissions.Action] {
    let exitCode: Int32? = status.signal == 0 && status.exitCode >= 0 ? status.exitCode : nil
    return jobs.ended(id, pid: status.pid, exitCode: exitCode, signal: status.signal, now: now)
  }

  /// Stops every running driver (the head is stopping).
  public func shutdown() {
    let pids = state.withLock { Array($0.byPid.keys) }
    for p in pids { signalGroup(p, SIGTERM) }
    monitor.withLock { $0 }?.shutdown()
    writer.close()
  }
}
