import DequeModule
import Foundation
import GRPCCore
import Logging
import NIOPosix
import RuntimeProto
import Synchronization

/// The ControlService (Ray's GCS): cluster membership, jobs, the KV table that holds
/// pickled functions, and the actor directory (placement through NodeManager leases,
/// restarts, names, watchers). A shell: `ActorDirectory` decides. Its tables sit behind
/// `ControlStorage` (in memory by default): the KV is read and written there, nodes,
/// jobs and actors are written through on every change and cached here.
///
/// Threading: gRPC handlers run concurrently; all state sits behind one lock and
/// actions run outside it.
public final class ControlService: Swiftray_ControlService.SimpleServiceProtocol, Sendable {
  struct Watcher {
    var after: UInt64
    var continuation: CheckedContinuation<Swiftray_ActorInfo?, Never>
  }

  struct State {
    var nodes: NodeTable
    var nextJob: UInt32 = 1
    var actors = ActorDirectory()
    var actorPolls = LongPolls<ActorID, Watcher>()
    var tickArmed = false
    var closed = false
    var groups = PlacementGroupTable()
    var groupPolls = LongPolls<Data, CheckedContinuation<Swiftray_PlacementGroupInfo?, Never>>()
    /// Actors placed with SPREAD so far: the head takes the turns itself (nodes routing
    /// each creation with their own turns could put two on one node).
    var spreadTurn = 0
    /// Bytes of KV entries this ControlService accepted (namespace, key and value;
    /// an overwrite counts again): bounded by `max_kv_bytes`.
    var kvBytes = 0
    /// Workers and drivers that exited, for the nodes to pass on to owners.
    var workerDeaths = WorkerDeathLog()
    var jobs = JobTable()
  }

  let state: Locked<State>
  /// Task attempts from every process's events: a lock of its own, so a batch never
  /// waits behind the control tables.
  let events: Locked<TaskEventTable>
  /// Objects' lifecycle in the nodes' stores (the newest task_events_max_num_task_in_gcs).
  let objectEvents: Locked<ObjectEventTable>
  /// The node whose NodeManager runs beside this service (`list nodes`' head).
  public let headNode = Locked(Data())
  /// Every process's user metrics, summed, for the head node's `/metrics`.
  public let userMetrics = UserMetricsSink()
  let group: MultiThreadedEventLoopGroup
  let pool: DataPlaneClientPool
  /// gRPC clients of the NodeManagers, by address.
  let nodeClients: ControlClients
  /// Actor-creation lease requests out to nodes, ended when their node is declared dead.
  let leaseCalls = CallsByNode()
  let config: Config
  let log = Logger(label: "swiftray.control")
  let healthLoop = Locked<Task<Void, Never>?>(nil)
  let storage: any ControlStorage
  let writer: StorageWriter
  /// Who holds the leases of actor creations at the NodeManagers: this ControlService's
  /// own id, so a lease it holds is given back only by it (as an owner's by its owner).
  let leaseOwner = WorkerID.random()
  /// Wakes the placement loop (one pass at a time; kicks while it runs coalesce).
  let placementKicks: AsyncStream<Void>.Continuation
  /// Every timer and reading of time: the system's, or a simulation's `ManualClock`.
  let clock: any RuntimeClock

  /// Its calls to NodeManagers and workers carry `auth`'s token.
  public init(group: MultiThreadedEventLoopGroup = .singletonMultiThreadedEventLoopGroup, config: Config = Config(),
              storage: any ControlStorage = InMemoryControlStorage(), auth: ClusterAuth,
              clock: any RuntimeClock = Clocks.current) {
    self.group = group
    self.clock = clock
    self.config = config
    self.storage = storage
    let log = self.log
    self.writer = StorageWriter(storage) { table, error in
      log.error("storage/write-failed", metadata: ["table": "\(table)", "error": "\(error)"])
    }
    self.pool = DataPlaneClientPool(group: group, auth: auth)
    self.nodeClients = ControlClients(group: group, auth: auth)
    self.events = Locked(TaskEventTable(capacity: config.taskEventsMaxNumTaskInGcs))
    self.objectEvents = Locked(ObjectEventTable(capacity: config.taskEventsMaxNumTaskInGcs))
    self.state = Locked(State(nodes: NodeTable(health: NodeHealth(failureThreshold: config.healthCheckFailureThreshold))))
    let (kicks, cont) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    self.placementKicks = cont
    Task { [weak self] in
      for await _ in kicks {
        guard let self else { return }
        self.placeWaitingGroups()
      }
    }
  }

  /// Closes connections to NodeManagers and workers; wakes every watcher.
  public func shutdown() {
    healthLoop.withLock { l in defer { l = nil }; return l }?.cancel()
    let (watchers, groupWatchers) = state.withLock { s in
      s.closed = true
      return (s.actorPolls.takeAll(), s.groupPolls.takeAll())
    }
    for w in watchers { w.continuation.resume(returning: nil) }
    for w in groupWatchers { w.resume(returning: nil) }
    placementKicks.finish()
    nodeClients.shutdown()
    pool.closeAll()
    writer.close()
  }

  /// Takes up the tables a previous head left in storage (a restart on Redis): the job
  /// counter continues, and the nodes it knew wait to register again (dead until then).
  public func restore() async throws {
    if let next = try await storage.get(ControlTable.jobs, Data("next".utf8)), next.count == 4 {
      let n = next.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
      state.withLock { $0.nextJob = max($0.nextJob, n) }
    }
    for bytes in try await storage.getAll(ControlTable.nodes).values {
      guard let n = try? Swiftray_NodeInfo(serializedBytes: bytes) else { continue }
      state.withLock { $0.nodes.restored(n) }
    }
    startHealthChecks()  // of the restored nodes too: one that died meanwhile is declared dead
    let groups = try await storage.getAll(ControlTable.placementGroups).values.compactMap { try? Swiftray_PlacementGroupInfo(serializedBytes: $0) }
    performGroups(state.withLock { $0.groups.restore(groups) })
    let records = try await storage.getAll(ControlTable.actors).values.compactMap { try? Swiftray_ActorRecord(serializedBytes: $0) }
    let now = clock.now()
    perform(state.withLock { $0.actors.restore(records, now: now) })
  }

  // MARK: nodes, jobs, KV

  public func registerNode(request: Swiftray_RegisterNodeRequest, context: ServerContext) async throws -> Swiftray_RegisterNodeReply {
    _ = try ResourceSet.checked(request.node.total, field: "total")
    _ = try ResourceSet.checked(request.node.available, field: "available")
    guard NodeLabels.valid(request.node.labels) else {
      throw RPCError(code: .invalidArgument, message: "the node's labels are not valid (at most \(NodeLabels.maxLabels), "
        + "keys and values of 1-\(NodeLabels.maxLength) letters, digits, '-', '_' or '.')")
    }
    try await checkReachable(request.node)
    state.withLock { s in
      persist(s.nodes.registered(request.node))  // lock-ok: an enqueue (StorageWriter.write), in the order of the changes
      for w in request.recentWorkerExits.prefix(WorkerDeathLog.maxPerAnswer) { s.workerDeaths.died(w) }
    }
    startHealthChecks()
    placementKicks.yield()
    return Swiftray_RegisterNodeReply()
  }

  /// A node that joins over TCP must be reachable at the address it advertises (health
  /// checks, leases and object pulls all dial it there): one stats call with the health
  /// check's deadline before it is listed, so a wrong `--node-ip-address` fails `swiftray
  /// start` with a message rather than a node that every check later declares dead.
  func checkReachable(_ node: Swiftray_NodeInfo) async throws {
    let address = node.nodeManagerAddress
    guard !address.isEmpty, let nm = nodeClient(address) else { return }
    do {
      _ = try await nm.nodeManagerService.getNodeStats(
        Swiftray_GetNodeStatsRequest(), options: ControlPlane.deadline(milliseconds: max(1000, min(config.healthCheckTimeoutMs, 10_000))))
    } catch {
      nodeClients.remove([address])
      throw RPCError(
        code: .failedPrecondition,
        message: "the head cannot reach this node at the address it advertises, \(address) (\(ControlPlane.error(error, calling: "GetNodeStats", at: Endpoint(address) ?? .unix(address)).message)). "
          + "Give `swiftray start` a --node-ip-address of this machine that the head can reach (and open its ports).")
    }
  }

  // MARK: health checks

  /// One loop per ControlService: every period, ask each node's NodeManager for its
  /// stats with the configured timeout; `NodeHealth` decides who is dead.
  func startHealthChecks() {
    // Started outside the lock; of two racing starts, one loop is kept.
    guard healthLoop.withLock({ $0 == nil }), !state.withLock({ $0.closed }) else { return }
    let loop = Task { [self] in
      let period = max(10, config.healthCheckPeriodMs)
      while !Task.isCancelled {
        await clock.sleep(for: .milliseconds(period))
        let checks = state.withLock { $0.closed ? [] : $0.nodes.health.tick() }
        for case .check(let id) in checks { check(id, periodMs: period) }
      }
    }
    let spare: Task<Void, Never>? = healthLoop.withLock { l in
      if l == nil { l = loop; return nil }
      return loop
    }
    spare?.cancel()
  }

  func check(_ id: Data, periodMs: Int) {
    guard let node = state.withLock({ $0.nodes[id] }), let nm = nodeClient(Self.address(of: node)) else {
      _ = state.withLock { $0.nodes.health.checkFailed(id, error: "no address", periodMs: periodMs) }
      return
    }
    let timeout = max(10, config.healthCheckTimeoutMs)
    Task { [self] in
      let options = ControlPlane.deadline(milliseconds: timeout)
      do {
        _ = try await nm.nodeManagerService.getNodeStats(
          Swiftray_GetNodeStatsRequest(), options: options)
        state.withLock { $0.nodes.health.checkSucceeded(id) }
      } catch {
        let actions = state.withLock { $0.nodes.health.checkFailed(id, error: "\(error)", periodMs: periodMs) }
        for case .died(let id, let detail) in actions { nodeDied(id, detail: detail) }
      }
    }
  }

  /// Marks a node dead; its actors restart elsewhere or die.
  func nodeDied(_ id: Data, detail: String) {
    let endpoints: Set<String> = state.withLock { s in
      guard let n = s.nodes.died(id, detail: detail) else { return [] }
      persist(n)  // lock-ok: an enqueue (StorageWriter.write), in the order of the changes
      return [n.nodeManagerEndpoint, n.nodeManagerAddress]
    }
    guard !endpoints.isEmpty else { return }
    log.warning("node/died", metadata: ["node": "\(NodeID(binary: id)?.hex.prefix(12) ?? "?")", "detail": "\(detail)"])
    let short = NodeID(binary: id)?.hex.prefix(12) ?? "?"
    perform(state.withLock { $0.actors.nodeDied(endpoints, detail: "its node \(short) died: \(detail)") })
    performGroups(state.withLock { $0.groups.nodeDied(id) })
    // Closed without waiting: this runs in a Task, which must not block. A creation
    // waiting there for a lease is asked again elsewhere at once.
    leaseCalls.nodeDied(Array(endpoints))
    nodeClients.remove(endpoints)
  }

  func persist(_ node: Swiftray_NodeInfo) {
    if let bytes: Data = try? NodeTable.durable(node).serializedBytes() { writer.write(ControlTable.nodes, node.nodeID, bytes) }
  }

  static func address(of node: Swiftray_NodeInfo) -> String { NodeTable.address(of: node) }

  public func getAllNodes(request: Swiftray_GetAllNodesRequest, context: ServerContext) async throws -> Swiftray_GetAllNodesReply {
    var r = Swiftray_GetAllNodesReply()
    let deaths: (workers: [Data], next: UInt64)
    (r.nodes, r.workerDeathsLog, deaths) = state.withLock { s in
      (s.nodes.all, s.workerDeaths.id, s.workerDeaths.since(log: request.workerDeathsLog, next: request.workerDeathsNext))
    }
    r.deadWorkers = deaths.workers
    r.workerDeathsNext = deaths.next
    return r
  }

  public func registerJob(request: Swiftray_RegisterJobRequest, context: ServerContext) async throws -> Swiftray_RegisterJobReply {
    var r = Swiftray_RegisterJobReply()
    let job = state.withLock { s in
      let j = s.nextJob
      s.nextJob += 1
      s.jobs.started(JobID(j), request, nowMs: Self.wallMs())
      var next = s.nextJob
      writer.write(ControlTable.jobs, Data("next".utf8), Data(bytes: &next, count: 4))  // lock-ok: an enqueue, in order
      return j
    }
    r.jobID = Data(JobID(job).binary)
    return r
  }

  /// The job the driver of a Jobs API submission registered, if it did.
  public func job(submission: String) -> JobTable.Job? { state.withLock { $0.jobs.job(submission: submission) } }

  /// Longest KV namespace and key (function ids and job keys are far shorter).
  static let maxKVNamespaceBytes = 256
  static let maxKVKeyBytes = 64 << 10

  public func kvPut(request: Swiftray_KVPutRequest, context: ServerContext) async throws -> Swiftray_KVPutReply {
    try await putKV(request)
  }

  /// A KV put, bounded by `max_kv_bytes` (RPCs and the head's own HTTP routes).
  func putKV(_ request: Swiftray_KVPutRequest) async throws -> Swiftray_KVPutReply {
    var r = Swiftray_KVPutReply()
    guard request.namespace.utf8.count <= Self.maxKVNamespaceBytes, request.key.count <= Self.maxKVKeyBytes else {
      throw RPCError(code: .invalidArgument,
                     message: "a KV namespace may have at most \(Self.maxKVNamespaceBytes) bytes and a key \(Self.maxKVKeyBytes)")
    }
    // Bounded: what peers put here lives as long as the cluster (in memory, or in Redis).
    let size = request.namespace.utf8.count + request.key.count + request.value.count
    let limit = config.maxKvBytes
    let held: Int? = state.withLock { s in
      guard s.kvBytes <= limit - size else { return s.kvBytes }
      s.kvBytes += size
      return nil
    }
    if let held {
      throw RPCError(code: .resourceExhausted,
                     message: "the cluster's KV already holds \(held) bytes; \(size) more would pass max_kv_bytes (\(limit)): "
                       + "define fewer or smaller remote functions (large values belong in swiftray.put), or raise the limit")
    }
    do { r.added = try await storage.put(ControlTable.kv(request.namespace), request.key, request.value, overwrite: request.overwrite) }
    catch {
      state.withLock { $0.kvBytes -= size }
      throw RPCError(code: .unavailable, message: "the ControlService's storage failed: \(error)")
    }
    if !r.added { state.withLock { $0.kvBytes -= size } }
    return r
  }

  public func kvGet(request: Swiftray_KVGetRequest, context: ServerContext) async throws -> Swiftray_KVGetReply {
    try await getKV(request)
  }

  func getKV(_ request: Swiftray_KVGetRequest) async throws -> Swiftray_KVGetReply {
    var r = Swiftray_KVGetReply()
    let v: Data?
    do { v = try await storage.get(ControlTable.kv(request.namespace), request.key) }
    catch { throw RPCError(code: .unavailable, message: "the ControlService's storage failed: \(error)") }
    if let v {
      r.found = true
      r.value = v
    }
    return r
  }

  public func reportResources(request: Swiftray_ReportResourcesRequest, context: ServerContext) async throws -> Swiftray_ReportResourcesReply {
    var r = Swiftray_ReportResourcesReply()
    _ = try ResourceSet.checked(request.available, field: "available")
    _ = try ResourceSet.checked(request.total, field: "total")
    for (i, d) in request.infeasibleDemand.prefix(100).enumerated() { _ = try ResourceSet.checked(d, field: "infeasible_demand \(i)") }
    let held: (bundles: [Data: [Int]], leases: Set<UInt64>)?
    let verdict: NodeTable.ReportVerdict
    (verdict, held) = state.withLock { s in
      let verdict = s.nodes.reported(request.nodeID, available: request.available, total: request.hasTotal ? request.total : nil,
                                     demand: request.infeasibleDemand, bundleEpoch: request.bundleEpoch,
                                     store: (request.objectStoreUsed, request.objectStoreCapacity))
      // Only a live node it knows hears what it holds (a dead one is fenced).
      guard verdict == .taken, let n = s.nodes[request.nodeID] else { return (verdict, nil) }
      return (verdict, (s.groups.bundles(on: request.nodeID), s.actors.leases(on: [n.nodeManagerAddress, n.nodeManagerEndpoint])))
    }
    switch verdict {
    case .taken: break
    case .register: r.unknownNode = true
    case .fenced(let detail):
      r.declaredDead = true
      r.deathDetail = detail
      log.warning("node/fenced", metadata: ["node": "\(NodeID(binary: request.nodeID)?.hex.prefix(12) ?? "?")", "why": "\(detail)"])
    }
    if let held {
      r.holdingsListed = true
      r.controlLeases = held.leases.sorted()
      r.bundles = held.bundles.map { id, indices in
        var h = Swiftray_HeldBundles()
        h.placementGroupID = id
        h.indices = indices.map(Int32.init)
        return h
      }
    }
    // Resources may have freed up for a group that waits.
    if verdict == .taken, state.withLock({ !$0.groups.waiting.isEmpty }) { placementKicks.yield() }
    return r
  }

  // MARK: actors

  public func createActor(request: Swiftray_CreateActorRequest, context: ServerContext) async throws -> Swiftray_CreateActorReply {
    var r = Swiftray_CreateActorReply()
    _ = try ResourceSet.checked(request.spec.resources, field: "resources")
    _ = try ResourceSet.checked(request.spec.actorCreation.placementResources, field: "placement_resources")
    let actions: [ActorDirectory.Action] = state.withLock { s in
      switch s.actors.actorRegistered(request.spec, awaitingArguments: request.awaitingArguments) {
      case .success(let actions): return actions
      case .failure(.nameTaken(let other)):
        r.error = "The name '\(other.name)' (namespace '\(other.namespace)') is already taken by actor "
          + "\(other.className) \(TaskID(binary: other.actorID)?.hex.prefix(16) ?? "?"). Use get_actor(name) to reach it, "
          + "options(get_if_exists=True) to reuse it, or pick another name."
        r.existing = other
        return []
      }
    }
    perform(actions)
    return r
  }

  public func waitActorState(request: Swiftray_WaitActorStateRequest, context: ServerContext) async throws -> Swiftray_WaitActorStateReply {
    var r = Swiftray_WaitActorStateReply()
    guard let id = TaskID(binary: request.actorID) else { return r }
    let after = request.afterVersion
    let info: Swiftray_ActorInfo? = await longPoll(timeoutMs: Int64(request.timeoutMs)) { s, c in
      guard let info = s.actors.info(id) else { return .answer(nil) }
      if info.version > after || s.closed { return .answer(info) }
      return s.actorPolls.add(id, Watcher(after: after, continuation: c)).map { .wait($0) } ?? .full(info)
    } expire: { s, token in
      (s.actorPolls.timedOut(id, token: token)?.continuation, s.actors.info(id))
    }
    if let info { r.found = true; r.actor = info }
    return r
  }

  public func getNamedActor(request: Swiftray_GetNamedActorRequest, context: ServerContext) async throws -> Swiftray_GetNamedActorReply {
    var r = Swiftray_GetNamedActorReply()
    if let info = state.withLock({ $0.actors.named(request.name, namespace: request.namespace) }) {
      r.found = true
      r.actor = info
    }
    return r
  }

  public func listNamedActors(request: Swiftray_ListNamedActorsRequest, context: ServerContext) async throws -> Swiftray_ListNamedActorsReply {
    var r = Swiftray_ListNamedActorsReply()
    r.actors = state.withLock { $0.actors.namedActors(namespace: request.allNamespaces ? nil : request.namespace) }
    return r
  }

  public func killActor(request: Swiftray_KillActorRequest, context: ServerContext) async throws -> Swiftray_KillActorReply {
    var r = Swiftray_KillActorReply()
    guard let id = TaskID(binary: request.actorID) else { return r }
    let actions: [ActorDirectory.Action] = state.withLock { s in
      if request.outOfScope {
        r.found = s.actors.info(id) != nil
        return s.actors.outOfScope(id)
      }
      let (found, actions) = s.actors.killRequested(id, noRestart: request.noRestart, reason: request.reason)
      r.found = found
      return actions
    }
    perform(actions)
    return r
  }

  public func reportWorkerFailure(request: Swiftray_ReportWorkerFailureRequest, context: ServerContext) async throws -> Swiftray_ReportWorkerFailureReply {
    perform(state.withLock { s in
      s.workerDeaths.died(request.exit.workerID)
      s.jobs.driversExited([request.exit.workerID], why: "its driver exited: \(request.exit.detail.prefix(500))", nowMs: Self.wallMs())
      return s.actors.workerDied(request.exit.workerID, detail: request.exit.detail)
    })
    performGroups(state.withLock { $0.groups.creatorDied(request.exit.workerID) })
    return Swiftray_ReportWorkerFailureReply()
  }

  public func markJobFinished(request: Swiftray_MarkJobFinishedRequest, context: ServerContext) async throws -> Swiftray_MarkJobFinishedReply {
    let job = JobID(binary: request.jobID).map { " (job \($0.hex))" } ?? ""
    if let id = JobID(binary: request.jobID) { state.withLock { $0.jobs.ended(id, status: .succeeded, nowMs: Self.wallMs()) } }
    perform(state.withLock { $0.actors.driverExited(request.driverID, detail: "the driver that created it exited\(job)") })
    performGroups(state.withLock { $0.groups.jobFinished(request.jobID) })
    return Swiftray_MarkJobFinishedReply()
  }

  /// How a long poll starts: answered now, waiting under its token, or refused room
  /// (`LongPolls.maxPerKey` polls wait on its key already).
  enum PollStart<Answer: Sendable> { case answer(Answer), wait(UInt64), full(Answer) }

  /// One long poll (`waitActorState`, `waitPlacementGroup`): `start` answers it now or
  /// registers it (under the lock); if nothing answers it before the timeout (10 s by
  /// default, 10 ms to 60 s), `expire` takes it back and it gets the state then.
  func longPoll<Answer: Sendable>(timeoutMs: Int64,
                                  start: @escaping (inout State, CheckedContinuation<Answer, Never>) -> PollStart<Answer>,
                                  expire: @escaping @Sendable (inout State, UInt64) -> (CheckedContinuation<Answer, Never>?, Answer)) async -> Answer {
    let ms = max(10, min(timeoutMs > 0 ? timeoutMs : 10_000, 60_000))
    return await withCheckedContinuation { (c: CheckedContinuation<Answer, Never>) in
      switch state.withLock({ start(&$0, c) }) {
      case .answer(let a): c.resume(returning: a)
      case .full(let a):
        // Answered with the state as it is, but only after a pause (up to 1 s): the
        // caller asks again, and must not spin against a full table.
        clock.schedule(after: .milliseconds(min(ms, 1_000))) { c.resume(returning: a) }
      case .wait(let token):
        clock.schedule(after: .milliseconds(ms)) { [self] in
          let (waiter, answer) = state.withLock { expire(&$0, token) }
          waiter?.resume(returning: answer)
        }
      }
    }
  }

  // MARK: actions

  func perform(_ actions: [ActorDirectory.Action]) {
    for a in actions {
      switch a {
      case .requestLease(let id, let spec): requestLease(id, spec)
      case .pushCreation(let id, let spec, let lease): pushCreation(id, spec, lease)
      case .returnLease(let lease, let disconnect):
        guard let nm = nodeClient(lease.node) else { continue }
        Task {
          var req = Swiftray_ReturnWorkerLeaseRequest()
          req.leaseID = lease.leaseID
          req.disconnectWorker = disconnect
          req.ownerWorkerID = Data(leaseOwner.binary)
          _ = try? await nm.nodeManagerService.returnWorkerLease(req, options: nodeCallOptions)
        }
      case .killWorker(let lease, let reason):
        guard let nm = nodeClient(lease.node) else { continue }
        Task {
          var req = Swiftray_KillWorkerRequest()
          req.workerID = lease.worker.workerID
          req.reason = reason
          _ = try? await nm.nodeManagerService.killWorker(req, options: nodeCallOptions)
        }
      case .recorded(let id):
        state.withLock { s in
          if let bytes: Data = try? s.actors.record(id)?.serializedBytes() {
            writer.write(ControlTable.actors, Data(id.binary), bytes)  // lock-ok: an enqueue, in the order of the changes
          }
        }
      case .published(let id):
        let (ready, info) = state.withLock { s -> ([Watcher], Swiftray_ActorInfo?) in
          guard let info = s.actors.info(id) else { return ([], nil) }
          if let bytes: Data = try? s.actors.record(id)?.serializedBytes() {
            writer.write(ControlTable.actors, Data(id.binary), bytes)  // lock-ok: an enqueue, in the order of the changes
          }
          return (s.actorPolls.take(id) { $0.after < info.version }, info)
        }
        for w in ready { w.continuation.resume(returning: info) }
      }
    }
    armTick()
  }

  /// The NodeManager to place an actor needing `shape` on (`NodePicker` over the nodes'
  /// reported resources); the first live node when none can fit, so the actor waits there
  /// with the infeasible warning. Under SPREAD the head takes the turn (`SpreadPolicy`)
  /// and `pinned` says the node must grant or reject, not route it again.
  func placementNode(_ shape: ResourceSet, spread: Bool) -> (address: String, pinned: Bool)? {
    state.withLock { s in
      if spread {
        s.spreadTurn &+= 1
        if let n = SpreadPolicy.pick(needs: shape, among: s.nodes.views, turn: s.spreadTurn & Int.max) { return (n.address, true) }
      }
      return (NodePicker.pick(shape, among: s.nodes.views)?.address ?? s.nodes.all.first(where: \.alive).map(Self.address))
        .map { ($0, false) }
    }
  }

  func nodeClient(_ endpoint: String) -> ControlPlane.Connection? { nodeClients.client(endpoint) }

  func requestLease(_ id: ActorID, _ spec: Swiftray_TaskSpec) {
    if state.withLock({ $0.closed }) { return }
    let shape = ResourceSet(proto: spec.resources).union(ResourceSet(proto: spec.actorCreation.placementResources))
    let spread = SchedulingKey(shape: shape, proto: spec.strategy).strategy == .spread
    guard let (node, pinned) = placementNode(shape, spread: spread), nodeClient(node) != nil else {
      let now = clock.now()
      perform(state.withLock { $0.actors.leaseRequestFailed(id, now: now) })
      return
    }
    let leases = LeaseClient(local: nil, nodes: nodeClients, maxHops: 1, watch: leaseCalls)
    Task { [self] in
      var req = Swiftray_RequestWorkerLeaseRequest()
      req.leaseRequestID = randomWord() >> 1
      req.resources = spec.resources
      req.placementResources = spec.actorCreation.placementResources
      req.strategy = spec.strategy
      req.owner.workerID = Data(leaseOwner.binary)
      req.forControl = true
      req.grantOrReject = pinned
      req.jobID = spec.jobID
      req.taskName = spec.name
      req.runtimeEnv = spec.runtimeEnv
      let (reply, answered) = await leases.request(req, at: node)
      let node = answered ?? node
      let now = clock.now()
      let actions: [ActorDirectory.Action] = state.withLock { [node, reply] s in
        guard let reply else { return s.actors.leaseRequestFailed(id, now: now) }
        switch reply.status {
        case .granted:
          return s.actors.leaseGranted(id, .init(leaseID: reply.leaseID, worker: reply.worker, node: node, gpuIDs: reply.gpuIds,
                                                 grant: reply.leaseGrant),
                                       hostAlive: s.nodes[reply.worker.nodeID]?.alive == true, now: now)
        case .infeasible:
          return s.actors.leaseRejected(id, detail: "no node has the resources it needs: \(reply.detail)", now: now)
        case .workerStartFailed, .runtimeEnvSetupFailed:
          return s.actors.workersFailToStart(id, detail: reply.detail)
        case .placementGroupRemoved:
          return s.actors.placementGroupGone(id, detail: reply.detail)
        default:
          return s.actors.leaseRequestFailed(id, now: now)
        }
      }
      perform(actions)
    }
  }

  func pushCreation(_ id: ActorID, _ spec: Swiftray_TaskSpec, _ lease: ActorDirectory.Lease) {
    guard let ep = Endpoint(lease.worker.endpoint) else { return }
    var req = Swiftray_PushTaskRequest()
    req.spec = spec
    req.gpuIds = lease.gpuIDs
    req.leaseID = lease.leaseID
    req.leaseGrant = lease.grant
    req.leaseOwner = Data(leaseOwner.binary)
    pool.request(ep, .pushTask(req)) { [self] result in
      // A broken connection means the worker died: its NodeManager reports that.
      guard case .success(let frame) = result, case .pushTaskReply(let reply)? = frame.body else { return }
      let error: String? = reply.actorCreationError.isEmpty
        ? (reply.isApplicationError ? "the constructor failed (no traceback was sent)" : nil)
        : reply.actorCreationError
      recordCreationEnded(spec, on: lease.worker, reply: reply, error: error)
      perform(state.withLock { $0.actors.creationReplied(id, lease: lease, error: error) })
    }
  }

  /// Keeps one timer armed for the directory's next lease retry.
  func armTick() {
    let delay: UInt64? = state.withLock { s in
      guard !s.tickArmed, !s.closed, let d = s.actors.nextDeadline() else { return nil }
      s.tickArmed = true
      let now = clock.now()
      return d > now ? d - now : 0
    }
    guard let delay else { return }
    clock.schedule(after: .nanoseconds(delay + 1000)) { [self] in
      let now = clock.now()
      let actions = state.withLock { s -> [ActorDirectory.Action] in
        s.tickArmed = false
        s.actors.trimDead(keep: 10_000)
        return s.actors.tick(now: now)
      }
      perform(actions)
    }
  }
}
