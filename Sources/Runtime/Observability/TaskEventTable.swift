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

  typealias Failure = TaskEventRecord.Failure

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

  public init(capacity: Int) {
    self.capacity = max(capacity, 1)
    // Room for a full table at once (pages are touched only as rows come): growing a
    // map of this size rehashes every entry, on the path of every batch.
    let room = min(self.capacity, 1 << 20)
    slot.reserveCapacity(room)
    rows.reserveCapacity(room)
  }

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
  /// function is an index into `countNames`, and the count sits at `Counted.slot` of a
  /// flat array, so a state change hashes nothing.
  private struct Counted: Equatable {
    var state: TaskEventState; var name: Int32; var isRetry: Bool
    static let slotsPerName = 16  // states 1...6, each first or a retry
    var slot: Int { (Int(name) * 8 + Int(state.rawValue)) * 2 + (isRetry ? 1 : 0) }
  }
  private var counts: [Int] = Array(repeating: 0, count: 2 * Counted.slotsPerName)
  /// Slots ever counted: a state all of whose attempts moved on still shows, as 0.
  private var counted: [Bool] = Array(repeating: false, count: 2 * Counted.slotsPerName)
  /// Names `Counted` points at: 0 is "" (an attempt not yet described), then each name
  /// once, at most `maxCountedNames`; later names count under "(other)" (index 1).
  private var countNames: [String] = ["", "(other)"]
  private var countNameIndex: [String: Int32] = ["": 0]
  public static let maxCountedNames = 1000

  public var stateCounts: [CountKey: Int] {
    var out: [CountKey: Int] = [:]
    for (slot, n) in counts.enumerated() where counted[slot] {
      guard let state = TaskEventState(rawValue: Int32((slot / 2) % 8)) else { continue }
      let name = countNames[slot / Counted.slotsPerName]
      out[CountKey(state: state, name: name, isRetry: slot % 2 == 1), default: 0] += n
    }
    return out
  }

  private mutating func countName(_ name: String) -> Int32 {
    if let i = countNameIndex[name] { return i }
    guard countNameIndex.count < Self.maxCountedNames else { return 1 }
    let i = Int32(countNames.count)
    countNames.append(name)
    counts.append(contentsOf: repeatElement(0, count: Counted.slotsPerName))
    counted.append(contentsOf: repeatElement(false, count: Counted.slotsPerName))
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
    var recent = RecentProcesses()
    for e in batch.events {
      guard let task = TaskID(binary: e.taskID), let state = TaskEventState(rawValue: e.state) else { continue }
      let assigned = e.workerID.isEmpty ? nil : recent.process(e.workerID, pid: e.workerPid, node: e.nodeID, in: &self)
      let info = e.infoIndex > 0 && Int(e.infoIndex) <= infos.count ? infos[Int(e.infoIndex) - 1] : nil
      let change = Change(state: state, wall: Self.wall(e.timeNs, batch), end: e.endNs == 0 ? 0 : Self.wall(e.endNs, batch),
                          fromExecutor: e.fromExecutor, parent: TaskID(binary: e.parentTaskID),
                          startWallNs: e.startWallNs, endWallNs: e.endWallNs, argBytes: e.argBytes, returnBytes: e.returnBytes,
                          failure: e.errorType.isEmpty ? nil : Failure(type: e.errorType, message: e.errorMessage))
      upsert(Key(task: task, attempt: e.attempt)) { $0.merge(change, process: process, assigned: assigned, info: info) }
    }
  }

  /// A batch handed over by an owner in this same process (`init()`'s local cluster):
  /// its folded records as they are, with the batch's sender and clocks (`records`'
  /// own `dropped` and texts were bounded where they were made). No message is built
  /// or parsed, and a run of tasks sharing one description interns it once.
  public mutating func apply(_ taken: TaskEventBatch, from batch: Swiftray_ReportTaskEventsRequest) {
    let process = self.process(batch)
    var recent = RecentProcesses()
    // The batch names each description and worker once: each is made into the head's
    // own (interned) at its first use, by index.
    var described = [(info: Info, parent: TaskID?)?](repeating: nil, count: taken.summaries.count)
    var assignedAt = [Process?](repeating: nil, count: taken.workers.count)
    var last: (spec: TaskEventRecord.SpecSummary, info: Info)?
    let records = taken.records
    // By index, reading fields in place.
    for i in records.indices {
      let task = records[i].id
      var assigned: Process?
      let w = Int(records[i].worker) - 1
      if w >= 0 && w < assignedAt.count {
        if let p = assignedAt[w] { assigned = p } else {
          let worker = taken.workers[w]
          let p = recent.process(worker.workerID, pid: worker.pid, node: worker.nodeID, in: &self)
          assignedAt[w] = p
          assigned = p
        }
      }
      var info: Info?
      var parent: TaskID?
      let k = Int(records[i].summary) - 1
      if k >= 0 && k < described.count {
        if let d = described[k] { (info, parent) = d } else {
          // Consecutive descriptions of one run are equal: interned once.
          let spec = taken.summaries[k]
          let made = last.flatMap { $0.spec.describesSame(as: spec) ? $0.info : nil } ?? intern(spec.info)
          last = (spec, made)
          parent = TaskID(binary: spec.parent)
          described[k] = (made, parent)
          info = made
        }
      }
      let endNs = records[i].endNs
      let change = Change(state: records[i].state, wall: Self.wall(records[i].timeNs, batch), end: endNs == 0 ? 0 : Self.wall(endNs, batch),
                          fromExecutor: records[i].fromExecutor, parent: parent,
                          startWallNs: records[i].startWallNs, endWallNs: records[i].endWallNs,
                          argBytes: records[i].argBytes, returnBytes: records[i].returnBytes,
                          failure: records[i].failure)
      upsert(Key(task: task, attempt: records[i].attempt)) { $0.merge(change, process: process, assigned: assigned, info: info) }
    }
  }

  /// What one event says of its attempt, from a message or a record.
  struct Change {
    var state: TaskEventState, wall: UInt64, end: UInt64, fromExecutor: Bool, parent: TaskID?
    var startWallNs: UInt64, endWallNs: UInt64, argBytes: UInt64, returnBytes: UInt64
    var failure: Failure?
  }

  /// Merges into `key`'s record, admitting it when new (one lookup), and keeps
  /// `counts` in step.
  private mutating func upsert(_ key: Key, _ merge: (inout Record) -> Void) {
    // One lookup finds the attempt or files it at the next position (evicting the
    // oldest keeps `firstPosition + rows.count`, the next position, as it is).
    let next = firstPosition + rows.count
    let position = Self.claim(&slot[key, default: -1], next)
    let i: Int
    let before: Counted?
    if position != next {
      i = position - firstPosition
      before = Self.counted(rows[i].record, attempt: key.attempt)
    } else {
      i = admit(key)
      before = nil
    }
    merge(&rows[i].record)
    let after = Self.counted(rows[i].record, attempt: key.attempt)
    if before != after {
      if let before { counts[before.slot] -= 1 }
      counts[after.slot] += 1
      counted[after.slot] = true
    }
  }

  /// Most of a batch's events name the same few workers: the last few are kept at hand
  /// (a compare of their bytes, not a parse and a lookup).
  struct RecentProcesses {
    var entries: [(worker: Data, pid: Int32, process: Process)] = []
    mutating func process(_ worker: Data, pid: Int32, node: Data, in table: inout TaskEventTable) -> Process {
      if let hit = entries.first(where: { $0.pid == pid && $0.worker == worker }) { return hit.process }
      let p = table.process(worker: worker, node: node, pid: pid, isDriver: false)
      if entries.count == 8 { entries.removeFirst() }
      entries.append((worker, pid, p))
      return p
    }
  }

  /// Maps a sender's monotonic reading to wall time (a reading from the future, as a
  /// bad peer might send, maps to the batch's own time).
  static func wall(_ t: UInt64, _ b: Swiftray_ReportTaskEventsRequest) -> UInt64 {
    let back = b.monotonicNowNs >= t ? b.monotonicNowNs - t : 0
    return b.wallNowNs >= back ? b.wallNowNs - back : 0
  }

  /// A new attempt's empty record (evicting the oldest past `capacity`); its index in
  /// `rows`. `upsert` filed its position in `slot` already.
  private mutating func admit(_ key: Key) -> Int {
    while rows.count >= capacity, let old = rows.popFirst() {
      slot[old.key] = nil
      firstPosition += 1
      evicted &+= 1
    }
    rows.append((key, Record()))
    return rows.count - 1
  }

  /// The position held in `slot`, or `next` given to a key just filed (-1).
  private static func claim(_ p: inout Int, _ next: Int) -> Int {
    if p < 0 { p = next }
    return p
  }

  /// The batch's sender, shared by the attempts it ran (the cache is emptied when it
  /// grows past the table's size; records keep theirs).
  private mutating func process(_ b: Swiftray_ReportTaskEventsRequest) -> Process {
    process(worker: b.workerID, node: b.nodeID, pid: b.pid, isDriver: b.isDriver)
  }

  /// A worker as its batches or an owner's events name it.
  fileprivate mutating func process(worker w: Data, node: Data, pid: Int32, isDriver: Bool) -> Process {
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
  mutating func merge(_ e: TaskEventTable.Change, process: TaskEventTable.Process, assigned a: TaskEventTable.Process?,
                      info i: TaskEventTable.Info?) {
    let s = e.state, wall = e.wall, end = e.end
    if let i { info = i }
    if let p = e.parent { parent = p }
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
        if s == .failed, let f = e.failure { failure = f }
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
      failure = s == .failed ? e.failure ?? TaskEventTable.Failure(type: "") : nil
    } else if s > state, !state.isTerminal {
      state = s
    }
  }
}
