import DequeModule

/// The owner side of the lease protocol for normal tasks (DESIGN §3): queue ready
/// tasks per resource shape, ask the local NodeManager for worker leases, push tasks
/// straight to leased workers, reuse a lease for the next task of the same shape, and
/// return it after it has been idle for `idleLinger`. Pure state machine; time is
/// passed in as monotonic nanoseconds.
///
/// Threading: value type, owned by the CoreWorker shell under its lock.
public struct NormalTaskSubmitter: Sendable {
  public typealias Key = SchedulingKey
  /// Which function a task runs (any 64 bits of its id): durations are measured, and
  /// pipelining decided, per function, as a function's tasks resemble each other and
  /// another function's need not (0: unknown, never measured short).
  public typealias FunctionTag = UInt64

  public struct Settings: Sendable, Equatable {
    /// Lease requests outstanding per shape at once.
    public var maxPendingLeaseRequests: Int
    /// Tasks pushed to one leased worker before the first replies, whatever they cost.
    public var maxTasksInFlightPerWorker: Int
    /// How long an idle lease is kept for the next task of its shape.
    public var idleLingerNanos: UInt64
    /// Retry delay after the node said the shape is infeasible (a node may join).
    public var infeasibleRetryNanos: UInt64
    /// Tasks pushed to one leased worker while every task in flight there is of a
    /// function that is short (its tasks ran, of late, under `pipelineBelowNanos` each
    /// on average): the worker finds its next task already there, with no round trip to
    /// the owner between the two. A task is never queued behind one that may run long
    /// (of a function not measured yet, or measured long), and leases of a shape take
    /// one task each before any takes a second.
    public var pipelineDepth: Int
    /// What counts as short; 0 never pipelines beyond `maxTasksInFlightPerWorker`.
    public var pipelineBelowNanos: UInt64
    public init(maxPendingLeaseRequests: Int = 10, maxTasksInFlightPerWorker: Int = 1,
                idleLingerNanos: UInt64 = 10_000_000, infeasibleRetryNanos: UInt64 = 1_000_000_000,
                pipelineDepth: Int = 1, pipelineBelowNanos: UInt64 = 0) {
      self.maxPendingLeaseRequests = maxPendingLeaseRequests
      self.maxTasksInFlightPerWorker = maxTasksInFlightPerWorker
      self.idleLingerNanos = idleLingerNanos
      self.infeasibleRetryNanos = infeasibleRetryNanos
      self.pipelineDepth = pipelineDepth
      self.pipelineBelowNanos = pipelineBelowNanos
    }
  }

  public struct GrantedLease: Sendable, Equatable {
    public var leaseID: UInt64
    public var worker: WorkerID
    public init(leaseID: UInt64, worker: WorkerID) { self.leaseID = leaseID; self.worker = worker }
  }

  struct LeaseState: Sendable {
    var lease: GrantedLease
    var key: Key
    /// Each task in flight and its function.
    var inFlight: [TaskID: FunctionTag] = [:]
    var idleSince: UInt64?
    /// When the worker began the task it runs now (as the owner sees it: the push to
    /// an idle lease, or the reply of the task before).
    var headStart: UInt64 = 0
    /// Its worker handed a task back (the task it runs blocked): one task at a time on
    /// it until it is idle again.
    var handedBack = false

    /// `task` replied at `now`: its function, how long it ran, whether the lease had
    /// handed a task back (its timing is not the function's), and its key; nil when
    /// it was not in flight here.
    mutating func replied(_ task: TaskID, now: UInt64) -> (FunctionTag, UInt64, Bool, Key)? {
      guard let function = inFlight.removeValue(forKey: task) else { return nil }
      // FIFO on the worker: the task replied ran from the later of its push and the
      // reply before it; the next one (if pushed) starts now.
      let took = now &- headStart
      headStart = now
      if inFlight.isEmpty { idleSince = now; handedBack = false }
      return (function, took, handedBack, key)
    }
  }

  struct KeyState: Sendable {
    var queue = ReadyQueue()
    var leases: Set<UInt64> = []
    var pendingRequests: Set<UInt64> = []
    var retryAt: UInt64?
    var warned = false
  }

  struct Queued: Sendable {
    var task: TaskID
    var function: FunctionTag
  }

  /// One shape's ready tasks, first in first out, from which any task can be removed
  /// (`cancel`) at a cost that does not grow with the queue: a removed task leaves its
  /// entry behind, skipped when it reaches the front, and entries are compacted once
  /// removed ones could outnumber the rest. The set of the tasks queued is built at the
  /// first removal (as many steps as tasks queued, each of which was submitted) and
  /// dropped once the queue empties, so a queue no cancel touched costs no more than
  /// its entries.
  ///
  /// Threading: a value type, inside the submitter.
  struct ReadyQueue: Sendable {
    /// In order: each task queued and, once `members` is set, the entries of removed
    /// tasks (not in `members`) not skipped yet.
    private var entries: Deque<Queued> = []
    /// The tasks queued, from the first removal until the queue empties; nil: every
    /// entry is a queued task.
    private var members: Set<TaskID>?

    var count: Int { members?.count ?? entries.count }
    var entryCount: Int { entries.count }
    var isEmpty: Bool { count == 0 }

    /// The tasks queued, in order, each once (a task queued again after its removal,
    /// not a path the owner takes, has two entries).
    var tasks: [TaskID] {
      guard let members else { return entries.map(\.task) }
      var seen = Set<TaskID>()
      return entries.compactMap { members.contains($0.task) && seen.insert($0.task).inserted ? $0.task : nil }
    }

    private func isQueued(_ task: TaskID) -> Bool { members?.contains(task) ?? true }

    mutating func append(_ q: Queued) {
      if members != nil, members!.insert(q.task).inserted == false { return }
      entries.append(q)
    }

    /// Back at its place among the tasks submitted before and after it
    /// (`TaskID.counter`): a task handed back, usually near the front.
    mutating func insertInOrder(_ q: Queued) {
      if members != nil, members!.insert(q.task).inserted == false { return }
      entries.insert(q, at: entries.firstIndex { $0.task.counter > q.task.counter } ?? entries.endIndex)
    }

    mutating func popFirst() -> Queued? {
      while let q = entries.popFirst() {
        guard members != nil else { return q }
        if members!.remove(q.task) != nil {
          if members!.isEmpty { dropIndex() }
          return q
        }
      }
      return nil
    }

    /// The `n`-th task from the front (0: the first), or the last when fewer are queued.
    func task(near n: Int) -> TaskID? {
      var seen = 0
      var last: TaskID?
      for q in entries where isQueued(q.task) {
        if seen == n { return q.task }
        seen += 1
        last = q.task
      }
      return last
    }

    /// Removes `task`; false when it is not queued here.
    mutating func remove(_ task: TaskID) -> Bool {
      if members == nil {
        guard !entries.isEmpty else { return false }
        members = Set(entries.lazy.map(\.task))
      }
      guard members!.remove(task) != nil else { return false }
      if members!.isEmpty { dropIndex(); return true }
      // The front stays a queued task, and removed entries never outnumber the rest by
      // much: each compaction is paid for by as many removals.
      while let f = entries.first, !members!.contains(f.task) { entries.removeFirst() }
      if entries.count > 2 * members!.count + 32 {
        let members = self.members!
        entries.removeAll { !members.contains($0.task) }
      }
      return true
    }

    /// Nothing queued: what entries are left were removed.
    private mutating func dropIndex() {
      entries.removeAll()
      members = nil
    }

    mutating func removeAll() { dropIndex() }
  }

  public enum Action: Sendable, Equatable {
    /// `forTask`: a queued task the lease would serve first (for locality).
    case requestLease(requestID: UInt64, key: Key, forTask: TaskID)
    case cancelLeaseRequest(requestID: UInt64)
    case push(TaskID, lease: GrantedLease)
    case returnLease(leaseID: UInt64, disconnect: Bool)
    /// Once per shape until it becomes schedulable: tell the user.
    case warnInfeasible(key: Key, detail: String)
    /// These tasks were on a worker that is gone.
    case tasksLost([TaskID], lease: GrantedLease)
    /// These queued tasks cannot run on this node at all (workers fail to start).
    case tasksFailed([TaskID], detail: String, code: SwiftrayError.Code)
  }

  public let settings: Settings
  private var keys: [Key: KeyState] = [:]
  private var leases: [UInt64: LeaseState] = [:]
  private var requestKeys: [UInt64: Key] = [:]
  private var nextRequestID: UInt64
  /// Per function, the running average of how long its tasks took on their workers
  /// (weight 1/4 to the newest); absent until one is measured, or after a task of it
  /// blocked. A cache: emptied when it reaches `maxMeasuredFunctions`.
  private var recentNanos: [FunctionTag: UInt64] = [:]
  static let maxMeasuredFunctions = 4096

  public init(settings: Settings = Settings(), firstRequestID: UInt64 = 1) {
    self.settings = settings
    self.nextRequestID = firstRequestID
  }

  public var numLeases: Int { leases.count }
  public var numQueued: Int { keys.values.reduce(0) { $0 + $1.queue.count } }
  /// Entries the shapes' queues hold, removed ones included (what `ReadyQueue`'s
  /// compaction bounds).
  public var numQueueEntries: Int { keys.values.reduce(0) { $0 + $1.queue.entryCount } }
  public func leaseOf(task: TaskID) -> GrantedLease? {
    leases.values.first { $0.inFlight[task] != nil }?.lease
  }

  // MARK: events

  public mutating func taskReady(_ task: TaskID, key shape: ResourceSet, function: FunctionTag = 0, now: UInt64) -> [Action] {
    taskReady(task, key: Key(shape), function: function, now: now)
  }

  public mutating func taskReady(_ task: TaskID, key: Key, function: FunctionTag = 0, now: UInt64) -> [Action] {
    keys[key, default: KeyState()].queue.append(Queued(task: task, function: function))
    return schedule(key, now: now)
  }

  public mutating func leaseGranted(requestID: UInt64, lease: GrantedLease, now: UInt64) -> [Action] {
    guard let key = requestKeys.removeValue(forKey: requestID) else {
      return [.returnLease(leaseID: lease.leaseID, disconnect: false)]
    }
    keys[key]?.pendingRequests.remove(requestID)
    keys[key]?.warned = false
    leases[lease.leaseID] = LeaseState(lease: lease, key: key, idleSince: now)
    keys[key, default: KeyState()].leases.insert(lease.leaseID)
    return schedule(key, now: now)
  }

  /// The node said no node can run this shape. Keep the tasks; ask again later.
  public mutating func leaseRejected(requestID: UInt64, detail: String, now: UInt64) -> [Action] {
    guard let key = requestKeys.removeValue(forKey: requestID), var ks = keys.removeValue(forKey: key) else { return [] }
    ks.pendingRequests.remove(requestID)
    ks.retryAt = now + settings.infeasibleRetryNanos
    var actions: [Action] = []
    if !ks.warned { ks.warned = true; actions.append(.warnInfeasible(key: key, detail: detail)) }
    keys[key] = ks
    return actions
  }

  /// The node cannot start workers: the tasks queued for this shape fail now rather
  /// than wait forever. Tasks already pushed to live leases are unaffected.
  public mutating func leaseFailed(requestID: UInt64, detail: String, now: UInt64,
                                   code: SwiftrayError.Code = .system) -> [Action] {
    guard let key = requestKeys.removeValue(forKey: requestID), var ks = keys.removeValue(forKey: key) else { return [] }
    ks.pendingRequests.remove(requestID)
    let failed = ks.queue.tasks
    ks.queue.removeAll()
    keys[key] = ks
    return (failed.isEmpty ? [] : [.tasksFailed(failed, detail: detail, code: code)]) + schedule(key, now: now)
  }

  /// The request failed in transport (node unreachable): ask again after a pause.
  public mutating func leaseRequestFailed(requestID: UInt64, now: UInt64) -> [Action] {
    guard let key = requestKeys.removeValue(forKey: requestID) else { return [] }
    keys[key]?.pendingRequests.remove(requestID)
    keys[key]?.retryAt = now + settings.infeasibleRetryNanos / 10
    return []
  }

  /// The node confirmed a `.cancelLeaseRequest`.
  public mutating func leaseRequestCanceled(requestID: UInt64, now: UInt64) -> [Action] {
    guard let key = requestKeys.removeValue(forKey: requestID) else { return [] }
    keys[key]?.pendingRequests.remove(requestID)
    return schedule(key, now: now)
  }

  /// Whether `task` is in flight on lease `leaseID`: false for the reply of an attempt
  /// already counted lost (its worker's node was declared dead while the reply was on
  /// its way, as across a partition that healed).
  public func isInFlight(_ task: TaskID, on leaseID: UInt64) -> Bool {
    leases[leaseID]?.inFlight[task] != nil
  }

  /// A pushed task got its reply. The lease takes the next task or goes idle.
  public mutating func taskReplied(_ task: TaskID, leaseID: UInt64, now: UInt64) -> [Action] {
    // Changed in place: a copy taken out and written back would copy its table of
    // tasks in flight at the first change (copy-on-write), once per reply.
    guard let (function, took, handedBack, key) = leases[leaseID]?.replied(task, now: now) else { return [] }
    if !handedBack { measured(function, took: took) }
    return schedule(key, now: now)
  }

  /// The worker of `leaseID` handed `task` back unrun: the task running there blocked
  /// (in `get`/`wait`), and what waits behind a blocked task may be what it waits
  /// for. The task goes back into its queue in submission order, the lease takes one
  /// task at a time until idle, and its shape no longer counts as short.
  ///
  /// Only a task queued behind a running one is ever handed back, so that task is
  /// still in flight on the lease. A worker that hands back its only task breaks the
  /// protocol (and would bounce it for ever): the task is queued again all the same,
  /// and the lease is given back with `disconnect` (its node stops that worker).
  public mutating func taskHandedBack(_ task: TaskID, leaseID: UInt64, now: UInt64) -> [Action] {
    guard var l = leases[leaseID], let function = l.inFlight.removeValue(forKey: task) else { return [] }
    // FIFO: the task running there, the one that blocked, is the earliest in flight.
    if let running = l.inFlight.min(by: { $0.key.counter < $1.key.counter }) {
      recentNanos[running.value] = nil
    }
    var actions: [Action] = []
    if l.inFlight.isEmpty {
      leases[leaseID] = nil
      keys[l.key]?.leases.remove(leaseID)
      actions.append(.returnLease(leaseID: leaseID, disconnect: true))
    } else {
      l.handedBack = true
      leases[leaseID] = l
    }
    // Back in submission order: before the first queued task submitted after it
    // (a worker hands several back in their order; the scan stops near the front).
    var ks = keys.removeValue(forKey: l.key) ?? KeyState()
    ks.queue.insertInOrder(Queued(task: task, function: function))
    keys[l.key] = ks
    return actions + schedule(l.key, now: now)
  }

  private mutating func measured(_ function: FunctionTag, took: UInt64) {
    if let recent = recentNanos[function] {
      recentNanos[function] = (recent / 4) * 3 + took / 4
    } else {
      if recentNanos.count >= Self.maxMeasuredFunctions { recentNanos.removeAll() }
      recentNanos[function] = took
    }
  }

  private func isShort(_ function: FunctionTag) -> Bool {
    guard function != 0, let recent = recentNanos[function] else { return false }
    return recent < settings.pipelineBelowNanos
  }

  /// How many tasks a lease may have in flight: `maxTasksInFlightPerWorker`, or the
  /// pipeline's depth while everything in flight there is short (`allShort`).
  func depth(_ l: LeaseState, allShort: Bool) -> Int {
    let fixed = settings.maxTasksInFlightPerWorker
    guard !l.handedBack else { return 1 }
    return allShort ? max(fixed, settings.pipelineDepth) : fixed
  }

  /// The connection to the leased worker broke: its in-flight tasks are lost.
  public mutating func workerLost(leaseID: UInt64, now: UInt64) -> [Action] {
    guard let l = leases.removeValue(forKey: leaseID) else { return [] }
    keys[l.key]?.leases.remove(leaseID)
    var actions: [Action] = [.returnLease(leaseID: leaseID, disconnect: true)]
    if !l.inFlight.isEmpty {
      actions.append(.tasksLost(l.inFlight.keys.sorted { $0.counter < $1.counter }, lease: l.lease))
    }
    return actions + schedule(l.key, now: now)
  }

  /// Removes a queued (not yet pushed) task. True when it was queued.
  public mutating func taskCanceled(_ task: TaskID, now: UInt64) -> (removed: Bool, actions: [Action]) {
    // Each shape's queue (few) is asked where it lies: changed while the table was
    // being iterated by `for`, a queue was copied whole (copy-on-write), a cost per
    // cancel that grew with the tasks queued.
    var i = keys.startIndex
    while i != keys.endIndex {
      if keys.values[i].queue.remove(task) { return (true, schedule(keys.keys[i], now: now)) }
      keys.formIndex(after: &i)
    }
    return (false, [])
  }

  /// Periodic: return leases idle past the linger, retry rejected shapes.
  public mutating func tick(now: UInt64) -> [Action] {
    var actions: [Action] = []
    for key in Array(keys.keys) { actions += schedule(key, now: now) }
    return actions
  }

  /// The owner is going away: every lease it holds goes back to its node and every
  /// lease request still out is canceled, so no node keeps a worker (and its CPUs) for
  /// an owner that is gone. Leaves the submitter empty.
  public mutating func ownerExiting() -> [Action] {
    var actions: [Action] = leases.keys.sorted().map { .returnLease(leaseID: $0, disconnect: false) }
    actions += requestKeys.keys.sorted().map { .cancelLeaseRequest(requestID: $0) }
    leases.removeAll()
    requestKeys.removeAll()
    keys.removeAll()
    return actions
  }

  /// The earliest time `tick` has something to do, if any.
  public func nextDeadline() -> UInt64? {
    var d: UInt64? = nil
    for l in leases.values { if let s = l.idleSince { d = min(d ?? .max, s + settings.idleLingerNanos) } }
    for ks in keys.values { if let r = ks.retryAt { d = min(d ?? .max, r) } }
    return d
  }

  // MARK: internals

  private mutating func schedule(_ key: Key, now: UInt64) -> [Action] {
    // Taken out of the table while it changes: a copy left in it would make the first
    // change to the queue copy it whole (copy-on-write), a cost that grows with the queue.
    guard var ks = keys.removeValue(forKey: key) else { return [] }
    var actions: [Action] = []
    // 1. Fill leases that have room, in rounds of one task each, least loaded first:
    // no lease takes a second task while another of the shape has none.
    if !ks.queue.isEmpty {
      // The leases too are taken out while tasks are pushed to them (each push changes
      // its lease's table of tasks in flight), and put back after.
      var open: [(id: UInt64, lease: LeaseState, allShort: Bool)] = ks.leases.compactMap { lid in
        leases.removeValue(forKey: lid).map { l in (lid, l, l.inFlight.values.allSatisfy(isShort)) }
      }
      open.sort { ($0.lease.inFlight.count, $0.id) < ($1.lease.inFlight.count, $1.id) }
      while !ks.queue.isEmpty {
        // Each round fills up to one more than the least loaded lease that has room (so
        // it pushes at least once): rounds are bounded by the pushes.
        var low = Int.max
        for o in open where o.lease.inFlight.count < depth(o.lease, allShort: o.allShort) {
          low = min(low, o.lease.inFlight.count)
        }
        guard low < Int.max else { break }
        for i in open.indices where !ks.queue.isEmpty {
          guard open[i].lease.inFlight.count <= low,
                open[i].lease.inFlight.count < depth(open[i].lease, allShort: open[i].allShort) else { continue }
          guard let q = ks.queue.popFirst() else { break }
          if open[i].lease.inFlight.isEmpty { open[i].lease.headStart = now }
          open[i].lease.inFlight[q.task] = q.function
          open[i].lease.idleSince = nil
          open[i].allShort = open[i].allShort && isShort(q.function)
          actions.append(.push(q.task, lease: open[i].lease.lease))
        }
      }
      for o in open { leases[o.id] = o.lease }
    }
    // 2. Return leases idle past the linger (only when nothing is queued: a lease with
    // a task pushed just now is not idle), in the order of their ids.
    if ks.queue.isEmpty {
      var idle: [UInt64] = []
      for lid in ks.leases {
        if let l = leases[lid], let s = l.idleSince, l.inFlight.isEmpty, now >= s + settings.idleLingerNanos { idle.append(lid) }
      }
      for lid in idle.sorted() {
        leases[lid] = nil
        ks.leases.remove(lid)
        actions.append(.returnLease(leaseID: lid, disconnect: false))
      }
    }
    // 3. Ask for more leases for what is still queued, or cancel what is not needed.
    if ks.queue.isEmpty {
      for r in ks.pendingRequests.sorted() { actions.append(.cancelLeaseRequest(requestID: r)) }
      ks.pendingRequests.removeAll()
      ks.retryAt = nil
    } else if ks.retryAt.map({ now >= $0 }) ?? true {
      ks.retryAt = nil
      let want = min(ks.queue.count, settings.maxPendingLeaseRequests)
      while ks.pendingRequests.count < want {
        let r = nextRequestID
        nextRequestID += 1
        // Each request speaks for a different queued task, so several requests can
        // follow the arguments of several tasks to their nodes.
        guard let task = ks.queue.task(near: ks.pendingRequests.count) else { break }
        ks.pendingRequests.insert(r)
        requestKeys[r] = key
        actions.append(.requestLease(requestID: r, key: key, forTask: task))
      }
    }
    if !(ks.queue.isEmpty && ks.leases.isEmpty && ks.pendingRequests.isEmpty) { keys[key] = ks }
    return actions
  }
}
