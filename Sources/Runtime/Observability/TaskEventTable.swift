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
    /// Where `stateCounts` counts its tasks (`countNames`), decided once when interned.
    let countName: Int32
    init(_ i: Swiftray_TaskEventInfo, countName: Int32) {
      self.countName = countName
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

  /// The attempts, oldest first (eviction is first in, first out); `slot` finds one by
  /// its key. The records live in the ring, the map holds only positions: growing the
  /// map (it doubles up to `capacity`) moves small entries, not the records.
  private(set) var rows: Deque<(key: Key, record: Record)> = []
  private var slot: [Key: Int] = [:]
  /// The position `rows[0]` was given when it came (positions only grow).
  private var firstPosition = 0
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

  public var count: Int { rows.count }

  /// Attempts by their latest state and function (Prometheus `ray_tasks`): every attempt
  /// the head heard of, evicted ones too, so finished counts only grow. At most
  /// `maxCountedNames` names; later ones count under "(other)".
  public struct CountKey: Hashable, Sendable {
    public var state: TaskEventState
    public var name: String
    public var isRetry: Bool
    public init(state: TaskEventState, name: String, isRetry: Bool) { self.state = state; self.name = name; self.isRetry = isRetry }
  }
  /// Attempts by their latest state and function, as `stateCounts` gives them; the
  /// function is an index into `countNames`, so a state change hashes no string.
  private struct Counted: Hashable { var state: TaskEventState; var name: Int32; var isRetry: Bool }
  private var counts: [Counted: Int] = [:]
  /// Names `Counted` points at: 0 is "" (an attempt not yet described), then each name
  /// once, at most `maxCountedNames`; later names count under "(other)" (index 1).
  private var countNames: [String] = ["", "(other)"]
  private var countNameIndex: [String: Int32] = ["": 0]
  public static let maxCountedNames = 1000

  public var stateCounts: [CountKey: Int] {
    var out: [CountKey: Int] = [:]
    for (k, n) in counts {
      out[CountKey(state: k.state, name: countNames[Int(k.name)], isRetry: k.isRetry), default: 0] += n
    }
    return out
  }

  private mutating func countName(_ name: String) -> Int32 {
    if let i = countNameIndex[name] { return i }
    guard countNameIndex.count < Self.maxCountedNames else { return 1 }
    let i = Int32(countNames.count)
    countNames.append(name)
    countNameIndex[name] = i
    return i
  }

  private static func counted(_ r: Record, attempt: Int32) -> Counted {
    Counted(state: r.state, name: r.info?.countName ?? 0, isRetry: attempt > 0)
  }

  /// One process's batch; its events' monotonic times map to wall time through the
  /// clocks it read when it sent them.
  public mutating func apply(_ batch: Swiftray_ReportTaskEventsRequest) {
    droppedAtSources &+= batch.dropped
    let process = self.process(batch)
    let infos = batch.infos.map { intern($0) }
    // Most of a batch's events name the same few workers: the last few are kept at hand
    // (a compare of their bytes, not a parse and a lookup).
    var recent: [(worker: Data, pid: Int32, process: Process)] = []
    for e in batch.events {
      guard let task = TaskID(binary: e.taskID), let state = TaskEventState(rawValue: e.state) else { continue }
      let wall = Self.wall(e.timeNs, batch)
      let key = Key(task: task, attempt: e.attempt)
      var assigned: Process?
      if !e.workerID.isEmpty {
        if let hit = recent.first(where: { $0.pid == e.workerPid && $0.worker == e.workerID }) { assigned = hit.process } else {
          let p = self.process(worker: e.workerID, node: e.nodeID, pid: e.workerPid, isDriver: false)
          if recent.count == 8 { recent.removeFirst() }
          recent.append((e.workerID, e.workerPid, p))
          assigned = p
        }
      }
      let info = e.infoIndex > 0 && Int(e.infoIndex) <= infos.count ? infos[Int(e.infoIndex) - 1] : nil
      let end = e.endNs == 0 ? 0 : Self.wall(e.endNs, batch)
      // One lookup: an attempt already here is merged in place.
      let i: Int
      let before: Counted?
      if let found = slot[key] {
        i = found - firstPosition
        before = Self.counted(rows[i].record, attempt: key.attempt)
      } else {
        i = admit(key)
        before = nil
      }
      rows[i].record.merge(e, state: state, wall: wall, end: end, process: process, assigned: assigned, info: info)
      let after = Self.counted(rows[i].record, attempt: key.attempt)
      if before != after {
        if let before { counts[before, default: 0] -= 1 }
        counts[after, default: 0] += 1
      }
    }
  }

  /// Maps a sender's monotonic reading to wall time (a reading from the future, as a
  /// bad peer might send, maps to the batch's own time).
  static func wall(_ t: UInt64, _ b: Swiftray_ReportTaskEventsRequest) -> UInt64 {
    let back = b.monotonicNowNs >= t ? b.monotonicNowNs - t : 0
    return b.wallNowNs >= back ? b.wallNowNs - back : 0
  }

  /// A new attempt's empty record (evicting the oldest past `capacity`); its index in
  /// `rows`.
  private mutating func admit(_ key: Key) -> Int {
    while rows.count >= capacity, let old = rows.popFirst() {
      slot[old.key] = nil
      firstPosition += 1
      evicted &+= 1
    }
    slot[key] = firstPosition + rows.count
    rows.append((key, Record()))
    return rows.count - 1
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
    let made = Info(i, countName: countName(i.name))
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
