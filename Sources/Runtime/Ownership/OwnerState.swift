import Foundation
import RuntimeProto

/// A task argument as the language layer gives it: a value (inlined in the spec) or a
/// ref (resolved before the task runs). A `value`'s `nestedRefs` may list refs by id
/// only: the owner fills in their owners.
public struct TaskArgument: Sendable {
  public enum Kind: Sendable { case value(Swiftray_RayObject), ref(ObjectID, owner: Swiftray_Address?) }
  public var kind: Kind
  public init(_ kind: Kind) { self.kind = kind }
}

/// Sizes of an owner's tables, for leak checks and `memory` views.
public struct OwnerStats: Sendable {
  public var objects: Int, objectBytes: Int, references: Int, tasks: Int, pendingTasks: Int, leases: Int
  /// Objects of this owner that live in the shared-memory store, and their bytes.
  public var storedObjects: Int, storedBytes: Int
  /// Objects a blocked `get`/`wait` of this process is registered on.
  public var waitedObjects = 0
}

/// Everything one process knows and decides as an owner (DESIGN §3): its references,
/// tasks and their lineage, argument resolution, the values it holds, who owns the refs
/// it borrows, what the values it holds contain, its leases, its actor calls, and what it
/// does when a node dies. One event is one transition; each returns `Effects`, the
/// work its shell (`CoreWorker`) carries out afterwards: fetches, lease requests and
/// pushes, waking readers, answering borrowers, freeing stored copies, telling owners of
/// borrowers, warnings.
///
/// `Waiter` is the shell's blocked reader (woken through `Effects.wake`), `Requester` a
/// remote reader waiting for a value (answered through `Effects.replies`): both opaque
/// here.
///
/// Threading: a value type, owned by its shell under one lock; nothing here blocks,
/// reads a clock (time is passed in) or touches the network.
public struct OwnerState<Waiter: AnyObject & Sendable, Requester: Sendable>: Sendable {
  /// What a submitted task is, for where it goes once its arguments are resolved.
  public enum TaskKind: Sendable { case normal, actorCreation(sync: Bool), actorCall(ActorID, maxTaskRetries: Int) }

  /// An actor this process created: its handle object's entry.
  public struct OwnedActor: Sendable {
    public var actor: ActorID
    public var detached: Bool
    /// The constructor's argument refs, held while the actor may restart.
    public var args: [ObjectID]
  }

  /// A borrower registration (`added`, acknowledged before a reply that carries the
  /// ref leaves) or removal, sent to the ref's owner.
  public struct BorrowerChange: Sendable, Equatable {
    public var owner: Swiftray_Address
    public var object: ObjectID
    public var borrower: WorkerID
    public var added: Bool
    public var count: Int32
    public init(owner: Swiftray_Address, object: ObjectID, borrower: WorkerID, added: Bool, count: Int32) {
      self.owner = owner; self.object = object; self.borrower = borrower; self.added = added; self.count = count
    }
  }

  /// Lease work for the shell, with what it needs read under the same lock.
  public enum LeaseStep: Sendable {
    /// Ask a NodeManager for a lease; `preferredNode`: where most of the first task's
    /// stored argument bytes live.
    case request(requestID: UInt64, key: SchedulingKey, preferredNode: Data?)
    case cancelRequest(requestID: UInt64)
    /// `spec` to the leased worker at `worker`, with the lease's grant and GPUs.
    case push(TaskID, spec: Swiftray_TaskSpec, lease: NormalTaskSubmitter.GrantedLease,
              worker: Swiftray_Address, gpuIDs: [Int32], grant: Data)
    /// `node`: the granting NodeManager when not this node's.
    case giveBack(leaseID: UInt64, disconnect: Bool, node: String?)
    /// Tasks on a worker that is gone; `nodeDeath`: why its node was declared dead.
    case lost([TaskID], lease: NormalTaskSubmitter.GrantedLease, node: String?, nodeDeath: String?)
  }

  /// The work an event leaves for the shell, in the order it should be done
  /// (`CoreWorker.perform`). Most events leave none: the fields then live nowhere
  /// (`box` is nil), so making, moving and dropping an empty one costs no retain or
  /// release of a dozen empty arrays (a ref added or dropped, once per ref unpickled,
  /// did that). A value: a copy changed later is copied first.
  public struct Effects: Sendable {
    struct Fields {
      var fetches: [ObjectID] = []
      var leases: [LeaseStep] = []
      var wake: [Waiter] = []
      var replies: [(to: Requester, object: Swiftray_RayObject)] = []
      var freeStored: [(ObjectID, Swiftray_RayObject)] = []
      var borrowerChanges: [BorrowerChange] = []
      var actorsOutOfScope: [ActorID] = []
      var promote: (ids: [ObjectID], why: String)? = nil
      var armTick: UInt64? = nil
      var warnings: [String] = []
      var actorSteps: Bool = false
      var generatorProgress: [(to: Requester, consumed: Int, closed: Bool)] = []
      var expirePolls: [(TaskID, UInt64)] = []
    }
    final class Box: @unchecked Sendable {
      var fields = Fields()
    }
    private var box: Box?
    public init() {}
    /// Nothing to carry out (no field was ever set).
    public var isEmpty: Bool { box == nil }
    /// The box to change: made on first use, copied when shared.
    private var unique: Box {
      mutating get {
        if box == nil {
          box = Box()
        } else if !isKnownUniquelyReferenced(&box!) {
          let copy = Box()
          copy.fields = box!.fields
          box = copy
        }
        return box!
      }
    }
    /// Borrowed values to ask their owners for.
    public var fetches: [ObjectID] {
      get { box?.fields.fetches ?? [] }
      set { unique.fields.fetches = newValue }
      _modify { let b = unique; yield &b.fields.fetches }
    }
    public var leases: [LeaseStep] {
      get { box?.fields.leases ?? [] }
      set { unique.fields.leases = newValue }
      _modify { let b = unique; yield &b.fields.leases }
    }
    public var wake: [Waiter] {
      get { box?.fields.wake ?? [] }
      set { unique.fields.wake = newValue }
      _modify { let b = unique; yield &b.fields.wake }
    }
    public var replies: [(to: Requester, object: Swiftray_RayObject)] {
      get { box?.fields.replies ?? [] }
      set { unique.fields.replies = newValue }
      _modify { let b = unique; yield &b.fields.replies }
    }
    /// Owned stored values to free where they live.
    public var freeStored: [(ObjectID, Swiftray_RayObject)] {
      get { box?.fields.freeStored ?? [] }
      set { unique.fields.freeStored = newValue }
      _modify { let b = unique; yield &b.fields.freeStored }
    }
    public var borrowerChanges: [BorrowerChange] {
      get { box?.fields.borrowerChanges ?? [] }
      set { unique.fields.borrowerChanges = newValue }
      _modify { let b = unique; yield &b.fields.borrowerChanges }
    }
    /// Actors created here whose every handle is gone.
    public var actorsOutOfScope: [ActorID] {
      get { box?.fields.actorsOutOfScope ?? [] }
      set { unique.fields.actorsOutOfScope = newValue }
      _modify { let b = unique; yield &b.fields.actorsOutOfScope }
    }
    /// Copies this node's store pulled, to make primary (their node died, `why`).
    public var promote: (ids: [ObjectID], why: String)? {
      get { box?.fields.promote ?? nil }
      set { unique.fields.promote = newValue }
      _modify { let b = unique; yield &b.fields.promote }
    }
    /// The time to run `tick` at, when a timer must be armed for it.
    public var armTick: UInt64? {
      get { box?.fields.armTick ?? nil }
      set { unique.fields.armTick = newValue }
      _modify { let b = unique; yield &b.fields.armTick }
    }
    public var warnings: [String] {
      get { box?.fields.warnings ?? [] }
      set { unique.fields.warnings = newValue }
      _modify { let b = unique; yield &b.fields.warnings }
    }
    /// Actor steps were queued (the shell drains them in order).
    public var actorSteps: Bool {
      get { box?.fields.actorSteps ?? false }
      set { unique.fields.actorSteps = newValue }
      _modify { let b = unique; yield &b.fields.actorSteps }
    }
    /// Workers waiting for a streaming generator's reader, to answer with its progress.
    public var generatorProgress: [(to: Requester, consumed: Int, closed: Bool)] {
      get { box?.fields.generatorProgress ?? [] }
      set { unique.fields.generatorProgress = newValue }
      _modify { let b = unique; yield &b.fields.generatorProgress }
    }
    /// Held back-pressure waits to answer within a second if still held
    /// (`generatorPollExpired`).
    public var expirePolls: [(TaskID, UInt64)] {
      get { box?.fields.expirePolls ?? [] }
      set { unique.fields.expirePolls = newValue }
      _modify { let b = unique; yield &b.fields.expirePolls }
    }
  }

  public enum RemoteGet: Sendable {
    case ready(Swiftray_RayObject)
    /// Answered through `Effects.replies` when the value arrives.
    case queued
    /// Too many readers wait for this object already.
    case crowded
    case notFound
  }

  /// What a cancel does once decided.
  public enum CancelStep: Sendable, Equatable {
    /// The task had finished: nothing to cancel.
    case finished
    /// Cancelled here (its returns hold the error already).
    case done
    /// Running or queued at a worker: ask it (a normal task's worker may be killed).
    case remote(Swiftray_Address, WorkerID, killable: Bool)
    /// Asked, nothing to send.
    case pending
  }

  public static var maxRemoteGetsPerObject: Int { 10_000 }

  // The owner's tables.
  public internal(set) var refs = ReferenceTable()
  public internal(set) var tasks = TaskManager()
  /// Streaming generators submitted here (`num_returns="streaming"`).
  public internal(set) var streams = GeneratorStreams<Requester>()
  var resolver = DependencyResolver()
  public internal(set) var submitter: NormalTaskSubmitter
  var actorSubmitter = ActorTaskSubmitter()
  /// Actor work decided here, carried out in order by the shell (`takeActorSteps`).
  var actorOutbox: [ActorStep] = []
  var actorDraining = false
  var ownedActors: [ObjectID: OwnedActor] = [:]
  /// Named creations registered by their creator's thread (a taken name raises there).
  var syncCreations: Set<TaskID> = []
  var syncReady: Set<TaskID> = []
  /// Values held here: owned ones, cached borrowed ones, error objects.
  public internal(set) var store = ObjectTable()
  /// Owners of the refs this process borrows (absent: owned here).
  public internal(set) var owners: [ObjectID: Swiftray_Address] = [:]
  /// Refs contained in values held here (owned objects, cached borrowed values).
  var nestedOf: [ObjectID: [ObjectID]] = [:]
  var fetching: Set<ObjectID> = []
  var waiters: [ObjectID: [Waiter]] = [:]
  /// Borrowers asking for values owned here that do not exist yet.
  var remoteGets: [ObjectID: [Requester]] = [:]
  var leases = HeldLeases()
  /// Nodes the cluster declared dead: why, by node id and by NodeManager address.
  public internal(set) var deadNodes: [Data: String] = [:]
  var deadNodeManagers: [String: String] = [:]
  var idGen: TaskIDGenerator
  public let selfAddress: Swiftray_Address
  let me: WorkerID
  let putTask: TaskID
  var putCounter: UInt32 = 0
  var tickAt: UInt64?
  /// This owner's task state changes, on their way to the head (`drainTaskEvents`).
  public var taskEvents: TaskEventBuffer
  /// The last actor whose finished calls were recorded, the submitter's `epoch` then,
  /// and its worker as events name it: an actor's calls name one worker until its
  /// state changes (no lookup or copy of its address per call).
  private var actorWorkerMemo: (actor: Data, epoch: UInt64, worker: TaskEventRecord.Worker?)?
  /// Owned stored objects whose primary is on another node and of which this node's
  /// store pulled a copy: if that node dies, the copy is promoted instead of rebuilding.
  var localCopies: Set<ObjectID> = []
  let maxLineageBytes: Int
  public internal(set) var shuttingDown = false

  public init(submitter: NormalTaskSubmitter, idGen: TaskIDGenerator, selfAddress: Swiftray_Address,
              maxLineageBytes: Int = 1 << 30, taskEvents: TaskEventBuffer = TaskEventBuffer(capacity: 100_000)) {
    self.taskEvents = taskEvents
    var gen = idGen
    putTask = gen.next()
    self.idGen = gen
    self.submitter = submitter
    self.selfAddress = selfAddress
    me = WorkerID(binary: selfAddress.workerID) ?? .nil_
    self.maxLineageBytes = maxLineageBytes
  }

  /// The job new tasks belong to (a worker takes on the job of the task it runs).
  public var job: JobID {
    get { idGen.job }
    set { idGen.job = newValue }
  }

  /// From now on worker deaths are expected, not failures. True the first time.
  public mutating func shutdownStarted() -> Bool {
    defer { shuttingDown = true }
    return !shuttingDown
  }

  // MARK: - submission

  /// Submits a task: fills in the spec's arguments (each ref with its owner), registers
  /// the returns with one local reference each, holds the arguments' refs for the task,
  /// records it and starts resolving its arguments. `parent`: the task running here.
  /// Refused (an actor's `max_pending_calls`) before anything is registered.
  public mutating func taskSubmitted(_ spec: Swiftray_TaskSpec, args: [TaskArgument], kind: TaskKind, parent: TaskID?,
                                     now: UInt64) -> Result<(task: TaskID, returns: [ObjectID], effects: Effects), SwiftrayError> {
    var spec = spec
    spec.owner = selfAddress
    var deps: [ObjectID] = []      // ref arguments: resolved before the task runs
    var nested: [ObjectID] = []    // refs inside value arguments: only held
    var e = Effects()
    let tid = idGen.next()
    var held: [ObjectID] = []
    switch kind {
    case .normal: break
    case .actorCreation(let sync):
      spec.actorID = Data(tid.binary)
      // The handle object: the caller's handle holds its one local reference.
      refs.ownedObjectCreated(tid.actorHandleObject)
      _ = refs.localRefAdded(tid.actorHandleObject)
      if sync { syncCreations.insert(tid) }
    case .actorCall(let actor, let retries):
      switch actorSubmitter.callSubmitted(tid, actor: actor, maxTaskRetries: retries) {
      case .failure(let err): return .failure(err)
      case .success(let admitted):
        spec.actorSeq = admitted.seq
        queueActorSteps(admitted.actions, &e)
      }
      // A pending call keeps its actor's handle alive, as an argument would.
      if refs.isInScope(actor.actorHandleObject) { held.append(actor.actorHandleObject) }
    }
    spec.taskID = Data(tid.binary)
    spec.jobID = Data(JobID(UInt32(truncatingIfNeeded: tid.job)).binary)
    if let parent { spec.parentTaskID = Data(parent.binary) }
    for a in args { if case .ref(let id, let owner?) = a.kind, owners[id] == nil, owner.workerID != selfAddress.workerID { owners[id] = owner } }
    spec.args = args.map { a in
      var t = Swiftray_TaskArg()
      switch a.kind {
      case .value(var v):
        nested += v.nestedRefs.compactMap { ObjectID(binary: $0.objectID) }
        if !v.nestedRefs.isEmpty { v.nestedRefs = nestedReferences(v.nestedRefs) }
        t.value = v
      case .ref(let id, _):
        var r = Swiftray_ObjectReference()
        r.objectID = Data(id.binary)
        // Each ref argument names its owner: the one recorded for it here, else this process.
        r.owner = owners[id] ?? selfAddress
        t.ref = r
        deps.append(id)
      }
      return t
    }
    let ids = (0..<Int(max(spec.numReturns, 0))).map { ObjectID.forReturn(of: tid, index: $0) }
    for id in ids { refs.ownedObjectCreated(id); _ = refs.localRefAdded(id) }
    // The task holds its ref arguments and the refs inside its value arguments.
    refs.submittedTaskRefsAdded(deps + nested + held)
    tasks.taskSubmitted(tid, spec: spec, extraRefs: held)
    if spec.streaming { streams.started(tid) }
    let store = self.store
    if resolver.taskArrived(tid, dependencies: deps, isReady: { store.contains($0) }) {
      taskReady(tid, now: now, &e)
    } else {
      taskEvents.record(spec, .pendingArgsAvail, now: now, info: true)
      for d in deps where !store.contains(d) { startFetch(d, &e) }
    }
    return .success((tid, ids, e))
  }

  /// The id of the next `put` (of the task running here, else of this process).
  public mutating func nextPutID(running: TaskID?) -> ObjectID {
    putCounter &+= 1
    return ObjectID.forPut(by: running ?? putTask, index: putCounter)
  }

  /// A value put here: owned, with one local reference (the caller's).
  public mutating func objectPut(_ object: Swiftray_RayObject, id: ObjectID) -> Effects {
    var object = object
    if !object.nestedRefs.isEmpty {
      object.nestedRefs = nestedReferences(object.nestedRefs)
      holdNested(id, object.nestedRefs)
    }
    refs.ownedObjectCreated(id)
    _ = refs.localRefAdded(id)
    store[id] = object
    var e = Effects()
    e.wake = waiters.removeValue(forKey: id) ?? []
    return e
  }

  // MARK: - reading

  /// A reader waits for `needed` of `ids` (distinct). Borrowed ones not here are asked
  /// of their owners; an owned one out of scope and not being computed was freed and
  /// reads as that error. Returns `waiter` (made by `makeWaiter` with the count still
  /// missing) registered on the missing ids, or nil when enough are here.
  public mutating func waitStarted(_ ids: [ObjectID], needed: Int, makeWaiter: (Int) -> Waiter) -> (Waiter?, Effects) {
    var e = Effects()
    let need = min(needed, ids.count)
    var missing: [ObjectID] = []
    for id in ids where !store.contains(id) { missing.append(id) }
    if ids.count - missing.count >= need { return (nil, e) }
    // Each id looked up as few times as it can be (a wait over many refs, again and
    // again as they come in, is the pattern of `wait` in a loop). Borrowed ones first:
    // one put by a task of ours still running elsewhere is borrowed, not pending here.
    var stillMissing: [ObjectID] = []
    stillMissing.reserveCapacity(missing.count)
    for id in missing {
      if owners[id] != nil { _ = startFetch(id, &e); stillMissing.append(id); continue }
      if tasks.isPending(id.task) || refs.isInScope(id) { stillMissing.append(id); continue }
      // Owned here, out of scope and not being computed: it was freed. (A value in
      // scope may be between its task's reply and the store: wait for it.)
      store[id] = Self.errorObject(.objectFreed, "Object \(id.hex) was freed: no reference to it remained in its owner.")
    }
    let have = ids.count - stillMissing.count
    if have >= need { return (nil, e) }
    let w = makeWaiter(need - have)
    for id in stillMissing { waiters[id, default: []].append(w) }
    return (w, e)
  }

  /// A reader's wait timed out: unregisters it. True when enough arrived meanwhile.
  public mutating func waitEnded(_ ids: [ObjectID], needed: Int, waiter: Waiter) -> Bool {
    var have = 0
    for id in ids {
      if store.contains(id) { have += 1 }
      guard let i = waiters.index(forKey: id) else { continue }
      waiters.values[i].removeAll { $0 === waiter }
      if waiters.values[i].isEmpty { waiters.remove(at: i) }
    }
    return have >= min(needed, ids.count)
  }

  /// Another process asks for a value owned (or being computed) here.
  public mutating func remoteGet(_ id: ObjectID, from requester: Requester) -> RemoteGet {
    if let o = store[id] { return .ready(o) }
    guard tasks.isPending(id.task) || refs.isInScope(id) else { return .notFound }
    // Bounded: peers asking again and again for one object cannot grow it without end.
    guard remoteGets[id, default: []].count < Self.maxRemoteGetsPerObject else { return .crowded }
    remoteGets[id, default: []].append(requester)
    return .queued
  }

  /// A fetch from `id`'s owner ended with `object` (the value or the error saying why not).
  public mutating func fetchEnded(_ id: ObjectID, _ object: Swiftray_RayObject, now: UInt64) -> Effects {
    fetching.remove(id)
    var e = Effects()
    objectsArrived([(id, object)], now: now, &e)
    return e
  }

  /// Values (or error objects) arrived: stored, and whoever waited is woken.
  public mutating func objectsArrived(_ objs: [(ObjectID, Swiftray_RayObject)], now: UInt64) -> Effects {
    var e = Effects()
    objectsArrived(objs, now: now, &e)
    return e
  }

  /// Marks a borrowed object as being fetched from its owner. True when it is to be sent.
  @discardableResult
  mutating func startFetch(_ id: ObjectID, _ e: inout Effects) -> Bool {
    guard owners[id] != nil, !store.contains(id), !fetching.contains(id) else { return false }
    fetching.insert(id)
    e.fetches.append(id)
    return true
  }

  mutating func objectsArrived(_ objs: [(ObjectID, Swiftray_RayObject)], now: UInt64, _ e: inout Effects) {
    var refActions: [ReferenceTable.Action] = []
    for (id, o) in objs {
      // Refs inside the value came registered for this process by its sender: the
      // value holds them while it is kept here.
      let nested = o.nestedRefs.compactMap { r in ObjectID(binary: r.objectID).map { (r, $0) } }
      for (r, n) in nested where r.owner.workerID != selfAddress.workerID && owners[n] == nil { owners[n] = r.owner }
      refs.containedRefsAdded(nested.map(\.1))
      for (_, n) in nested { refActions += refs.registrationsReceived(n, count: 1, me: me) }
      // A freed owned object must not come back to life from a late reply (nor a
      // value be stored twice).
      if store.contains(id) || (owners[id] == nil && !refs.isInScope(id) && !tasks.isPending(id.task)) {
        if o.storeSize > 0 && !store.contains(id) { e.freeStored.append((id, o)) }
        refActions += refs.containedRefsRemoved(nested.map(\.1))
        continue
      }
      if !nested.isEmpty { nestedOf[id] = nested.map(\.1) }
      store[id] = o
      e.wake += waiters.removeValue(forKey: id) ?? []
      for r in remoteGets.removeValue(forKey: id) ?? [] { e.replies.append((r, o)) }
      for t in resolver.objectAvailable(id) { taskReady(t, now: now, &e) }
    }
    refActionsDecided(refActions, now: now, &e)
  }

  // MARK: - references

  /// `now` is read only when the change needs it (rarely: this runs once per ref
  /// unpickled, and a clock read cost as much as the rest of it).
  public mutating func localRefAdded(_ id: ObjectID, owner: Swiftray_Address?, now: @autoclosure () -> UInt64) -> Effects {
    if let owner, owner.workerID != selfAddress.workerID {
      return borrowedRefAdded(id, owner: { owner }, now: now())
    }
    var e = Effects()
    refActionsDecided(refs.localRefAdded(id, borrowed: owners.index(forKey: id) != nil), now: now(), &e)
    return e
  }

  /// A ref owned by another process was made here. `owner` is read (an address copied)
  /// only when no owner is recorded for `id` yet.
  public mutating func borrowedRefAdded(_ id: ObjectID, owner: () -> Swiftray_Address,
                                        now: @autoclosure () -> UInt64) -> Effects {
    let (actions, recorded) = refs.borrowedRefAdded(id)
    // Looked up only the first time (an absent owner inserted by the same access).
    if !recorded { Self.touch(&owners[id, default: owner()]) }
    var e = Effects()
    refActionsDecided(actions, now: now(), &e)
    return e
  }

  public mutating func localRefRemoved(_ id: ObjectID, now: @autoclosure () -> UInt64) -> Effects {
    var e = Effects()
    refActionsDecided(refs.localRefRemoved(id), now: now(), &e)
    return e
  }

  /// An access that changes nothing: `touch(&map[k, default: v])` inserts `v` when `k`
  /// is absent, with one hash lookup.
  @inline(__always) static func touch<T>(_ value: inout T) {}

  /// The ref was serialized into a value that may reach a borrower.
  public mutating func refEscaped(_ id: ObjectID) { refs.refEscaped(id) }

  /// A borrower (on `node`, when it said) registered; false when the object has too
  /// many borrowers already. One on a node known dead is not counted.
  public mutating func borrowerAdded(_ id: ObjectID, _ borrower: WorkerID, node: Data = Data(), count: Int) -> Bool {
    // A peer's bytes: kept as a node id only when they are one.
    let node = NodeID(binary: node) == nil ? Data() : node
    if !node.isEmpty, deadNodes[node] != nil { return true }
    return refs.borrowerAdded(id, borrower, node: node, count: count)
  }

  /// Workers (or drivers) exited somewhere in the cluster: they borrow nothing any more.
  public mutating func borrowersDied(_ workers: [WorkerID], now: UInt64) -> Effects {
    var e = Effects()
    refActionsDecided(refs.borrowersDied(workers.filter { $0 != me }), now: now, &e)
    return e
  }

  public mutating func borrowerRemoved(_ id: ObjectID, _ borrower: WorkerID, count: Int, now: UInt64) -> Effects {
    var e = Effects()
    refActionsDecided(refs.borrowerRemoved(id, borrower, count: count), now: now, &e)
    return e
  }

  /// The owner's address for a ref this process knows (itself when it owns it).
  public func ownerAddress(_ id: ObjectID) -> Swiftray_Address { owners[id] ?? selfAddress }

  /// Before refs inside a value leave this process for `receiver`: those owned here
  /// count it as a borrower now; the others are returned, to register at their owners.
  public mutating func receiverRegistered(_ receiver: WorkerID, node: Data, of refs: [Swiftray_ObjectReference]) -> [(Swiftray_Address, ObjectID)] {
    var remote: [(Swiftray_Address, ObjectID)] = []
    for r in refs {
      guard let id = ObjectID(binary: r.objectID) else { continue }
      if let owner = owners[id] { remote.append((owner, id)) } else { _ = borrowerAdded(id, receiver, node: node, count: 1) }
    }
    return remote
  }

  /// Refs listed by id inside a value, with their owners filled in (this process when
  /// it owns them).
  public func nestedReferences(_ refs: [Swiftray_ObjectReference]) -> [Swiftray_ObjectReference] {
    refs.map { r in
      var r = r
      if !r.hasOwner, let id = ObjectID(binary: r.objectID) { r.owner = owners[id] ?? selfAddress }
      return r
    }
  }

  /// `id`, a value held here, contains `refs`: they live at least as long as it does.
  mutating func holdNested(_ id: ObjectID, _ refs: [Swiftray_ObjectReference]) {
    let ids = refs.compactMap { ObjectID(binary: $0.objectID) }
    nestedOf[id] = ids
    self.refs.containedRefsAdded(ids)
  }

  /// Carries out reference-count decisions: frees owned values (and what they contain,
  /// recursively), forgets borrowed ones, and tells owners of borrowers.
  mutating func refActionsDecided(_ actions: [ReferenceTable.Action], now: @autoclosure () -> UInt64, _ e: inout Effects) {
    guard !actions.isEmpty else { return }
    var abandoned: [TaskManager.Action] = []
    var work = actions
    while let a = work.popLast() {
      switch a {
      case .free(let id):
        if let a = ownedActors.removeValue(forKey: id) {
          if !a.detached { e.actorsOutOfScope.append(a.actor) }
          work += refs.submittedTaskRefsRemoved(a.args)
          // Announced, its constructor still waiting for arguments: it never runs.
          if resolver.taskRemoved(a.actor) { abandoned += tasks.taskReplied(a.actor, outcome: .cancelled) }
        }
        if let o = store.removeValue(forKey: id), o.storeSize > 0 {
          localCopies.remove(id)
          e.freeStored.append((id, o))
        }
        if let nested = nestedOf.removeValue(forKey: id) { work += refs.containedRefsRemoved(nested) }
        if id == id.task.actorHandleObject { actorSubmitter.handleReleased(id.task) }
        releaseLineageIfUnused(id.task)
      case .forget(let id, let n):
        store[id] = nil
        if id == id.task.actorHandleObject { actorSubmitter.handleReleased(id.task) }
        if let nested = nestedOf.removeValue(forKey: id) { work += refs.containedRefsRemoved(nested) }
        if let owner = owners.removeValue(forKey: id), n > 0 {
          e.borrowerChanges.append(.init(owner: owner, object: id, borrower: me, added: false, count: Int32(clamping: n)))
        }
      case .register(let id):
        if let owner = owners[id] {
          e.borrowerChanges.append(.init(owner: owner, object: id, borrower: me, added: true, count: 1))
        }
      }
    }
    if !abandoned.isEmpty { taskActionsDecided(abandoned, reply: nil, now: now(), &e) }
  }

  // MARK: - task outcomes

  /// A normal task's reply came back from the worker of `leaseID`. Returns the nodes
  /// of stored arguments the worker could not read, when that is why it did not run
  /// (the shell waits for the cluster's verdict on them, then `argumentsVerdict`).
  /// The reply of an attempt already counted lost is refused: its worker's node was
  /// declared dead while it was on its way (a partition that healed, a paused node), so
  /// the task was retried or failed, and what the reply stored lives on a fenced node.
  public mutating func taskReplied(_ tid: TaskID, leaseID: UInt64, reply: Swiftray_PushTaskReply,
                                   now: UInt64) -> (lostArgumentNodes: Set<Data>?, Effects) {
    var e = Effects()
    guard submitter.isInFlight(tid, on: leaseID) else { return (nil, e) }
    if reply.handedBack {
      absorb(submitter.taskHandedBack(tid, leaseID: leaseID, now: now), now: now, &e)
      return (nil, e)
    }
    absorb(submitter.taskReplied(tid, leaseID: leaseID, now: now), now: now, &e)
    if !reply.lostArguments.isEmpty {
      // The nodes the worker tried: those of the arguments as they were sent (since
      // then they may have been rebuilt elsewhere already).
      let lost = Set(reply.lostArguments)
      let nodes = Set((tasks.spec(tid)?.args ?? []).filter { lost.contains($0.objectID) }.map(\.value.storeNode).filter { !$0.isEmpty })
      return (nodes, e)
    }
    taskActionsDecided(tasks.taskReplied(tid, outcome: Self.outcome(reply, retryable: reply.isRetryableError),
                                         returnsInline: Self.allInline(reply)), reply: reply, now: now, &e)
    return (nil, e)
  }

  /// Every return is in the reply itself, none in a node's store (so none can be lost).
  static func allInline(_ reply: Swiftray_PushTaskReply) -> Bool {
    reply.returns.allSatisfy { $0.object.storeSize == 0 && $0.object.storeNode.isEmpty }
  }

  static func outcome(_ reply: Swiftray_PushTaskReply, retryable: Bool) -> TaskManager.Outcome {
    reply.wasCancelled ? .cancelled : reply.isApplicationError ? .applicationError(retryable: retryable) : .success
  }

  /// The task failed without a reply (it is retried if it may be).
  public mutating func taskFailed(_ tid: TaskID, error: SwiftrayError, now: UInt64) -> Effects {
    var e = Effects()
    taskActionsDecided(tasks.taskFailed(tid, error: error), reply: nil, now: now, &e)
    return e
  }

  /// Tasks whose worker died: each is retried (with a warning that says so) or fails
  /// with `how` the worker went.
  public mutating func tasksLostWithWorker(_ tids: [TaskID], how: String, now: UInt64) -> Effects {
    var e = Effects()
    guard !shuttingDown else { return e }
    for tid in tids {
      let spec = tasks.spec(tid)
      let name = spec?.name ?? "?"
      let acts = tasks.taskFailed(tid, error: SwiftrayError(.workerCrashed,
        "A worker died or was killed while executing task \(name) (\(tid.hex)): \(how)."))
      if case .resubmit? = acts.first {
        let maxRetries = Int(spec?.maxRetries ?? 0)
        let limit = maxRetries < 0 ? "unlimited" : "\(maxRetries)"
        e.warnings.append("A worker died or was killed while executing task \(name) (\(tid.hex)): \(how). "
          + "Retrying it (retry \(tasks.spec(tid)?.attempt ?? 0) of \(limit), max_retries=\(maxRetries)).")
      }
      taskActionsDecided(acts, reply: nil, now: now, &e)
    }
    return e
  }

  /// Where the actor named by `actorID` (empty: not an actor call) lives now, as task
  /// events name it; nil when it is not alive.
  mutating func actorEventWorker(_ actorID: Data) -> TaskEventRecord.Worker? {
    guard !actorID.isEmpty else { return nil }
    if let m = actorWorkerMemo, m.epoch == actorSubmitter.epoch, m.actor == actorID { return m.worker }
    let worker = TaskID(binary: actorID).flatMap { actorSubmitter.address($0) }.map(TaskEventRecord.Worker.init)
    actorWorkerMemo = (actorID, actorSubmitter.epoch, worker)
    return worker
  }

  mutating func taskActionsDecided(_ actions: [TaskManager.Action], reply: Swiftray_PushTaskReply?, now: UInt64,
                                   _ e: inout Effects) {
    for a in actions {
      switch a {
      case .complete(let tid):
        guard let reply else { continue }
        if let spec = tasks.spec(tid) {
          // An actor call ran on its actor's worker (a normal task's was named at its push).
          let actorWorker = taskEvents.enabled ? actorEventWorker(spec.actorID) : nil
          taskEvents.record(spec, reply.isApplicationError ? .failed : .finished, now: now, worker: actorWorker) { ev in
            if reply.isApplicationError { ev.failure = .execution }
            TaskEventBuffer.span(&ev, spec, reply)
          }
        }
        // Read before the returns arrive: a getter may drop them at once and with them
        // the task's entry (lineage), and the argument refs must still be released.
        let args = tasks.argRefs(tid)
        var returned = reply.returns.compactMap { r in ObjectID(binary: r.objectID).map { ($0, r.object) } }
        generatorEnded(tid, succeeded: !reply.isApplicationError && !reply.wasCancelled, returns: &returned, now: now, &e)
        objectsArrived(returned, now: now, &e)
        generatorSettled(tid, now: now, &e)
        taskDone(tid, args: args, now: now, &e)
      case .resubmit(let tid, let reason):
        if let spec = tasks.spec(tid) {
          // The attempt that failed (the spec counts the next one already).
          taskEvents.record(spec, .failed, now: now) { ev in
            ev.attempt = spec.attempt &- 1
            ev.failure = .init(type: reply?.isApplicationError == true ? TaskErrorType.execution : TaskErrorType.of(.workerCrashed),
                               message: String(reason.prefix(TaskEventBuffer.maxMessageBytes)))
            TaskEventBuffer.span(&ev, spec, reply)
          }
        }
        taskReady(tid, now: now, &e)
      case .fail(let tid, let error):
        if let spec = tasks.spec(tid) {
          taskEvents.record(spec, .failed, now: now) { ev in
            ev.failure = .init(type: TaskErrorType.of(error.code), message: String(error.message.prefix(TaskEventBuffer.maxMessageBytes)))
          }
        }
        let n = Int(max(tasks.spec(tid)?.numReturns ?? 0, 0))
        let args = tasks.argRefs(tid)
        let obj = Self.errorObject(error.code, error.message)
        var returned = (0..<n).map { (ObjectID.forReturn(of: tid, index: $0), obj) }
        generatorEnded(tid, succeeded: false, returns: &returned, now: now, &e)
        objectsArrived(returned, now: now, &e)
        generatorSettled(tid, now: now, &e)
        taskDone(tid, args: args, now: now, &e)
      }
    }
  }

  /// The task will not run again: release the references its arguments held, and its
  /// spec if nothing refers to its returns any more.
  mutating func taskDone(_ tid: TaskID, args: [ObjectID], now: UInt64, _ e: inout Effects) {
    // Args were inlined into the spec; the refs it was submitted with are kept apart.
    let released = refs.submittedTaskRefsRemoved(args)
    releaseLineageIfUnused(tid)
    if tasks.lineageBytes > maxLineageBytes {
      for arg in tasks.evictLineage(limit: maxLineageBytes) where !arg.isPut { releaseLineageIfUnused(arg.task) }
    }
    refActionsDecided(released, now: now, &e)
  }

  /// Drops a finished task's spec once none of its return objects is referenced or
  /// needed as an argument by a kept spec; then, recursively, its arguments' specs.
  mutating func releaseLineageIfUnused(_ tid: TaskID) {
    var work = [tid]
    while let t = work.popLast() {
      guard let n = tasks.numReturns(t), !tasks.isPending(t) else { continue }
      let needed = tasks.needsLineage(t) && (0..<n).contains { i in
        let r = ObjectID.forReturn(of: t, index: i)
        return refs.isInScope(r) || tasks.isLineagePinned(r)
      }
      if !needed { work += tasks.release(t).filter { !$0.isPut }.map(\.task) }
    }
  }

  /// All arguments are here: inline them into the spec, queue it for a lease (or its actor).
  mutating func taskReady(_ tid: TaskID, now: UInt64, _ e: inout Effects) {
    guard var spec = tasks.spec(tid) else { return }
    var missing: [ObjectID] = []
    for i in spec.args.indices {
      guard case .ref(let r)? = spec.args[i].kind, let id = ObjectID(binary: r.objectID) else { continue }
      if let v = store[id] {
        spec.args[i].value = v
        spec.args[i].objectID = r.objectID
      } else {
        missing.append(id)
      }
    }
    tasks.specResolved(tid, spec: spec)
    if !missing.isEmpty {
      // An argument was lost with its node after it counted as available (it is being
      // rebuilt, or asked of its owner again): wait for it again, never send a bare ref.
      _ = resolver.taskArrived(tid, dependencies: missing, isReady: { _ in false })
      return
    }
    taskEvents.record(spec, spec.actorID.isEmpty || spec.hasActorCreation ? .pendingNodeAssignment : .submittedToWorker,
                      now: now, info: true)
    if spec.hasActorCreation {
      if syncCreations.contains(tid) { syncReady.insert(tid) } else {
        actorOutbox.append(.create(tid))
        e.actorSteps = true
      }
      return
    }
    if !spec.actorID.isEmpty { return queueActorSteps(actorSubmitter.callReady(tid), &e) }
    absorb(submitter.taskReady(tid, key: SchedulingKey(shape: ResourceSet(proto: spec.resources), proto: spec.strategy, runtimeEnv: spec.runtimeEnv),
                               function: Self.functionTag(spec.function.functionID), now: now),
           now: now, &e)
  }

  /// 64 bits of a function's id (a digest of the function), never 0 (which the
  /// submitter reads as unknown).
  static func functionTag(_ id: Data) -> NormalTaskSubmitter.FunctionTag {
    // Through the raw bytes: slicing and iterating a `Data` cost ~0.5 µs a task.
    let tag = id.withUnsafeBytes { raw in raw.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) } }
    return tag == 0 ? 1 : tag
  }

  public static func errorObject(_ code: SwiftrayError.Code, _ message: String) -> Swiftray_RayObject {
    var o = Swiftray_RayObject()
    o.metadata = Data(ErrorObject.metadata(code))
    o.data = Data(message.utf8)
    return o
  }

  // MARK: - stats

  public var stats: OwnerStats {
    let objects = store.all.map(\.object)
    return OwnerStats(objects: store.count, objectBytes: objects.reduce(0) { $0 + $1.data.count },
          references: refs.refs.count, tasks: tasks.entries.count, pendingTasks: tasks.numPending,
          leases: submitter.numLeases, storedObjects: objects.filter { $0.storeSize > 0 }.count,
          storedBytes: objects.reduce(0) { $0 + Int($1.storeSize) }, waitedObjects: waiters.count)
  }

  /// Positions of the first `limit` available ids, in input order.
  public func firstAvailable(_ ids: [ObjectID], limit: Int) -> [Int] {
    var out: [Int] = []
    for (i, id) in ids.enumerated() where store.contains(id) {
      out.append(i)
      if out.count == limit { break }
    }
    return out
  }
}
