import DequeModule

/// The NodeManager's lease scheduler and worker-pool bookkeeping as a pure state
/// machine: events in (one `mutating func` each), actions out. No I/O, no clocks.
///
/// Threading: a value type; the shell (`NodeManager`) owns one and mutates it under
/// its lock, then performs the returned actions outside the lock.
public struct LeaseQueue: Sendable {
  public struct Limits: Sendable, Equatable {
    /// Workers being spawned at once (each costs a process start).
    public var maxStartingWorkers: Int
    /// Hard cap on worker processes on this node (blocked workers can push the pool
    /// past the CPU count; this bounds it).
    public var maxWorkers: Int
    public init(maxStartingWorkers: Int, maxWorkers: Int) {
      self.maxStartingWorkers = maxStartingWorkers; self.maxWorkers = maxWorkers
    }
  }

  public struct Request: Sendable, Equatable {
    public var id: UInt64
    /// Held by the lease while it lasts.
    public var shape: ResourceSet
    public var owner: WorkerID
    /// Must be free when the lease is granted, but is not held (an actor's default
    /// 1 CPU to be placed, 0 while it lives).
    public var placement: ResourceSet
    /// It may go to another node while it waits here (a DEFAULT or SPREAD request; not
    /// one tied to this node by affinity or a bundle).
    public var movable: Bool
    /// Asked by the ControlService for an actor: its lease lives while the head lists it.
    public var forControl: Bool
    /// The runtime environment its worker must have (`RuntimeEnv.key`; "" the node's
    /// own): granted only a worker of that environment.
    public var env: String
    public init(id: UInt64, shape: ResourceSet, owner: WorkerID, placement: ResourceSet = ResourceSet(), movable: Bool = false,
                forControl: Bool = false, env: String = "") {
      self.id = id; self.shape = shape; self.owner = owner; self.placement = placement; self.movable = movable
      self.forControl = forControl; self.env = env
    }
    public var needsFree: ResourceSet { shape.union(placement) }
  }

  public struct Lease: Sendable, Equatable {
    public var id: UInt64
    public var worker: WorkerID
    public var shape: ResourceSet
    public var owner: WorkerID
    /// The ControlService's (an actor's creation): see `controlLeasesReconciled`.
    public var forControl = false
    /// The GPUs it holds (the node's, or its bundle's), if it asked for any.
    public var gpus: [GPUInstances.Share] = []
    /// The bundle those GPUs belong to, when it runs in a placement group.
    public var gpuBundle: BundleRef?
    /// The GPU ids its worker sees (`CUDA_VISIBLE_DEVICES`), ascending.
    public var gpuIDs: [Int] { Array(Set(gpus.map(\.id))).sorted() }
  }

  public struct BundleRef: Sendable, Equatable {
    public var group: String
    public var index: Int
  }

  public enum WorkerState: Sendable, Equatable {
    case starting
    case idle
    case leased(UInt64)
  }

  public struct Worker: Sendable, Equatable {
    public var id: WorkerID
    public var state: WorkerState
    /// Blocked in `get` while leased: its CPUs are lent back to the node.
    public var blocked = false
    /// Its runtime environment (`RuntimeEnv.key`; "" the node's own): it serves no other.
    public var env = ""
  }

  public enum Action: Sendable, Equatable {
    case grant(requestID: UInt64, lease: Lease)
    /// No node can ever fit the shape; `detail` names what is missing.
    case reject(requestID: UInt64, detail: String)
    /// It asks for a placement group's bundles this node does not hold: the group was
    /// `removed`, or they are elsewhere or not placed yet (the owner asks again).
    case placementGroupUnavailable(requestID: UInt64, removed: Bool, detail: String)
    case canceled(requestID: UInt64)
    /// Workers cannot start here; `detail` says how the last one died.
    case workerStartFailed(requestID: UInt64, detail: String)
    /// Spawn a worker process in runtime environment `env` ("" the node's own); report
    /// it with `workerStarting`.
    case startWorker(env: String)
    case killWorker(WorkerID)
  }

  /// A placement group's bundle on this node: `base` is set aside when prepared;
  /// `added` (its renamed resources, see `BundleResources`) exists once committed.
  public struct Bundle: Sendable, Equatable {
    public var base: ResourceSet
    public var added: ResourceSet?
    /// The node's GPUs it set aside, and what of them its tasks do not hold now.
    public var gpuShares: [GPUInstances.Share] = []
    public var gpuPool = GPUInstances(count: 0)
    /// When it was last prepared or committed (the node's clock): a bundle the head
    /// does not list is given back only once a round that made it must have ended.
    public var since: UInt64 = 0
  }

  public private(set) var total: ResourceSet
  public private(set) var available: ResourceSet
  /// Bundles by group (hex id) and index.
  public private(set) var bundles: [String: [Int: Bundle]] = [:]
  public private(set) var workers: [WorkerID: Worker] = [:]
  public private(set) var pending: Deque<Request> = []
  /// The node's GPUs by id (those not set aside for bundles nor held by leases).
  public private(set) var gpus: GPUInstances
  public private(set) var leases: [UInt64: Lease] = [:]
  /// The ControlService's leases its last lists left out, since when (node clock).
  var unlistedSince: [UInt64: UInt64] = [:]
  /// Idle workers by runtime environment.
  private var idle: [String: [WorkerID]] = [:]
  /// Workers asked for by `.startWorker` but not yet reported by `workerStarting`, by
  /// runtime environment.
  private var requestedStarts: [String: Int] = [:]
  private var requestedStartCount: Int { requestedStarts.values.reduce(0, +) }
  /// Idle workers killed to make room for another environment's, until they exit.
  private var evicting: Set<WorkerID> = []
  private var nextLeaseID: UInt64
  public let limits: Limits

  /// `firstLeaseID`: owners hold leases from several nodes, so each node numbers its
  /// leases from its own (random) base.
  public init(total: ResourceSet, limits: Limits, firstLeaseID: UInt64 = 1) {
    self.total = total; self.available = total; self.limits = limits; self.nextLeaseID = firstLeaseID
    self.gpus = GPUInstances(count: Int(max(0, total[ResourceSet.gpu]) / ResourceSet.unit))
  }

  public var idleWorkerCount: Int { idle.values.reduce(0) { $0 + $1.count } }
  public var startingWorkerCount: Int {
    requestedStartCount + workers.values.filter { $0.state == .starting }.count
  }
  func startingWorkers(_ env: String) -> Int {
    (requestedStarts[env] ?? 0) + workers.values.filter { $0.state == .starting && $0.env == env }.count
  }
  /// Runtime environments of the workers alive or starting here (their caches are in use).
  public var environmentsInUse: Set<String> {
    Set(workers.values.map(\.env)).union(requestedStarts.keys).union(pending.map(\.env)).subtracting([""])
  }

  // MARK: events

  /// Start-up: keep `count` workers warm so the first tasks need no process spawn.
  public mutating func prestart(count: Int) -> [Action] {
    let n = max(0, min(count, limits.maxWorkers) - workers.count - requestedStartCount)
    requestedStarts["", default: 0] += n
    return Array(repeating: .startWorker(env: ""), count: n)
  }

  public mutating func workerStarting(_ id: WorkerID, env: String = "") -> [Action] {
    startClaimed(env)
    workers[id] = Worker(id: id, state: .starting, env: env)
    return []
  }

  private mutating func startClaimed(_ env: String) {
    let left = (requestedStarts[env] ?? 0) - 1
    requestedStarts[env] = left > 0 ? left : nil
  }

  /// A spawn that failed before the process existed.
  public mutating func workerStartFailed(env: String = "") -> [Action] {
    startClaimed(env)
    return []
  }

  /// The launch of a worker reported by `workerStarting` failed before the process
  /// existed: another is started for what waits (the caller bounds the tries with
  /// `WorkerPool`'s crash-loop count, failing what waits through `workersFailToStart`).
  public mutating func workerLaunchFailed(_ id: WorkerID) -> [Action] {
    if workers[id]?.state == .starting { workers[id] = nil }
    return dispatch()
  }

  public mutating func workerRegistered(_ id: WorkerID) -> [Action] {
    guard var w = workers[id], w.state == .starting else { return [] }
    w.state = .idle
    workers[id] = w
    idle[w.env, default: []].append(id)
    return dispatch()
  }

  /// What is free once the requests waiting here are granted: what a new request can
  /// count on (routing must not send it here just because workers are still starting).
  public var uncommitted: ResourceSet { pending.reduce(available) { $0 - $1.shape } }

  public mutating func leaseRequested(_ request: Request) -> [Action] {
    guard total.contains(request.needsFree) else {
      if let group = BundleResources.groups(in: request.needsFree).first {
        return [.placementGroupUnavailable(requestID: request.id, removed: false,
                                           detail: "the bundles of placement group \(group) it asks for are not on this node")]
      }
      return [.reject(requestID: request.id, detail: Self.infeasibleDetail(request.needsFree, total: total))]
    }
    pending.append(request)
    return dispatch()
  }

  /// The waiting requests that may still move to another node, oldest first.
  public var movableRequests: [Request] { pending.filter(\.movable) }

  /// A waiting request went to another node (spillback from the queue): it leaves here.
  public mutating func leaseRequestMoved(_ requestID: UInt64) -> Bool {
    guard let i = pending.firstIndex(where: { $0.id == requestID }) else { return false }
    pending.remove(at: i)
    return true
  }

  public mutating func leaseRequestCanceled(_ requestID: UInt64) -> [Action] {
    guard let i = pending.firstIndex(where: { $0.id == requestID }) else { return [] }
    pending.remove(at: i)
    return [.canceled(requestID: requestID)]
  }

  /// The owner is done with the lease. `disconnect` when it saw the worker misbehave.
  /// `owner`: who returns it; a lease is given back only by its own owner (nil: the
  /// node itself, which may free any).
  public mutating func leaseReturned(_ leaseID: UInt64, disconnect: Bool, owner: WorkerID? = nil) -> [Action] {
    guard let held = leases[leaseID], owner == nil || held.owner == owner else { return [] }
    guard let lease = leases.removeValue(forKey: leaseID) else { return [] }
    var actions: [Action] = []
    if var w = workers[lease.worker] {
      release(lease, blocked: w.blocked)
      if disconnect {
        workers[lease.worker] = nil
        actions.append(.killWorker(lease.worker))
      } else {
        w.state = .idle; w.blocked = false
        workers[lease.worker] = w
        idle[w.env, default: []].append(lease.worker)
      }
    }
    return actions + dispatch()
  }

  /// The process is gone (exit, signal, kill). Frees whatever its lease held, and the
  /// leases it held as an owner: their workers run tasks nobody will collect, so they
  /// are killed (as Ray does).
  public mutating func workerExited(_ id: WorkerID) -> [Action] {
    var actions: [Action] = []
    evicting.remove(id)
    if let w = workers.removeValue(forKey: id) {
      idle[w.env]?.removeAll { $0 == id }
      if idle[w.env]?.isEmpty == true { idle[w.env] = nil }
      if case .leased(let leaseID) = w.state, let lease = leases.removeValue(forKey: leaseID) {
        release(lease, blocked: w.blocked)
      }
    }
    for lease in leases.values where lease.owner == id {
      leases[lease.id] = nil
      if let w = workers.removeValue(forKey: lease.worker) {
        release(lease, blocked: w.blocked)
        actions.append(.killWorker(lease.worker))
      }
    }
    pending.removeAll { $0.owner == id }
    return actions + dispatch()
  }

  /// A leased worker blocked in `get`: lend its CPUs back so nested tasks can run.
  public mutating func workerBlocked(_ id: WorkerID) -> [Action] {
    guard var w = workers[id], case .leased(let leaseID) = w.state, !w.blocked,
      let lease = leases[leaseID]
    else { return [] }
    w.blocked = true
    workers[id] = w
    available += Self.cpuPart(lease.shape)
    return dispatch()
  }

  /// Unblocked: it takes its CPUs back even if that oversubscribes for a while (as Ray).
  public mutating func workerUnblocked(_ id: WorkerID) -> [Action] {
    guard var w = workers[id], case .leased(let leaseID) = w.state, w.blocked,
      let lease = leases[leaseID]
    else { return [] }
    w.blocked = false
    workers[id] = w
    available -= Self.cpuPart(lease.shape)
    return []
  }

  /// Workers cannot start (a broken environment): fail every waiting request rather
  /// than respawning forever.
  public mutating func workersFailToStart(detail: String) -> [Action] {
    let all = pending.map { Action.workerStartFailed(requestID: $0.id, detail: detail) }
    pending.removeAll()
    return all
  }

  // MARK: placement group bundles (two-phase: prepare, then commit or return)

  /// Phase 1: sets aside the bundles' resources if they are free now. True when they
  /// are reserved (again: a repeated prepare of the same bundles is a no-op).
  public mutating func bundlesPrepared(group: String, _ wanted: [Int: ResourceSet], now: UInt64 = 0) -> Bool {
    // A group has one placement round at a time: bundles of it prepared here and never
    // committed that this round does not want are an earlier failed round's (its undo
    // was lost). They go now — else this round's commit would commit them too.
    let leftovers = Set((bundles[group] ?? [:]).filter { $0.value.added == nil && wanted[$0.key] == nil }.keys)
    if !leftovers.isEmpty { _ = bundlesReturned(group: group, only: leftovers) }
    // Bundles an earlier round prepared and this one wants again (that round's answer
    // was lost) are this round's claim now: reconciliation must not count them stale by
    // the old round's time while the head is still placing them. Found by swiftray-sim.
    for i in wanted.keys where bundles[group]?[i]?.added == nil { bundles[group]?[i]?.since = now }
    let fresh = wanted.filter { bundles[group]?[$0.key] == nil }
    let need = fresh.values.reduce(ResourceSet()) { $0 + $1 }
    guard available.contains(need) else { return false }
    // Each bundle's GPUs are chosen now, so its tasks get ids of their own bundle.
    var pool = gpus
    var shares: [Int: [GPUInstances.Share]] = [:]
    for (i, b) in fresh.sorted(by: { $0.key < $1.key }) {
      guard let taken = pool.take(b[ResourceSet.gpu]) else { return false }
      shares[i] = taken
    }
    gpus = pool
    available -= need
    for (i, b) in fresh {
      let mine = shares[i] ?? []
      bundles[group, default: [:]][i] = Bundle(base: b, gpuShares: mine, gpuPool: GPUInstances(shares: mine), since: now)
    }
    return true
  }

  /// Phase 2: the prepared bundles of `group` become usable by its tasks and actors.
  public mutating func bundlesCommitted(group: String, only: Set<Int>? = nil, now: UInt64 = 0) -> [Action] {
    guard var mine = bundles[group] else { return [] }
    for (i, b) in mine where b.added == nil && only?.contains(i) != false {
      let added = BundleResources.committed(b.base, group: group, index: i)
      mine[i]?.added = added
      mine[i]?.since = now
      total += added
      available += added
    }
    bundles[group] = mine
    return dispatch()
  }

  /// The head's list of its leases on this node (from its answer to a report): a lease
  /// of the ControlService's it has left out for `grace` (longer than a grant's answer
  /// takes to be recorded) is one nobody holds — its answer was lost, or the head that
  /// asked restarted without it — so it ends and its worker is stopped.
  public mutating func controlLeasesReconciled(listed: Set<UInt64>, now: UInt64, grace: UInt64) -> [Action] {
    var actions: [Action] = []
    let unlisted = Set(leases.values.filter { $0.forControl && !listed.contains($0.id) }.map(\.id))
    unlistedSince = unlistedSince.filter { unlisted.contains($0.key) }
    for id in unlisted.sorted() {
      let since = unlistedSince[id] ?? now
      unlistedSince[id] = since
      guard now >= since, now - since >= grace else { continue }
      unlistedSince[id] = nil
      actions += leaseReturned(id, disconnect: true)
    }
    return actions
  }

  /// The head's list of the bundles this node should hold (group hex -> indices), from
  /// its answer to a report: a commit that never arrived is done now; a bundle the head
  /// does not list — its prepare's answer was lost so the round was undone without it,
  /// its group was removed and the return was lost, or the head restarted without it —
  /// goes back once it is older than `grace` (longer than a round takes, so a bundle a
  /// round is still placing is left alone). A group none of whose bundles here is listed
  /// goes whole (its workers killed, its waiting requests turned away, as on removal).
  public mutating func bundlesReconciled(listed: [String: Set<Int>], now: UInt64, grace: UInt64) -> [Action] {
    var actions: [Action] = []
    for group in bundles.keys.sorted() {
      guard let mine = bundles[group] else { continue }
      let expected = listed[group] ?? []
      let stale = Set(mine.filter { !expected.contains($0.key) && now >= grace && now - grace >= $0.value.since }.keys)
      if expected.isEmpty && stale.count == mine.count {
        actions += bundlesReturned(group: group)
        continue
      }
      if !stale.isEmpty {
        actions += bundlesReturned(group: group, only: stale) + committedBundlesReturned(group: group, indices: stale)
      }
      if expected.isEmpty { continue }
      let uncommitted = Set(mine.filter { expected.contains($0.key) && $0.value.added == nil }.keys)
      if !uncommitted.isEmpty { actions += bundlesCommitted(group: group, only: uncommitted, now: now) }
    }
    return actions
  }

  /// The group was removed: workers leased inside it are killed, requests waiting for
  /// it are turned away, and its resources go back. `only`: just these bundles, prepared
  /// and not committed (a round that failed elsewhere is undone).
  public mutating func bundlesReturned(group: String, only: Set<Int>? = nil) -> [Action] {
    if let only {
      for i in only {
        guard let b = bundles[group]?[i], b.added == nil else { continue }
        bundles[group]?[i] = nil
        resourcesReturned(of: b)
      }
      if bundles[group]?.isEmpty == true { bundles[group] = nil }
      return dispatch()
    }
    guard let mine = bundles.removeValue(forKey: group) else { return [] }
    let actions = groupWorkEnded(group, removed: true, detail: "its placement group \(group) was removed")
    for b in mine.values { resourcesReturned(of: b) }
    return actions + dispatch()
  }

  /// Committed bundles of `group` the head no longer counts here, while it counts
  /// others of the group here (it placed them again elsewhere while it could not tell
  /// this node: a lost answer, a cut, a restart). Found by swiftray-sim: they stayed
  /// reserved for nobody. Every lease inside the group here ends (its worker is killed:
  /// which bundle a lease draws on is not recorded), requests waiting for the group here
  /// are sent back to ask again, and those bundles' resources go back.
  mutating func committedBundlesReturned(group: String, indices: Set<Int>) -> [Action] {
    guard let mine = bundles[group] else { return [] }
    let gone = mine.filter { indices.contains($0.key) && $0.value.added != nil }
    guard !gone.isEmpty else { return [] }
    let actions = groupWorkEnded(group, removed: false, detail: "bundles of placement group \(group) moved to another node")
    for (i, b) in gone.sorted(by: { $0.key < $1.key }) {
      bundles[group]?[i] = nil
      resourcesReturned(of: b)
    }
    if bundles[group]?.isEmpty == true { bundles[group] = nil }
    return actions + dispatch()
  }

  // MARK: internals

  /// A bundle leaves this node: what it set aside goes back, and a committed one's
  /// resources (its group's names) are no more.
  private mutating func resourcesReturned(of b: Bundle) {
    if let added = b.added { total -= added; available -= added }
    available += b.base
    gpus.give(b.gpuShares)
  }

  /// Ends what runs or waits inside `group` here: leases end (their workers are killed),
  /// waiting requests are answered unavailable (`removed`: for good).
  private mutating func groupWorkEnded(_ group: String, removed: Bool, detail: String) -> [Action] {
    var actions: [Action] = []
    for lease in leases.values.sorted(by: { $0.id < $1.id }) where BundleResources.groups(in: lease.shape).contains(group) {
      leases[lease.id] = nil
      if let w = workers.removeValue(forKey: lease.worker) {
        release(lease, blocked: w.blocked)
        actions.append(.killWorker(lease.worker))
      }
    }
    for req in pending where BundleResources.groups(in: req.needsFree).contains(group) {
      actions.append(.placementGroupUnavailable(requestID: req.id, removed: removed, detail: detail))
    }
    pending.removeAll { BundleResources.groups(in: $0.needsFree).contains(group) }
    return actions
  }

  private static func cpuPart(_ shape: ResourceSet) -> ResourceSet {
    shape.restricted(to: [ResourceSet.cpu])
  }

  private mutating func release(_ lease: Lease, blocked: Bool) {
    available += (blocked ? lease.shape - Self.cpuPart(lease.shape) : lease.shape)
    if let b = lease.gpuBundle {
      // Back to the bundle they came from (gone with its group if that was removed).
      bundles[b.group]?[b.index]?.gpuPool.give(lease.gpus)
    } else {
      gpus.give(lease.gpus)
    }
  }

  /// How much GPU a shape asks for, and from where: the node's own GPUs, or a bundle
  /// of a placement group (its renamed `GPU_group_[i_]<id>`; index -1: any bundle of
  /// the group on this node).
  static func gpuDemand(_ shape: ResourceSet) -> (amount: Int64, group: String?, index: Int) {
    if shape[ResourceSet.gpu] > 0 { return (shape[ResourceSet.gpu], nil, -1) }
    var amount: Int64 = 0, group: String?, index = -1
    for (name, q) in shape.quantities where name.hasPrefix(ResourceSet.gpu + "_group_") {
      guard let g = BundleResources.group(of: name) else { continue }
      group = g
      amount = max(amount, q)
      if let i = BundleResources.bundleIndex(of: name) { index = i }
    }
    return (amount, group, index)
  }

  /// The bundles of `group` here a request may take GPUs from, in the order tried.
  func candidateBundles(_ group: String, _ index: Int) -> [Int] {
    guard let mine = bundles[group] else { return [] }
    return index >= 0 ? (mine[index] != nil ? [index] : []) : mine.keys.sorted()
  }

  func canTakeGPUs(_ shape: ResourceSet) -> Bool {
    let d = Self.gpuDemand(shape)
    guard d.amount > 0 else { return true }
    guard let group = d.group else { return gpus.canTake(d.amount) }
    return candidateBundles(group, d.index).contains { bundles[group]?[$0]?.gpuPool.canTake(d.amount) == true }
  }

  /// Assigns the GPUs of a lease about to be granted (`canTakeGPUs` said they fit).
  mutating func assignGPUs(_ lease: inout Lease) {
    let d = Self.gpuDemand(lease.shape)
    guard d.amount > 0 else { return }
    guard let group = d.group else {
      lease.gpus = gpus.take(d.amount) ?? []
      return
    }
    for i in candidateBundles(group, d.index) {
      if let taken = bundles[group]?[i]?.gpuPool.take(d.amount) {
        lease.gpus = taken
        lease.gpuBundle = .init(group: group, index: i)
        return
      }
    }
  }

  static func infeasibleDetail(_ shape: ResourceSet, total: ResourceSet) -> String {
    let missing = total.shortfall(for: shape).keys.sorted().map { k in
      "\(k) (asks \(shape.units(k)), the largest node has \(total.units(k)))"
    }
    return "no node in the cluster has enough \(missing.joined(separator: ", ")) for \(shape)"
  }

  /// Grants what fits, in arrival order without head-of-line blocking across shapes,
  /// and asks for workers when resources are free but no idle worker is.
  private mutating func dispatch() -> [Action] {
    var actions: [Action] = []
    var waitingForWorker: [String: Int] = [:]
    var i = 0
    while i < pending.count {
      let req = pending[i]
      if available.contains(req.needsFree), canTakeGPUs(req.shape) {
        if let wid = idle[req.env]?.popLast() {
          if idle[req.env]?.isEmpty == true { idle[req.env] = nil }
          var lease = Lease(id: nextLeaseID, worker: wid, shape: req.shape, owner: req.owner)
          lease.forControl = req.forControl
          assignGPUs(&lease)
          nextLeaseID += 1
          leases[lease.id] = lease
          workers[wid]?.state = .leased(lease.id)
          available -= req.shape
          pending.remove(at: i)
          actions.append(.grant(requestID: req.id, lease: lease))
          continue
        }
        waitingForWorker[req.env, default: 0] += 1
      }
      i += 1
    }
    var room = min(limits.maxStartingWorkers - startingWorkerCount,
                   limits.maxWorkers - (workers.count - evicting.count) - requestedStartCount)
    var started = 0
    for env in waitingForWorker.keys.sorted() {
      let n = max(0, min(waitingForWorker[env]! - startingWorkers(env), room))
      guard n > 0 else { continue }
      room -= n; started += n
      requestedStarts[env, default: 0] += n
      actions.append(contentsOf: Array(repeating: .startWorker(env: env), count: n))
    }
    if started > 0 || waitingForWorker.keys.contains(where: { idle[$0] == nil && startingWorkers($0) == 0 }) {
      actions += evictIdle(keeping: Set(waitingForWorker.keys))
    }
    return actions
  }

  /// Workers serve one runtime environment each, so a node running tasks of several
  /// keeps workers of each: past one worker per CPU (or `maxWorkers`), idle workers of
  /// environments nothing waits for are killed, the longest idle first, to make room.
  private mutating func evictIdle(keeping wanted: Set<String>) -> [Action] {
    let cpus = Int(max(0, total[ResourceSet.cpu]) / ResourceSet.unit)
    var excess = (workers.count - evicting.count) + requestedStartCount - min(max(1, cpus), limits.maxWorkers)
    guard excess > 0 else { return [] }
    var actions: [Action] = []
    for env in idle.keys.sorted() where !wanted.contains(env) {
      while excess > 0, let wid = idle[env]?.first {
        idle[env]?.removeFirst()
        if idle[env]?.isEmpty == true { idle[env] = nil }
        evicting.insert(wid)
        excess -= 1
        actions.append(.killWorker(wid))
      }
    }
    return actions
  }
}
