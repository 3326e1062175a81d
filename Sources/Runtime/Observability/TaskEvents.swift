import DequeModule
import Foundation
import RuntimeProto

/// A task attempt's state, with Ray's names (`ray list tasks`' STATE column). The raw
/// values travel in `Swiftray_TaskEvent.state`; their order is the order an attempt
/// moves through them, so the head keeps the furthest one it heard of.
public enum TaskEventState: Int32, Sendable, CaseIterable, Comparable {
  case pendingArgsAvail = 1
  case pendingNodeAssignment = 2
  case submittedToWorker = 3
  case running = 4
  case finished = 5
  case failed = 6

  public var rayName: String {
    switch self {
    case .pendingArgsAvail: "PENDING_ARGS_AVAIL"
    case .pendingNodeAssignment: "PENDING_NODE_ASSIGNMENT"
    case .submittedToWorker: "SUBMITTED_TO_WORKER"
    case .running: "RUNNING"
    case .finished: "FINISHED"
    case .failed: "FAILED"
    }
  }
  public var isTerminal: Bool { self == .finished || self == .failed }
  public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// Ray's task types (`TYPE` column).
public enum TaskEventType: Int32, Sendable {
  case normalTask = 0, actorCreationTask = 1, actorTask = 2

  public var rayName: String {
    switch self {
    case .normalTask: "NORMAL_TASK"
    case .actorCreationTask: "ACTOR_CREATION_TASK"
    case .actorTask: "ACTOR_TASK"
    }
  }

  public init(_ spec: Swiftray_TaskSpec) {
    self = spec.hasActorCreation ? .actorCreationTask : spec.actorID.isEmpty ? .normalTask : .actorTask
  }
}

/// Ray's `error_type` for a failure of ours.
public enum TaskErrorType {
  public static let execution = "TASK_EXECUTION_EXCEPTION"

  public static func of(_ code: SwiftrayError.Code) -> String {
    switch code {
    case .taskError: execution
    case .workerCrashed: "WORKER_DIED"
    case .taskCancelled: "TASK_CANCELLED"
    case .objectLost, .reconstructionFailed, .objectFreed, .ownerDied: "DEPENDENCY_RESOLUTION_FAILED"
    case .nodeDied: "NODE_DIED"
    case .localRayletDied: "LOCAL_RAYLET_DIED"
    case .unschedulable: "TASK_UNSCHEDULABLE_ERROR"
    case .actorDied: "ACTOR_DIED"
    case .actorUnavailable: "ACTOR_UNAVAILABLE"
    case .actorUnschedulable: "ACTOR_UNSCHEDULABLE_ERROR"
    case .taskPlacementGroupRemoved, .actorPlacementGroupRemoved: "TASK_PLACEMENT_GROUP_REMOVED"
    case .pendingCallsLimitExceeded: "PENDING_CALLS_LIMIT_EXCEEDED"
    case .objectStoreFull: "OUT_OF_MEMORY"
    default: code.rawValue
    }
  }
}

/// One state change as a process records it: a plain value (no message built on the
/// task path); the fields carry `Swiftray_TaskEvent`'s names. Small (about 100 bytes)
/// and, but for a failure, free of references: what many records share (the
/// description, the worker) sits once in the batch (`TaskEventBatch`) and a record
/// holds its index. A record is moved into the ring, folded in place and moved out to
/// the head; counting references on a description every record shares, from the
/// threads that record and the one that takes, cost more than the rest of it.
public struct TaskEventRecord: Sendable {
  public var id: TaskID
  public var attempt: Int32
  public var state: TaskEventState
  public var fromExecutor = false
  public var timeNs: UInt64
  /// The spec's description, to send with the event (`info`): 1 + its index in the
  /// batch's `summaries` (0: none).
  var summary: Int32 = 0
  /// Where the attempt was sent: 1 + its index in the batch's `workers` (0: not named).
  var worker: Int32 = 0
  public var failure: Failure?
  public var startWallNs: UInt64 = 0, endWallNs: UInt64 = 0, endNs: UInt64 = 0
  public var argBytes: UInt64 = 0, returnBytes: UInt64 = 0

  public init(id: TaskID, attempt: Int32, state: TaskEventState, timeNs: UInt64) {
    self.id = id; self.attempt = attempt; self.state = state; self.timeNs = timeNs
  }

  public var errorType: String { failure?.type ?? "" }
  public var errorMessage: String { failure?.message ?? "" }
  /// Whether the record names a description in its batch (its first attempt's record).
  public var hasSummary: Bool { summary != 0 }

  /// A worker as events name it, made once per lease or actor incarnation and shared by
  /// the attempts sent there (a batch holds it once; the head maps it to its own once
  /// per batch).
  public final class Worker: Sendable {
    public let workerID: Data, nodeID: Data, pid: Int32
    public init(workerID: Data, nodeID: Data, pid: Int32) { self.workerID = workerID; self.nodeID = nodeID; self.pid = pid }
    public convenience init(_ a: Swiftray_Address) { self.init(workerID: a.workerID, nodeID: a.nodeID, pid: a.pid) }
  }

  /// Why an attempt failed: Ray's `error_type` and the message (bounded where made).
  public final class Failure: Sendable {
    public let type: String, message: String
    public init(type: String, message: String = "") { self.type = type; self.message = message }
    /// The task raised: shared by every such event.
    public static let execution = Failure(type: TaskErrorType.execution)
  }

  /// What the event's `info` needs of a spec, without its arguments (kept while
  /// the event waits, they would hold the arguments' bytes). A class, held once per
  /// batch (`TaskEventBatch.summaries`), named by the records it describes.
  final class SpecSummary: Sendable {
    let name: String, function: String, jobID: Data, parent: Data, actorID: Data
    let isCreation: Bool, className: String
    /// The resources it asks for, and its placement group (empty: none).
    let quantities: [String: Int64], placementGroup: Data
    init(_ spec: Swiftray_TaskSpec) {
      name = spec.name; function = spec.function.name; jobID = spec.jobID; parent = spec.parentTaskID; actorID = spec.actorID
      isCreation = spec.hasActorCreation
      className = isCreation ? spec.actorCreation.className : ""
      quantities = (isCreation && spec.actorCreation.hasPlacementResources ? spec.actorCreation.placementResources : spec.resources).quantities
      let strategy = spec.strategy
      placementGroup = strategy.kind == .placementGroup ? strategy.placementGroupID : Data()
    }

    /// True when `spec` would be summarised as this one is, its parent included: a run
    /// of one function's tasks then shares one summary (no allocation per task; its
    /// batch holds it once, and the head interns it once). The fields that differ most
    /// often between runs are compared first.
    func describes(_ spec: Swiftray_TaskSpec) -> Bool {
      // (An actor's calls name no function: reading one copies the whole descriptor.)
      guard !isCreation, spec.name == name, spec.actorID == actorID, spec.parentTaskID == parent,
        spec.hasFunction ? spec.function.name == function : function.isEmpty,
        !spec.hasActorCreation, spec.jobID == jobID
      else { return false }
      // An actor's calls ask for nothing and are placed with their actor.
      if !actorID.isEmpty { return quantities.isEmpty && placementGroup.isEmpty && !spec.hasResources && !spec.hasStrategy }
      guard spec.resources.quantities == quantities else { return false }
      let strategy = spec.strategy
      return strategy.kind == .placementGroup ? strategy.placementGroupID == placementGroup : placementGroup.isEmpty
    }

    /// True when `o` describes its task as this one does (the parent is the event's):
    /// a run of one function's tasks shares one description, recognised by comparing
    /// with the last one (plain fields; no hashing).
    func describesSame(as o: SpecSummary) -> Bool {
      self === o || (name == o.name && function == o.function && isCreation == o.isCreation && actorID == o.actorID
        && jobID == o.jobID && className == o.className && quantities == o.quantities && placementGroup == o.placementGroup)
    }

    var info: Swiftray_TaskEventInfo {
      var i = Swiftray_TaskEventInfo()
      i.name = name
      i.funcOrClassName = isCreation && !className.isEmpty ? className : function.isEmpty ? name : function
      i.type = (isCreation ? TaskEventType.actorCreationTask : actorID.isEmpty ? .normalTask : .actorTask).rawValue
      i.jobID = jobID
      i.actorID = actorID
      i.requiredResources.quantities = quantities
      i.placementGroupID = placementGroup
      return i
    }
  }

  /// Takes in a later event of the same attempt: its state, and whatever it adds.
  mutating func fold(_ later: TaskEventRecord) {
    state = later.state
    if later.summary != 0 { summary = later.summary }
    if later.worker != 0 { worker = later.worker }
    if later.failure != nil { failure = later.failure }
    if later.startWallNs > 0 { startWallNs = later.startWallNs; endWallNs = later.endWallNs }
    if later.argBytes > 0 { argBytes = later.argBytes }
    if later.returnBytes > 0 { returnBytes = later.returnBytes }
    if later.endNs > 0 { endNs = later.endNs } else if later.state.isTerminal { endNs = later.timeNs }
  }

  /// The message; `infoIndex`: where its description sits in the message batch
  /// (1-based), `spec` and `worker` what the record's indices name.
  func message(infoIndex: Int32, spec: SpecSummary?, worker: Worker?) -> Swiftray_TaskEvent {
    var e = Swiftray_TaskEvent()
    e.taskID = Data(id.binary)
    e.attempt = attempt
    e.state = state.rawValue
    e.timeNs = timeNs
    if let spec {
      e.infoIndex = infoIndex
      e.parentTaskID = spec.parent
    }
    if let worker { e.workerID = worker.workerID; e.nodeID = worker.nodeID; e.workerPid = worker.pid }
    e.errorType = errorType; e.errorMessage = errorMessage
    e.startWallNs = startWallNs; e.endWallNs = endWallNs; e.endNs = endNs
    e.argBytes = argBytes; e.returnBytes = returnBytes
    e.fromExecutor = fromExecutor
    return e
  }
}

/// Records and what their indices name: a buffer's pending events, or a batch taken
/// from it. Read a record's description and worker through the batch it came in.
///
/// Threading: a value type.
public struct TaskEventBatch: Sendable {
  public internal(set) var records: Deque<TaskEventRecord> = []
  var summaries: [TaskEventRecord.SpecSummary] = []
  var workers: [TaskEventRecord.Worker] = []

  public init() {}

  func summary(_ r: TaskEventRecord) -> TaskEventRecord.SpecSummary? {
    r.summary > 0 && Int(r.summary) <= summaries.count ? summaries[Int(r.summary) - 1] : nil
  }

  public func worker(_ r: TaskEventRecord) -> TaskEventRecord.Worker? {
    r.worker > 0 && Int(r.worker) <= workers.count ? workers[Int(r.worker) - 1] : nil
  }

  public var count: Int { records.count }
  public var isEmpty: Bool { records.isEmpty }
}

/// A process's task events on their way to the head: a bounded ring that drops its
/// oldest events (counted) when the head cannot keep up, so recording never waits.
/// Each attempt has one record in the ring, folded in place as its state moves on (one
/// lookup by its id), so a batch leaves as it is.
///
/// Threading: a value type; its owner holds it under a lock it already takes (the
/// owner's, the executor's). `record` is an append or an in-place fold; `take` a swap.
public struct TaskEventBuffer: Sendable {
  /// The ring, with the descriptions and workers its records name.
  public private(set) var pending = TaskEventBatch()
  public var events: Deque<TaskEventRecord> { pending.records }
  /// Where each id's newest record sits, as an absolute position (`events[p - base]`); a
  /// position below `base` was taken or dropped.
  private var latest = RecordPositions()
  private var base = 0
  /// Events dropped since the last drain.
  public private(set) var dropped: UInt64 = 0
  public let capacity: Int
  /// Longest error message an event carries (a traceback's head).
  public static let maxMessageBytes = 4096
  /// False: `record` does nothing (`enable_task_events=0`).
  public let enabled: Bool
  /// The last summary made, shared while tasks of the same function follow, and its
  /// index in `pending.summaries` (0: not there since the last take).
  private var lastSummary: (summary: TaskEventRecord.SpecSummary, index: Int32)?
  /// The last worker named, likewise.
  private var lastWorker: (worker: TaskEventRecord.Worker, index: Int32)?
  /// A ring taken before and emptied by its taker (`recycle`), used by the next take:
  /// recording then writes to memory already mapped and in cache.
  private var spare: Deque<TaskEventRecord>?

  public init(capacity: Int, enabled: Bool = true) {
    self.capacity = max(capacity, 1)
    self.enabled = enabled
  }

  public var isEmpty: Bool { pending.records.isEmpty && dropped == 0 }

  /// The worker `r` (a record in the ring) names.
  public func worker(_ r: TaskEventRecord) -> TaskEventRecord.Worker? { pending.worker(r) }

  public mutating func record(_ e: consuming TaskEventRecord) {
    guard enabled else { return }
    if let p = latest[e.id], p >= base, pending.records[p - base].attempt == e.attempt {
      pending.records[p - base].fold(e)
      return
    }
    if pending.records.count >= capacity, let old = pending.records.popFirst() {
      latest.dropped(old.id, at: base)
      base += 1
      dropped &+= 1
    }
    // Positions left behind by partial takes are dropped before they add up.
    if latest.count >= 2 * capacity { reindex() }
    latest[e.id] = base + pending.records.count
    pending.records.append(e)
  }

  private mutating func reindex() {
    latest.removeAll()
    for i in pending.records.indices { latest[pending.records[i].id] = base + i }
  }

  /// A state change of `spec`'s current attempt at `now`; `info`: describe the task;
  /// `worker`: where it was sent. An id that does not parse (a peer's mistake) is not
  /// recorded: the head could not file it.
  public mutating func record(_ spec: Swiftray_TaskSpec, _ state: TaskEventState, now: UInt64, info: Bool = false,
                              worker: TaskEventRecord.Worker? = nil, edit: (inout TaskEventRecord) -> Void = { _ in }) {
    guard enabled, let id = TaskID(binary: spec.taskID) else { return }
    var e = TaskEventRecord(id: id, attempt: spec.attempt, state: state, timeNs: now)
    // Before either index is taken: a compaction renumbers what the ring names.
    if pending.summaries.count >= capacity || pending.workers.count >= capacity { compact() }
    if info { e.summary = summaryIndex(spec) }
    if let worker { e.worker = workerIndex(worker) }
    edit(&e)
    record(e)
  }

  /// The index of `spec`'s description in `pending`, the last one's while it describes
  /// `spec`.
  private mutating func summaryIndex(_ spec: Swiftray_TaskSpec) -> Int32 {
    let summary: TaskEventRecord.SpecSummary
    if let last = lastSummary, last.summary.describes(spec) {
      if last.index != 0 { return last.index }
      summary = last.summary
    } else {
      summary = TaskEventRecord.SpecSummary(spec)
    }
    pending.summaries.append(summary)
    let index = Int32(pending.summaries.count)
    lastSummary = (summary, index)
    return index
  }

  private mutating func workerIndex(_ worker: TaskEventRecord.Worker) -> Int32 {
    if let last = lastWorker, last.index != 0, last.worker === worker { return last.index }
    pending.workers.append(worker)
    let index = Int32(pending.workers.count)
    lastWorker = (worker, index)
    return index
  }

  /// Keeps only the descriptions and workers the ring's records still name (after many
  /// were dropped with their records): O(ring), at most once per `capacity` additions.
  private mutating func compact() {
    var summaries: [TaskEventRecord.SpecSummary] = [], workers: [TaskEventRecord.Worker] = []
    var summaryAt: [Int32: Int32] = [:], workerAt: [Int32: Int32] = [:]
    for i in pending.records.indices {
      let r = pending.records[i]
      if r.summary != 0 {
        if summaryAt[r.summary] == nil, let s = pending.summary(r) {
          summaries.append(s)
          summaryAt[r.summary] = Int32(summaries.count)
        }
        pending.records[i].summary = summaryAt[r.summary] ?? 0
      }
      if r.worker != 0 {
        if workerAt[r.worker] == nil, let w = pending.worker(r) {
          workers.append(w)
          workerAt[r.worker] = Int32(workers.count)
        }
        pending.records[i].worker = workerAt[r.worker] ?? 0
      }
    }
    pending.summaries = summaries
    pending.workers = workers
    lastSummary = lastSummary.map { ($0.summary, 0) }
    lastWorker = lastWorker.map { ($0.worker, 0) }
  }

  /// Bytes of a task's arguments as sent: inline values and stored objects.
  public static func argBytes(_ spec: Swiftray_TaskSpec) -> UInt64 {
    spec.args.reduce(0) { $0 &+ UInt64($1.value.data.count) &+ $1.value.storeSize }
  }

  /// Bytes of a reply's returns.
  public static func returnBytes(_ reply: Swiftray_PushTaskReply) -> UInt64 {
    reply.returns.reduce(0) { $0 &+ UInt64($1.object.data.count) &+ $1.object.storeSize }
  }

  /// The worker's span from its reply, on the owner's event that ends the attempt.
  static func span(_ ev: inout TaskEventRecord, _ spec: Swiftray_TaskSpec, _ reply: Swiftray_PushTaskReply?) {
    guard let reply, reply.startedWallNs > 0 else { return }
    ev.startWallNs = reply.startedWallNs
    ev.endWallNs = reply.endedWallNs
    ev.argBytes = argBytes(spec)
    ev.returnBytes = returnBytes(reply)
  }

  /// Takes at most `max` records (the oldest first), with what they name, and the
  /// dropped count: under the lock that holds the buffer, a move; `messages` builds the
  /// batch after.
  public mutating func take(max: Int) -> (batch: TaskEventBatch, dropped: UInt64) {
    defer { dropped = 0 }
    guard pending.records.count > max else {
      // All of it: a swap, O(1) under the caller's lock. The next round starts with room
      // for as many (growing a ring of records copies them all).
      var ring: Deque<TaskEventRecord> = []
      if spare != nil {
        swap(&ring, &spare!)
        spare = nil
      }
      ring.reserveCapacity(Swift.min(pending.records.count, capacity))
      var out = TaskEventBatch()
      out.records = ring
      swap(&out, &pending)
      latest.removeAll()
      base = 0
      lastSummary = lastSummary.map { ($0.summary, 0) }
      lastWorker = lastWorker.map { ($0.worker, 0) }
      return (out, dropped)
    }
    // Part of it: the smaller side is copied; both share what the records name.
    var out = TaskEventBatch()
    out.summaries = pending.summaries
    out.workers = pending.workers
    let keep = pending.records.count - max
    base += max
    if keep < max {
      swap(&out.records, &pending.records)
      pending.records = Deque(out.records.suffix(keep))
      out.records.removeLast(keep)
    } else {
      out.records = Deque(pending.records.prefix(max))
      pending.records.removeFirst(max)
    }
    return (out, dropped)
  }

  /// Gives back a ring `take` handed out, once emptied (an empty one holds no records;
  /// its room is at most what the ring held).
  public mutating func recycle(_ ring: inout Deque<TaskEventRecord>) {
    guard ring.isEmpty, spare == nil else { return }
    var r: Deque<TaskEventRecord> = []
    swap(&r, &ring)
    spare = r
  }

  /// `take` and `messages` at once (for callers that hold no one else's lock).
  public mutating func drain(max: Int) -> (events: [Swiftray_TaskEvent], infos: [Swiftray_TaskEventInfo], dropped: UInt64, taken: Int) {
    let (batch, dropped) = take(max: max)
    let (events, infos) = Self.messages(batch)
    return (events, infos, dropped, batch.count)
  }

  /// A batch's messages (each attempt's record was folded as it was made), each distinct
  /// description once.
  public static func messages(_ batch: TaskEventBatch) -> (events: [Swiftray_TaskEvent], infos: [Swiftray_TaskEventInfo]) {
    var infos: [Swiftray_TaskEventInfo] = []
    var infoAt: [SpecKey: Int32] = [:]
    // Tasks of one function come in runs: the last description is compared before any
    // is hashed.
    var last: (spec: TaskEventRecord.SpecSummary, index: Int32)?
    let events = batch.records.map { e -> Swiftray_TaskEvent in
      let worker = batch.worker(e)
      guard let spec = batch.summary(e) else { return e.message(infoIndex: 0, spec: nil, worker: worker) }
      if let last, last.spec.describesSame(as: spec) { return e.message(infoIndex: last.index, spec: spec, worker: worker) }
      let key = SpecKey(spec)
      let index: Int32
      if let i = infoAt[key] { index = i } else {
        infos.append(spec.info)
        index = Int32(infos.count)
        infoAt[key] = index
      }
      last = (spec, index)
      return e.message(infoIndex: index, spec: spec, worker: worker)
    }
    return (events, infos)
  }

  /// What tells two descriptions apart (the parent is the event's): plain fields, cheaper
  /// to hash than the messages.
  struct SpecKey: Hashable {
    var name: String, function: String, jobID: Data, actorID: Data, isCreation: Bool, className: String
    var resources: [String: Int64], placementGroup: Data
    init(_ s: TaskEventRecord.SpecSummary) {
      name = s.name; function = s.function; jobID = s.jobID; actorID = s.actorID; isCreation = s.isCreation
      className = s.className; resources = s.quantities; placementGroup = s.placementGroup
    }
  }
}

/// The ring positions of attempts' records, by task id. An owner's ids come from one
/// generator (one prefix, counters in order) and each task's first event comes when it
/// is submitted, so most ids fall in a window of consecutive counters: an array indexed
/// by counter, no hashing. Ids outside it (another generator's, a retry of a task older
/// than the window) go to a map.
///
/// Threading: a value type inside `TaskEventBuffer`.
public struct RecordPositions: Sendable {
  /// The window's first id; `window[i]`: position of counter `start.counter + i` (-1: none).
  private var start: TaskID?
  private var window: [Int] = []
  private var others: [TaskID: Int] = [:]
  /// Counters skipped inside the window before an id is sent to `others` instead (a
  /// generator's ids also name puts and actors, which have no task events).
  public static let maxGap: UInt64 = 1024

  var count: Int { window.count + others.count }

  private func slot(_ id: TaskID) -> Int? {
    guard let s = start, id.prefix == s.prefix, id.job == s.job, id.counter >= s.counter else { return nil }
    let i = id.counter - s.counter
    return i < UInt64(window.count) ? Int(i) : nil
  }

  subscript(id: TaskID) -> Int? {
    get {
      if let i = slot(id) { return window[i] >= 0 ? window[i] : nil }
      return others.isEmpty ? nil : others[id]
    }
    set {
      if let i = slot(id) { window[i] = newValue ?? -1; return }
      if let p = newValue, extend(id, p) { return }
      others[id] = newValue
    }
  }

  /// Appends `id` at the window's end when it follows it closely (or starts the window).
  private mutating func extend(_ id: TaskID, _ position: Int) -> Bool {
    guard let s = start else {
      start = id
      window.append(position)
      return true
    }
    guard id.prefix == s.prefix, id.job == s.job, id.counter >= s.counter else { return false }
    let i = id.counter - s.counter
    guard i >= UInt64(window.count), i - UInt64(window.count) <= Self.maxGap else { return false }
    window.append(contentsOf: repeatElement(-1, count: Int(i) - window.count))
    window.append(position)
    return true
  }

  /// `id`'s record left the ring from `position`: forget it unless a newer one is kept.
  mutating func dropped(_ id: TaskID, at position: Int) {
    if self[id] == position { self[id] = nil }
  }

  mutating func removeAll() {
    start = nil
    window.removeAll(keepingCapacity: true)
    others.removeAll(keepingCapacity: true)
  }
}
