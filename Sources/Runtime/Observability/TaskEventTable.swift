import DequeModule
import Foundation
import RuntimeProto

/// The head's table of task attempts, built from the event batches of every owner and
/// executor (DESIGN §13): the state API, `summary` and the timeline read it. Bounded:
/// past `capacity` attempts the oldest are evicted (counted), so the newest are kept.
///
/// Threading: a value type under the ControlService's events lock; queries copy out
/// only the rows they return.
public struct TaskEventTable: Sendable {
  /// What is the same for many tasks (one function, one actor's method): shared.
  final class Info: Sendable {
    let name: String, funcOrClassName: String, type: TaskEventType, job: Data, actor: Data
    let resources: [(String, Double)], placementGroup: Data
    init(_ i: Swiftray_TaskEventInfo) {
      name = i.name; funcOrClassName = i.funcOrClassName; type = TaskEventType(rawValue: i.type) ?? .normalTask
      job = i.jobID; actor = i.actorID; placementGroup = i.placementGroupID
      resources = ResourceSet(proto: i.requiredResources).asUnits.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }
  }

  /// A process that sent events: the worker an attempt ran on. Shared by its attempts.
  final class Process: Sendable {
    let worker: UniqueID, node: UniqueID, pid: Int32, isDriver: Bool
    init(worker: UniqueID, node: UniqueID, pid: Int32, isDriver: Bool) {
      self.worker = worker; self.node = node; self.pid = pid; self.isDriver = isDriver
    }
  }

  final class Failure: Sendable {
    let type: String, message: String
    init(type: String, message: String) { self.type = type; self.message = message }
  }

  struct Key: Hashable { var task: TaskID; var attempt: Int32 }

  /// One attempt, in about 200 bytes: ids inline, what many share by reference.
  struct Record {
    var info: Info?
    var parent: TaskID?
    var state: TaskEventState = .pendingArgsAvail
    /// The owner decided the end (its word beats the executor's).
    var ownerEnded = false
    /// Where it was sent (the owner's word) and where it ran (the executor's).
    var assigned: Process?, executor: Process?
    var failure: Failure?
    /// Wall-clock nanoseconds (0: not yet).
    var created: UInt64 = 0, started: UInt64 = 0, ended: UInt64 = 0
    var argBytes: UInt64 = 0, returnBytes: UInt64 = 0
  }

  private(set) var records: [Key: Record] = [:]
  private(set) var order: Deque<Key> = []
  /// What tells one `Info` from another, cheaper to hash than the message.
  struct InfoKey: Hashable {
    var name: String, funcOrClassName: String, type: Int32, job: Data, actor: Data, placementGroup: Data
    var resources: [String: Int64]
    init(_ i: Swiftray_TaskEventInfo) {
      name = i.name; funcOrClassName = i.funcOrClassName; type = i.type; job = i.jobID; actor = i.actorID
      placementGroup = i.placementGroupID; resources = i.requiredResources.quantities
    }
  }

  private var infos: [InfoKey: Info] = [:]
  private var processes: [UniqueID: Process] = [:]
  public let capacity: Int
  /// Attempts evicted to keep the newest, and events the processes reported dropping.
  public private(set) var evicted: UInt64 = 0
  public private(set) var droppedAtSources: UInt64 = 0

  public init(capacity: Int) { self.capacity = max(capacity, 1) }

  public var count: Int { records.count }

  /// Attempts by their latest state and function (Prometheus `ray_tasks`): every attempt
  /// the head heard of, evicted ones too, so finished counts only grow. At most
  /// `maxCountedNames` names; later ones count under "(other)".
  public struct CountKey: Hashable, Sendable {
    public var state: TaskEventState
    public var name: String
    public var isRetry: Bool
    public init(state: TaskEventState, name: String, isRetry: Bool) { self.state = state; self.name = name; self.isRetry = isRetry }
  }
  public private(set) var stateCounts: [CountKey: Int] = [:]
  private var countedNames: Set<String> = []
  public static let maxCountedNames = 1000

  private mutating func countKey(_ r: Record, attempt: Int32) -> CountKey {
    var name = r.info?.name ?? ""
    if !countedNames.contains(name) {
      if countedNames.count < Self.maxCountedNames { countedNames.insert(name) } else { name = "(other)" }
    }
    return CountKey(state: r.state, name: name, isRetry: attempt > 0)
  }

  /// One process's batch; its events' monotonic times map to wall time through the
  /// clocks it read when it sent them.
  public mutating func apply(_ batch: Swiftray_ReportTaskEventsRequest) {
    droppedAtSources &+= batch.dropped
    let process = self.process(batch)
    let infos = batch.infos.map { intern($0) }
    for e in batch.events {
      guard let task = TaskID(binary: e.taskID), let state = TaskEventState(rawValue: e.state) else { continue }
      let wall = Self.wall(e.timeNs, batch)
      let key = Key(task: task, attempt: e.attempt)
      let existing = records[key]
      let before: CountKey? = if let existing { countKey(existing, attempt: key.attempt) } else { nil }
      if before == nil { admit(key) }
      let assigned = e.workerID.isEmpty ? nil : self.process(worker: e.workerID, node: e.nodeID, pid: e.workerPid, isDriver: false)
      records[key]!.merge(e, state: state, wall: wall, end: e.endNs == 0 ? 0 : Self.wall(e.endNs, batch),
                          process: process, assigned: assigned,
                          info: e.infoIndex > 0 && Int(e.infoIndex) <= infos.count ? infos[Int(e.infoIndex) - 1] : nil)
      let merged = records[key]!
      let after = countKey(merged, attempt: key.attempt)
      if before != after {
        if let before { stateCounts[before, default: 0] -= 1 }
        stateCounts[after, default: 0] += 1
      }
    }
  }

  /// Maps a sender's monotonic reading to wall time (a reading from the future, as a
  /// bad peer might send, maps to the batch's own time).
  static func wall(_ t: UInt64, _ b: Swiftray_ReportTaskEventsRequest) -> UInt64 {
    let back = b.monotonicNowNs >= t ? b.monotonicNowNs - t : 0
    return b.wallNowNs >= back ? b.wallNowNs - back : 0
  }

  private mutating func admit(_ key: Key) {
    while records.count >= capacity, let old = order.popFirst() {
      if records.removeValue(forKey: old) != nil { evicted &+= 1 }
    }
    records[key] = Record()
    order.append(key)
  }

  /// The batch's sender, shared by the attempts it ran (the cache is emptied when it
  /// grows past the table's size; records keep theirs).
  private mutating func process(_ b: Swiftray_ReportTaskEventsRequest) -> Process {
    process(worker: b.workerID, node: b.nodeID, pid: b.pid, isDriver: b.isDriver)
  }

  /// A worker as its batches or an owner's events name it.
  private mutating func process(worker w: Data, node: Data, pid: Int32, isDriver: Bool) -> Process {
    let worker = UniqueID(binary: w) ?? .nil_
    if let p = processes[worker], p.pid == pid { return p }
    if processes.count >= capacity { processes.removeAll(keepingCapacity: true) }
    let p = Process(worker: worker, node: UniqueID(binary: node) ?? .nil_, pid: pid, isDriver: isDriver)
    processes[worker] = p
    return p
  }

  /// Shares one `Info` among the tasks that have the same; the cache is emptied when it
  /// grows past the table's size (records keep theirs).
  private mutating func intern(_ i: Swiftray_TaskEventInfo) -> Info {
    let key = InfoKey(i)
    if let hit = infos[key] { return hit }
    if infos.count >= capacity { infos.removeAll(keepingCapacity: true) }
    let made = Info(i)
    infos[key] = made
    return made
  }
}

extension TaskEventTable.Record {
  mutating func merge(_ e: Swiftray_TaskEvent, state s: TaskEventState, wall: UInt64, end: UInt64,
                      process: TaskEventTable.Process, assigned a: TaskEventTable.Process?, info i: TaskEventTable.Info?) {
    if let i { info = i }
    if let p = TaskID(binary: e.parentTaskID) { parent = p }
    if created == 0 || (wall != 0 && wall < created) { created = wall }
    if e.fromExecutor {
      executor = process
      if started == 0 { started = wall }
      if end != 0 { ended = max(ended, end) }
      if e.argBytes > 0 { argBytes = e.argBytes }
      if e.returnBytes > 0 { returnBytes = e.returnBytes }
      // The executor's end stands until the owner's word arrives.
      if s.isTerminal, !ownerEnded {
        state = s
        if s == .failed, !e.errorType.isEmpty { failure = .init(type: e.errorType, message: e.errorMessage) }
      } else if !s.isTerminal, s > state, !state.isTerminal {
        state = s
      }
      return
    }
    if let a { assigned = a }
    if e.startWallNs > 0 {
      // The worker's own span, from its reply (wall clock already).
      started = e.startWallNs
      ended = max(e.endWallNs, e.startWallNs)
      argBytes = e.argBytes
      returnBytes = e.returnBytes
    }
    if s.isTerminal {
      state = s
      ownerEnded = true
      if ended == 0 { ended = end != 0 ? end : wall }
      failure = s == .failed ? .init(type: e.errorType, message: e.errorMessage) : nil
    } else if s > state, !state.isTerminal {
      state = s
    }
  }
}
