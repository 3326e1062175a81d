import Foundation
import RuntimeProto

/// The ControlService's actor table as a pure state machine (DESIGN §3): where each actor
/// lives, its incarnation, names per namespace, and what to do when a lease is granted,
/// a constructor returns, a worker or an owner dies, or a kill is asked for. Time is
/// passed in; the shell (`ControlService`) carries out the actions.
///
/// Threading: a value type, owned by the ControlService under its lock.
public struct ActorDirectory: Sendable {
  public typealias State = Swiftray_ActorInfo.State
  public typealias Cause = Swiftray_ActorInfo.DeathCause

  public struct Lease: Sendable, Equatable {
    public var leaseID: UInt64
    public var worker: Swiftray_Address
    public var node: String
    /// The GPUs the lease holds: the actor's worker sees them for its life.
    public var gpuIDs: [Int32]
    /// The node's grant, shown with the creation push.
    public var grant: Data
    public init(leaseID: UInt64, worker: Swiftray_Address, node: String, gpuIDs: [Int32] = [], grant: Data = Data()) {
      self.leaseID = leaseID; self.worker = worker; self.node = node; self.gpuIDs = gpuIDs; self.grant = grant
    }
  }

  struct Entry: Sendable {
    var info: Swiftray_ActorInfo
    /// The constructor call with its arguments inlined: rerun on every restart.
    var spec: Swiftray_TaskSpec
    var lease: Lease?
    /// A lease request is out for this incarnation.
    var requesting = false
    var retryAt: UInt64?
    /// `kill(no_restart=False)` asked for a restart; the reason names it.
    var restartReason: String?
    /// Announced by its owner before its constructor's arguments were resolved: found by
    /// id and name, called (calls wait), not placed until the owner sends the constructor.
    var awaitingArguments = false
  }

  public enum Action: Sendable, Equatable {
    /// Ask a NodeManager for a worker for the actor's constructor.
    case requestLease(ActorID, Swiftray_TaskSpec)
    /// Push the constructor to the leased worker.
    case pushCreation(ActorID, Swiftray_TaskSpec, Lease)
    /// Give a lease back; `disconnect` kills its worker.
    case returnLease(Lease, disconnect: Bool)
    /// Kill the worker hosting an actor (it is being killed or its owner died).
    case killWorker(Lease, reason: String)
    /// The actor's info changed: wake its watchers (and write its record).
    case published(ActorID)
    /// Only its record changed (a lease was granted for its creation): write it, so a
    /// head restarted from storage knows the worker it may already be running on.
    case recorded(ActorID)
  }

  public enum RegisterError: Error, Sendable, Equatable {
    case nameTaken(Swiftray_ActorInfo)
  }

  private(set) var actors: [ActorID: Entry] = [:]
  /// Every actor's state changes (bounded), for `list cluster-events`.
  public private(set) var lifecycle = LifecycleLog()
  private var names: [String: [String: ActorID]] = [:]
  /// The leases its actors hold, by node (NodeManager address): a node's report is
  /// answered with them (`leases(on:)`) without a scan of every actor.
  private var leasesByNode: [String: Set<UInt64>] = [:]
  /// The actors with a lease retry set (`retryAt`): what a tick looks at, so a tick
  /// costs what is due, not a scan of every actor.
  private var retrying: Set<ActorID> = []
  public let leaseRetryNanos: UInt64

  public init(leaseRetryNanos: UInt64 = 1_000_000_000) {
    self.leaseRetryNanos = leaseRetryNanos
  }

  public func info(_ id: ActorID) -> Swiftray_ActorInfo? { actors[id]?.info }

  /// What storage keeps of an actor (see `restore`).
  public func record(_ id: ActorID) -> Swiftray_ActorRecord? {
    guard let e = actors[id] else { return nil }
    var r = Swiftray_ActorRecord()
    r.info = e.info
    r.spec = e.spec
    r.awaitingArguments = e.awaitingArguments
    if let l = e.lease { r.leaseID = l.leaseID; r.worker = l.worker; r.node = l.node }
    return r
  }

  /// Takes up actors a previous ControlService recorded (a head restarted on Redis):
  /// live ones keep their worker and lease, names are claimed again. Dead ones are
  /// kept for their errors. Actors still being placed are placed again by `tick`.
  public mutating func restore(_ records: [Swiftray_ActorRecord], now: UInt64) -> [Action] {
    var actions: [Action] = []
    for r in records {
      guard let id = ActorID(binary: r.info.actorID), actors[id] == nil else { continue }
      var e = Entry(info: r.info, spec: r.spec, awaitingArguments: r.awaitingArguments)
      if !r.node.isEmpty { e.lease = Lease(leaseID: r.leaseID, worker: r.worker, node: r.node) }
      if (r.info.state == .pending || r.info.state == .restarting) && !r.awaitingArguments {
        // Its creation was out when the head went: the worker it was pushed to may run it
        // (its answer went to the old head). That worker goes; the actor is placed anew.
        if let old = e.lease { actions.append(.killWorker(old, reason: "its actor's creation was interrupted by a head restart")) }
        e.lease = nil
        actions.append(.requestLease(id, r.spec))
        e.requesting = true
      }
      index(old: nil, new: e.lease)
      actors[id] = e
      if !r.info.name.isEmpty && r.info.state != .dead { names[r.info.namespace, default: [:]][r.info.name] = id }
    }
    return actions
  }

  public func named(_ name: String, namespace: String) -> Swiftray_ActorInfo? {
    names[namespace]?[name].flatMap { actors[$0]?.info }
  }

  /// Live named actors, in `namespace` or in every namespace.
  public func namedActors(namespace: String?) -> [Swiftray_ActorInfo] {
    var out: [Swiftray_ActorInfo] = []
    for (ns, table) in names where namespace == nil || ns == namespace {
      for id in table.values { if let i = actors[id]?.info, i.state != .dead { out.append(i) } }
    }
    return out.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
  }

  // MARK: events

  /// An owner registers an actor: announced (`awaitingArguments`: its constructor's
  /// arguments are not resolved yet; it is found and called, not placed), or with its
  /// constructor ready to run (placed now; the second step of an announced one).
  /// Idempotent: the same registration again changes nothing.
  public mutating func actorRegistered(_ spec: Swiftray_TaskSpec, awaitingArguments: Bool = false) -> Result<[Action], RegisterError> {
    guard let id = TaskID(binary: spec.actorID) else { return .success([]) }
    if var e = actors[id] {
      // The constructor of an announced actor: place it now.
      guard e.awaitingArguments, !awaitingArguments, e.info.state == .pending else { return .success([]) }
      e.awaitingArguments = false
      e.spec = spec
      e.requesting = true
      actors[id] = e
      return .success([.requestLease(id, spec)])
    }
    let c = spec.actorCreation
    if !c.name.isEmpty, let other = names[c.namespace]?[c.name], let o = actors[other], o.info.state != .dead {
      return .failure(.nameTaken(o.info))
    }
    var info = Swiftray_ActorInfo()
    info.actorID = spec.actorID
    info.state = .pending
    lifecycle.changed("ACTOR", spec.actorID, "PENDING_CREATION", "actor \(c.className) created")
    info.version = 1
    info.name = c.name
    info.namespace = c.namespace
    info.detached = c.detached
    info.maxRestarts = c.maxRestarts
    info.maxTaskRetries = c.maxTaskRetries
    info.handleMeta = c.handleMeta
    info.owner = spec.owner
    info.jobID = spec.jobID
    info.className = c.className
    actors[id] = Entry(info: info, spec: spec, requesting: !awaitingArguments, awaitingArguments: awaitingArguments)
    if !c.name.isEmpty { names[c.namespace, default: [:]][c.name] = id }
    return .success(awaitingArguments ? [.published(id)] : [.published(id), .requestLease(id, spec)])
  }

  /// `hostAlive`: whether the head counts the granting node alive — a grant from a node
  /// it declared dead (an answer held by a partition that healed) is given back and
  /// asked for again, for the node is fenced and the actor would die with it.
  public mutating func leaseGranted(_ id: ActorID, _ lease: Lease, hostAlive: Bool = true, now: UInt64 = 0) -> [Action] {
    guard var e = actors[id], e.requesting else { return [.returnLease(lease, disconnect: false)] }
    guard hostAlive else { return [.returnLease(lease, disconnect: true)] + leaseRequestFailed(id, now: now) }
    e.requesting = false
    guard e.info.state == .pending || e.info.state == .restarting else {
      actors[id] = e
      return [.returnLease(lease, disconnect: false)]
    }
    index(old: e.lease, new: lease)
    e.lease = lease
    e.spec.actorCreation.numRestarts = e.info.numRestarts
    actors[id] = e
    return [.recorded(id), .pushCreation(id, e.spec, lease)]
  }

  /// No node can host the actor now: ask again later; watchers learn why (once).
  public mutating func leaseRejected(_ id: ActorID, detail: String, now: UInt64) -> [Action] {
    guard var e = actors[id], e.requesting else { return [] }
    e.requesting = false
    e.retryAt = now + leaseRetryNanos
    retrying.insert(id)
    let changed = e.info.detail != detail
    e.info.detail = detail
    if changed { e.info.version += 1 }
    actors[id] = e
    return changed ? [.published(id)] : []
  }

  /// The request failed in transport (a NodeManager unreachable): retry soon.
  public mutating func leaseRequestFailed(_ id: ActorID, now: UInt64) -> [Action] {
    guard var e = actors[id], e.requesting else { return [] }
    e.requesting = false
    e.retryAt = now + leaseRetryNanos / 10
    retrying.insert(id)
    actors[id] = e
    return []
  }

  /// Workers cannot start on the node: the actor cannot be created.
  public mutating func workersFailToStart(_ id: ActorID, detail: String) -> [Action] {
    placementRefused(id, cause: .creationFailed, detail: "its worker could not start: \(detail)")
  }

  /// Its placement group was removed before it was placed.
  public mutating func placementGroupGone(_ id: ActorID, detail: String) -> [Action] {
    placementRefused(id, cause: .placementGroupRemoved, detail: detail)
  }

  /// Its lease request came back with a reason it can never be placed: it dies.
  private mutating func placementRefused(_ id: ActorID, cause: Cause, detail: String) -> [Action] {
    guard let e = actors[id], e.requesting else { return [] }
    return died(id, cause: cause, detail: detail)  // `died` clears `requesting`
  }

  /// Placement group `group` was removed: the actors placed in it (or waiting for it)
  /// die, whatever their `max_restarts`.
  public mutating func placementGroupRemoved(_ group: Data) -> [Action] {
    var actions: [Action] = []
    for (id, e) in actors where e.info.state != .dead && e.spec.strategy.placementGroupID == group {
      actions += died(id, cause: .placementGroupRemoved,
                      detail: "its placement group \(PlacementGroupID(binary: group)?.hex ?? "?") was removed")
    }
    return actions
  }

  /// The constructor returned on `lease`; `error` is its traceback when it raised.
  public mutating func creationReplied(_ id: ActorID, lease: Lease, error: String?) -> [Action] {
    guard var e = actors[id], e.lease == lease else { return [] }
    if let error {
      // A constructor that raised fails the actor for good (as Ray): no restart.
      return died(id, cause: .creationFailed, detail: "its constructor raised:\n\(error)")
    }
    guard e.info.state == .pending || e.info.state == .restarting else { return [] }
    e.info.state = .alive
    lifecycle.changed("ACTOR", e.info.actorID, "ALIVE", "on node \(Hex.encode(lease.worker.nodeID).prefix(12)), worker pid \(lease.worker.pid)")
    e.info.address = lease.worker
    e.info.pid = Int64(lease.worker.pid)
    e.info.detail = ""
    e.info.version += 1
    actors[id] = e
    return [.published(id)]
  }

  /// A worker process ended. Its actor restarts or dies; actors it owned die with it.
  public mutating func workerDied(_ worker: Data, detail: String) -> [Action] {
    var actions: [Action] = []
    for (id, e) in actors where e.info.state != .dead {
      if e.lease?.worker.workerID == worker {
        actions += hostDied(id, detail: detail)
      }
    }
    actions += ownerDied(worker, detail: "its owner (worker \(Self.short(worker))) died: \(detail)")
    return actions
  }

  /// A node died: its actors restart elsewhere or die; actors owned by its workers die.
  public mutating func nodeDied(_ node: Set<String>, detail: String) -> [Action] {
    var actions: [Action] = []
    for (id, e) in actors where e.info.state != .dead {
      if let l = e.lease, node.contains(l.node) { actions += hostDied(id, detail: detail) }
    }
    return actions
  }

  /// A driver finished (or died): its non-detached actors die with it.
  public mutating func driverExited(_ driver: Data, detail: String) -> [Action] {
    ownerDied(driver, detail: detail)
  }

  /// `kill(actor, no_restart=)`. Returns false for an unknown actor.
  public mutating func killRequested(_ id: ActorID, noRestart: Bool, reason: String) -> (found: Bool, actions: [Action]) {
    guard var e = actors[id] else { return (false, []) }
    guard e.info.state != .dead else { return (true, []) }
    if !noRestart, e.lease != nil, canRestart(e) {
      e.restartReason = reason
      actors[id] = e
      return (true, [.killWorker(e.lease!, reason: reason)])
    }
    return (true, died(id, cause: .killed, detail: reason))
  }

  /// Every handle of an actor is gone (its owner freed the handle object).
  public mutating func outOfScope(_ id: ActorID) -> [Action] {
    guard let e = actors[id], e.info.state != .dead, !e.info.detached else { return [] }
    return died(id, cause: .outOfScope, detail: "all references to the actor were removed (its handles went out of scope)")
  }

  /// Lease requests to send again (rejected shapes, transport failures).
  public mutating func tick(now: UInt64) -> [Action] {
    // Decided over the set, then applied (the set is not changed while it is walked).
    let due = retrying.filter { id in
      guard let e = actors[id], let at = e.retryAt else { return true }  // gone: dropped below
      return !e.requesting && e.lease == nil && now >= at && (e.info.state == .pending || e.info.state == .restarting)
    }
    var actions: [Action] = []
    for id in due {
      retrying.remove(id)
      guard var e = actors[id], e.retryAt != nil else { continue }
      e.retryAt = nil
      e.requesting = true
      actors[id] = e
      actions.append(.requestLease(id, e.spec))
    }
    return actions
  }

  public func nextDeadline() -> UInt64? {
    retrying.compactMap { id in actors[id].flatMap { $0.requesting ? nil : $0.retryAt } }.min()
  }

  /// Forgets dead actors beyond the newest `keep` (bounded table; names are freed at death).
  public mutating func trimDead(keep: Int) {
    // At once while the whole table is within the bound (it runs on every tick).
    guard actors.count > keep else { return }
    let dead = actors.filter { $0.value.info.state == .dead }
    guard dead.count > keep else { return }
    for (id, _) in dead.sorted(by: { $0.value.info.version < $1.value.info.version }).prefix(dead.count - keep) {
      index(old: actors[id]?.lease, new: nil)
      actors[id] = nil
      retrying.remove(id)
    }
  }

  /// The leases the actors hold on the node known by these addresses.
  public func leases(on node: Set<String>) -> Set<UInt64> {
    node.reduce(into: Set<UInt64>()) { $0.formUnion(leasesByNode[$1] ?? []) }
  }

  // MARK: internals

  private mutating func index(old: Lease?, new: Lease?) {
    if let o = old {
      leasesByNode[o.node]?.remove(o.leaseID)
      if leasesByNode[o.node]?.isEmpty == true { leasesByNode[o.node] = nil }
    }
    if let n = new { leasesByNode[n.node, default: []].insert(n.leaseID) }
  }

  private func canRestart(_ e: Entry) -> Bool {
    e.info.maxRestarts < 0 || e.info.numRestarts < e.info.maxRestarts
  }

  private mutating func hostDied(_ id: ActorID, detail: String) -> [Action] {
    guard var e = actors[id] else { return [] }
    let wasCreating = e.info.state != .alive
    if canRestart(e) {
      index(old: e.lease, new: nil)
      e.lease = nil
      e.info.state = .restarting
      e.info.numRestarts += 1
      e.info.address = Swiftray_Address()
      let why = e.restartReason ?? detail
      e.restartReason = nil
      lifecycle.changed("ACTOR", e.info.actorID, "RESTARTING", "its worker died (\(why))")
      e.info.detail = "its worker died (\(why)); restarting it (restart \(e.info.numRestarts) of "
        + "\(e.info.maxRestarts < 0 ? "unlimited" : String(e.info.maxRestarts)), max_restarts=\(e.info.maxRestarts))"
      e.info.version += 1
      e.requesting = true
      actors[id] = e
      return [.published(id), .requestLease(id, e.spec)]
    }
    let limit = e.info.maxRestarts == 0 ? "max_restarts=0" : "it was restarted \(e.info.numRestarts) time(s), max_restarts=\(e.info.maxRestarts)"
    let what = wasCreating ? "its worker died while running the constructor" : "its worker died"
    return died(id, cause: .workerDied, detail: "\(what) (\(e.restartReason ?? detail)); \(limit)", workerGone: true)
  }

  private mutating func ownerDied(_ owner: Data, detail: String) -> [Action] {
    var actions: [Action] = []
    for (id, e) in actors where e.info.state != .dead && !e.info.detached && e.info.owner.workerID == owner {
      actions += died(id, cause: .ownerDied, detail: detail)
    }
    return actions
  }

  private mutating func died(_ id: ActorID, cause: Cause, detail: String, workerGone: Bool = false) -> [Action] {
    guard var e = actors[id] else { return [] }
    var actions: [Action] = []
    if let lease = e.lease, !workerGone {
      actions.append(cause == .creationFailed ? .returnLease(lease, disconnect: true) : .killWorker(lease, reason: "the actor died: \(detail)"))
    }
    index(old: e.lease, new: nil)
    e.lease = nil
    e.retryAt = nil
    retrying.remove(id)
    e.requesting = false  // a lease granted from now on goes back
    e.info.state = .dead
    lifecycle.changed("ACTOR", e.info.actorID, "DEAD", detail)
    e.info.deathCause = cause
    e.info.detail = detail
    e.info.address = Swiftray_Address()
    e.info.version += 1
    if !e.info.name.isEmpty, names[e.info.namespace]?[e.info.name] == id {
      names[e.info.namespace]?[e.info.name] = nil
    }
    actors[id] = e
    actions.append(.published(id))
    return actions
  }

  static func short(_ id: Data) -> String { WorkerID(binary: id)?.hex.prefix(12).description ?? "?" }
}
