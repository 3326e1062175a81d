import Foundation
import RuntimeProto

/// The worker processes of one node as its NodeManager knows them: by id and by pid,
/// their endpoints once registered, why one was killed, the tail of each one's stderr,
/// how recent ones ended (bounded, for owners asking why their task's worker died), and
/// the crash-loop policy: when workers keep dying before they register (a broken
/// environment), the node stops starting them and fails what waits for one.
///
/// Threading: a value type, owned by the NodeManager under its lock.
public struct WorkerPool: Sendable {
  public struct Process: Sendable, Equatable {
    public var id: WorkerID
    /// 0 while its launch is under way (the launcher has not said the pid yet).
    public var pid: Int32
    public var endpoint = ""
    public var localEndpoint = ""
    /// Set when the node killed it on purpose (its exit is then expected).
    public var killReason: String?
    /// Killed before its pid was known: signalled as soon as it is.
    var killOnSpawn = false
  }

  /// What to do once a launched worker's pid is known (`spawned`).
  public enum AfterSpawn: Sendable, Equatable {
    case none
    /// It was killed while its launch was under way: signal it now.
    case kill(Int32)
    /// It already ended (its exit was reported before its launch returned): report
    /// the exit with `exited` now.
    case ended(exitCode: Int32, signal: Int32)
  }

  /// What a worker's exit means.
  public struct Exit: Sendable {
    public var id: WorkerID
    public var info: Swiftray_WorkerExitInfo
    /// It died before it registered: how (logged).
    public var failedStart: String?
    /// Workers keep failing to start: stop starting them (`LeaseQueue.workersFailToStart`).
    public var stopStarting: Bool
  }

  public static let maxExitsKept = 1000
  public static let stderrTailLines = 20
  /// Consecutive deaths before registering that count as a crash loop.
  public static let crashLoopLimit = 3

  public private(set) var processes: [WorkerID: Process] = [:]
  var byPid: [Int32: WorkerID] = [:]
  var exits = RecentMap<WorkerID, Swiftray_WorkerExitInfo>(capacity: maxExitsKept)
  /// Exits of pids not known yet, by pid: a worker can end (or its exit be seen) before
  /// the launcher returns its pid. Claimed by `spawned`; bounded (oldest dropped).
  var earlyExits = RecentMap<Int32, EarlyExit>(capacity: maxEarlyExits)
  struct EarlyExit: Sendable { var exitCode: Int32; var signal: Int32 }
  public static let maxEarlyExits = 256
  public var earlyExitCount: Int { earlyExits.count }
  var stderrTail: [Int32: [String]] = [:]
  var consecutiveStartFailures = 0
  /// Drivers connected to this node, by process (one process may have been several
  /// drivers, `init` after `shutdown`): when the process ends each is reported like a
  /// dead worker, since it owned actors and objects.
  var drivers: [Int32: [WorkerID]] = [:]
  /// Driver ids kept per process (a process that connects again and again is bounded).
  public static let driversKeptPerProcess = 64

  public init() {}

  /// Drivers that registered here, with where they answer (the state API asks them
  /// for their objects); bounded, the oldest forgotten first.
  var driverEndpoints = RecentMap<WorkerID, Swiftray_WorkerProcess>(capacity: maxDriversListed)
  public static let maxDriversListed = 1024

  /// A driver registered (`endpoint`: its data-plane address).
  public mutating func driverRegistered(_ id: WorkerID, pid: Int32, endpoint: String) {
    driverEndpoints.insert(.with { $0.workerID = Data(id.binary); $0.pid = pid; $0.isDriver = true; $0.registered = true
                                   $0.endpoint = endpoint }, for: id)
  }

  /// Its live workers and drivers and how recent workers ended, for `list workers`.
  public var listing: (live: [Swiftray_WorkerProcess], exits: [Swiftray_WorkerExitInfo]) {
    var live = processes.values.map { p in
      Swiftray_WorkerProcess.with { $0.workerID = Data(p.id.binary); $0.pid = p.pid; $0.registered = !p.endpoint.isEmpty
                                    $0.endpoint = p.endpoint }
    }
    live += driverEndpoints.values
    return (live, exits.values)
  }

  /// A driver connected. True for the first driver of its process: watch that process.
  /// A pid that cannot be a process (≤ 0, from a confused or hostile peer) is not kept.
  public mutating func driverConnected(_ id: WorkerID, pid: Int32) -> Bool {
    guard pid > 0 else { return false }
    var ids = drivers[pid] ?? []
    let first = ids.isEmpty
    if !ids.contains(id) { ids.append(id) }
    if ids.count > Self.driversKeptPerProcess { ids.removeFirst(ids.count - Self.driversKeptPerProcess) }
    drivers[pid] = ids
    return first
  }

  /// A driver's process ended: the drivers it was (their leases here go, their exits
  /// are reported).
  public mutating func driverProcessEnded(pid: Int32) -> [WorkerID] {
    let ids = drivers.removeValue(forKey: pid) ?? []
    for id in ids { _ = driverEndpoints.remove(id) }
    return ids
  }

  public var driverCount: Int { drivers.values.reduce(0) { $0 + $1.count } }

  /// Worker processes (those whose launch has returned a pid).
  public var count: Int { processes.values.reduce(0) { $0 + ($1.pid > 0 ? 1 : 0) } }
  public var pids: [Int32] { processes.values.map(\.pid).filter { $0 > 0 }.sorted() }
  public func pid(of id: WorkerID) -> Int32? { processes[id].flatMap { $0.pid > 0 ? $0.pid : nil } }
  public func process(_ id: WorkerID) -> Process? { processes[id] }

  /// The node is starting worker `id`: known from now on, before its pid, for the worker
  /// may register before the launcher returns.
  public mutating func launching(_ id: WorkerID) {
    processes[id] = Process(id: id, pid: 0)
  }

  /// The launch failed: no process was made. True when launches keep failing (a crash
  /// loop, as workers dying before they register): stop starting them.
  public mutating func launchFailed(_ id: WorkerID) -> Bool {
    guard processes[id]?.pid == 0 else { return false }
    processes[id] = nil
    return startFailed()
  }

  /// One more worker failed to start (its launch, or itself before registering). True
  /// when that makes a crash loop: stop starting them (the count starts again).
  private mutating func startFailed() -> Bool {
    consecutiveStartFailures += 1
    guard consecutiveStartFailures >= Self.crashLoopLimit else { return false }
    consecutiveStartFailures = 0
    return true
  }

  /// The launcher returned the worker's pid.
  @discardableResult
  public mutating func spawned(_ id: WorkerID, pid: Int32) -> AfterSpawn {
    guard pid > 0 else { return .none }
    var p = processes[id] ?? Process(id: id, pid: pid)
    p.pid = pid
    processes[id] = p
    byPid[pid] = id
    if let early = earlyExits.remove(pid) {
      return .ended(exitCode: early.exitCode, signal: early.signal)
    }
    return p.killOnSpawn ? .kill(pid) : .none
  }

  /// The worker connected and said where it listens. False for one this node did not start.
  public mutating func registered(_ id: WorkerID, endpoint: String, localEndpoint: String) -> Bool {
    guard processes[id] != nil else { return false }
    processes[id]?.endpoint = endpoint
    processes[id]?.localEndpoint = localEndpoint
    consecutiveStartFailures = 0
    return true
  }

  /// The node kills it on purpose; returns its pid.
  public mutating func killing(_ id: WorkerID, reason: String) -> Int32? {
    processes[id]?.killReason = reason
    return kill(id)
  }

  /// The pid to signal to kill worker `id`; nil when it is unknown, or not known yet
  /// (then `spawned` says to kill it).
  public mutating func kill(_ id: WorkerID) -> Int32? {
    guard let p = processes[id] else { return nil }
    if p.pid > 0 { return p.pid }
    processes[id]?.killOnSpawn = true
    return nil
  }

  public mutating func output(pid: Int32, isErr: Bool, lines: [String]) {
    guard isErr else { return }
    var tail = stderrTail[pid] ?? []
    tail.append(contentsOf: lines.suffix(Self.stderrTailLines))
    stderrTail[pid] = Array(tail.suffix(Self.stderrTailLines))
  }

  /// How a worker that exited ended, if it ended recently.
  public func exitInfo(_ id: WorkerID) -> Swiftray_WorkerExitInfo? { exits[id] }

  /// Process `pid` ended; nil when it was not a worker of this node.
  /// A pid not known yet is kept (bounded) for `spawned` to claim.
  public mutating func exited(pid: Int32, exitCode: Int32, signal: Int32, node: NodeID, shuttingDown: Bool) -> Exit? {
    guard let id = byPid.removeValue(forKey: pid), let proc = processes.removeValue(forKey: id) else {
      if pid > 0 { earlyExits.insert(EarlyExit(exitCode: exitCode, signal: signal), for: pid) }
      return nil
    }
    var info = Swiftray_WorkerExitInfo()
    info.workerID = Data(id.binary)
    info.pid = pid
    info.exitCode = exitCode
    info.signal = signal
    info.nodeID = Data(node.binary)
    info.intended = proc.killReason != nil || shuttingDown
    let how = signal != 0 ? "was killed by signal \(signal) (\(signalName(signal)))"
      : exitCode >= 0 ? "exited with code \(exitCode)"
      : "ended (how is unknown: the node's fork server, its parent, died before it)"
    var detail = "worker \(id.hex.prefix(12)) (pid \(pid)) on node \(node.hex.prefix(12)) \(how)"
    if let r = proc.killReason { detail += "; \(r)" }
    let tail = stderrTail.removeValue(forKey: pid) ?? []
    var failedStart: String?
    // A worker that cannot start at all (broken environment) must not respawn forever.
    var stop = false
    if proc.endpoint.isEmpty {
      detail += " before it registered"
      if !tail.isEmpty { detail += "; its last output:\n  " + tail.suffix(8).joined(separator: "\n  ") }
      // Killed from outside (SIGKILL, SIGTERM: a user, a chaos test, the OOM killer)
      // says nothing about the environment: only other ends count as a crash loop.
      if !shuttingDown && signal != SIGKILL && signal != SIGTERM {
        failedStart = detail
        stop = startFailed()
      }
    }
    info.detail = detail
    exits.insert(info, for: id)
    return Exit(id: id, info: info, failedStart: failedStart, stopStarting: stop)
  }
}

/// A signal's name, for how a worker died.
func signalName(_ s: Int32) -> String {
  switch s {
  case SIGKILL: return "SIGKILL"
  case SIGTERM: return "SIGTERM"
  case SIGSEGV: return "SIGSEGV"
  case SIGABRT: return "SIGABRT"
  case SIGINT: return "SIGINT"
  case SIGBUS: return "SIGBUS"
  case SIGFPE: return "SIGFPE"
  case SIGILL: return "SIGILL"
  default: return "signal \(s)"
  }
}
