import DequeModule
import Foundation
import GRPCCore
import Logging
import NIOPosix
import RuntimeProto
import Synchronization

/// The NodeManager (Ray's raylet) of one node: the worker pool and the lease scheduler.
/// A thin shell: `LeaseQueue` decides, this performs (spawn, kill, reply, forward logs).
///
/// Threading: gRPC handlers and the process monitor thread call in concurrently; all
/// state is behind one lock and actions run outside it.
public final class NodeManager: Swiftray_NodeManagerService.SimpleServiceProtocol, Sendable {
  public struct Options: Sendable {
    public var nodeID: NodeID
    public var resources: ResourceSet
    public var sessionDir: String
    public var workerExecutable: String
    /// Environment every worker starts with (the driver's, plus its Python settings).
    public var workerEnvironment: [String: String]
    public var controlEndpoint: Endpoint
    public var config: Config
    public var prestartWorkers: Int
    /// Set on a networked node: workers also listen on TCP at this IP.
    public var nodeIP: String? = nil
    /// The cluster's token: its calls carry it, and its workers get it (in their
    /// environment, never on a command line).
    public var auth: ClusterAuth
    /// Where its gRPC service is served (nil: the Unix socket in its session directory;
    /// a `MemoryNetwork` name when several nodes run in one process).
    public var endpoint: Endpoint? = nil
    /// Seeds the random choices of routing (SPREAD ties, spillback): nil draws a seed.
    public var seed: UInt64? = nil
    public init(nodeID: NodeID, resources: ResourceSet, sessionDir: String, workerExecutable: String,
                workerEnvironment: [String: String], controlEndpoint: Endpoint, config: Config, prestartWorkers: Int,
                auth: ClusterAuth) {
      self.auth = auth
      self.nodeID = nodeID; self.resources = resources; self.sessionDir = sessionDir
      self.workerExecutable = workerExecutable; self.workerEnvironment = workerEnvironment
      self.controlEndpoint = controlEndpoint; self.config = config; self.prestartWorkers = prestartWorkers
    }
  }

  struct State {
    var queue: LeaseQueue
    /// Waiting lease requests by the node's own id (`requestIDs`).
    var replies: [UInt64: CheckedContinuation<Swiftray_RequestWorkerLeaseReply, Never>] = [:]
    var requestIDs = LeaseRequestIDs()

    /// The waiter of a request that is answered now; its owner's number is free again.
    mutating func takeReply(_ id: UInt64) -> CheckedContinuation<Swiftray_RequestWorkerLeaseReply, Never>? {
      requestIDs.settled(id)
      return replies.removeValue(forKey: id)
    }
    var workers = WorkerPool()
    var logSubscribers: [UInt64: AsyncStream<Swiftray_LogBatch>.Continuation] = [:]
    /// `GetLog` calls following a file now (at most `maxLogFollowers`).
    var logFollowers = 0
    /// Processes of this node registered on its Unix socket (each answered with every
    /// death, `registerLocal`), and the deaths seen so far.
    var deathSubscribers: [UInt64: DataPlaneResponder] = [:]
    /// The head's never-changing key-value entries its workers read (`NodeKVCache`).
    var kvCache = NodeKVCache()
    /// Key-value reads forwarded to the head and not yet answered (bounded).
    var kvGetsForwarded = 0
    var deadNodes: [Data: Swiftray_NodeDeath] = [:]
    /// How far this node has read the head's log of worker exits (`WorkerDeathLog`).
    var workerDeathsSeen: (log: UInt64, next: UInt64) = (0, 0)
    /// This node's latest worker exits, reported again when it registers again (a head
    /// that restarted lost its log of them before every node read it).
    var recentExits: Deque<Data> = []
    var nextSubscriber: UInt64 = 1
    /// Drivers of other processes connected to this node, watched so that their
    /// non-detached actors die with them even when they exit without saying so.
    /// The other nodes as the ControlService last described them (for spillback).
    var cluster: ClusterView<SeededRandom>
    var shuttingDown = false
    /// Bundle changes the head asked for and this node applied (prepare, commit,
    /// return), sent with each report and answer so the head can tell a report taken
    /// before its latest change (`NodeTable.BundleSync`).
    var bundleEpoch: UInt64 = 0
    /// What each runtime environment set up here gives its workers (`RuntimeEnv.context`),
    /// by `RuntimeEnv.key`; forgotten as the cache forgets it (`sweepRuntimeEnvs`), and
    /// at most `maxRuntimeEnvs` (more are refused as busy until some are forgotten).
    var envContexts: [String: String] = [:]
    /// Lease requests waiting for their runtime environment's set-up (bounded like the
    /// queue, by `max_pending_lease_requests_per_node`).
    var awaitingSetUp = 0
  }

  public let options: Options
  /// This node's shared-memory object store.
  public let store: ObjectStore
  public var endpoint: Endpoint { options.endpoint ?? Endpoint.unix(SessionPaths.socket(options.sessionDir, "raylet.sock")) }
  /// Every timer and reading of time but the blocking shutdown's: the system's, or a
  /// simulation's `ManualClock`.
  let clock: any RuntimeClock
  let state: Locked<State>
  let log = Logger(label: "swiftray.node")
  /// The head's ControlService (one client, made on first use).
  let control: ControlClients
  /// This node as registered with the ControlService, to register again after a head
  /// restart. Set by whoever registered it.
  public let registration = Locked<Swiftray_NodeInfo?>(nil)
  /// Called once when the ControlService stays unreachable (see `syncClusterView`).
  public let controlLost = Locked<(@Sendable (String) -> Void)?>(nil)
  /// When the head last answered this node's report (`clock`), for `/api/healthz`.
  let headAnswered = Locked<UInt64?>(nil)
  let controlReports: AsyncStream<@Sendable () async -> Void>.Continuation
  nonisolated(unsafe) var monitor: (any WorkerLauncher)!  // set once in init, before any use
  /// This node's lease-grant key (a fresh one per daemon), and what it signs with.
  let leaseKey = LeaseGrants.generateKey()
  let leaseGrants: LeaseGrants
  static let maxLogFollowers = 64
  /// Where workers' output is kept (`<session>/logs`), for `swiftray logs`.
  let logFiles: WorkerLogWriter
  /// Sets up runtime environments (made on first use: most nodes never need one).
  let envAgent = Locked<RuntimeEnvAgent?>(nil)

  /// `launcher`: how workers start (nil: processes, `ProcessMonitor`).
  public init(options: Options, store: ObjectStore, clock: any RuntimeClock = Clocks.current,
              launcher: WorkerLauncherFactory? = nil) {
    self.options = options
    self.clock = clock
    self.store = store
    leaseGrants = LeaseGrants(hex: leaseKey)!
    logFiles = WorkerLogWriter(session: options.sessionDir, maxBytes: options.config.logRotationMaxBytes,
                               backups: options.config.logRotationBackupCount)
    control = ControlClients(group: .singletonMultiThreadedEventLoopGroup, auth: options.auth)
    let limits = LeaseQueue.Limits(maxStartingWorkers: options.config.maximumStartupConcurrency,
                                   maxWorkers: options.config.maxWorkersPerNode)
    state = Locked(State(queue: LeaseQueue(total: options.resources, limits: limits,
                                          firstLeaseID: UInt64.random(in: 1 ... (1 << 48)) << 12),
                         cluster: ClusterView(rng: SeededRandom(seed: options.seed ?? .random(in: 0 ... .max)))))
    let (reports, cont) = AsyncStream<@Sendable () async -> Void>.makeStream(bufferingPolicy: .unbounded)
    controlReports = cont
    Task { for await job in reports { await job() } }
    let onOutput: ProcessMonitor.OutputHandler = { [weak self] pid, isErr, lines in
      self?.workerOutput(pid: pid, isErr: isErr, lines: lines)
    }
    let onExit: ProcessMonitor.ExitHandler = { [weak self] status in self?.workerExited(status) }
    monitor = launcher?(onOutput, onExit) ?? ProcessMonitor(onOutput: onOutput, onExit: onExit)
    store.localRequests.withLock { $0 = { [weak self] frame, responder in self?.localRequest(frame, responder) } }
  }

  /// Starts the prestarted workers. Call once, after the gRPC server is up.
  public func start() {
    // Every worker, the prestarted ones too, forks from the fork server: one started
    // while it is still starting waits for it (bounded: `ProcessMonitor.spawn`).
    if options.config.workerForkServer == 1 {
      do {
        try monitor.startForkServer(executable: options.workerExecutable, arguments: ["worker", "--fork-server"],
                                    environment: workerEnvironment(for: nil))
      } catch {
        log.warning("worker/fork-server-failed", metadata: ["error": "\(error)"])
      }
    }
    perform(state.withLock { $0.queue.prestart(count: options.prestartWorkers) })
    Task { await syncClusterView() }
    Task { [weak self, clock] in
      while true {
        await clock.sleep(for: NodeManager.runtimeEnvSweepPeriod)
        guard let self, !self.state.withLock({ $0.shuttingDown }) else { return }
        await self.sweepRuntimeEnvs()
      }
    }
  }

  /// Deadline of the node's reports to the head (`node_manager_rpc_timeout_ms`).
  var headCallOptions: CallOptions {
    ControlPlane.deadline(milliseconds: options.config.nodeManagerRpcTimeoutMs)
  }

  /// A report's deadline: the call deadline, or the patience left since the head last
  /// answered if that is shorter (at least 1 s).
  func reportOptions(since lastContact: UInt64, patience: UInt64) -> CallOptions {
    let spent = clock.now() &- lastContact
    let leftMs = spent >= patience ? 0 : Int(min((patience - spent) / 1_000_000, UInt64(Int32.max)))
    return ControlPlane.deadline(milliseconds: max(1000, min(options.config.nodeManagerRpcTimeoutMs, leftMs)))
  }

  /// How long a bundle or a ControlService lease the head does not list stays before it
  /// goes: longer than a whole placement round (a prepare and a commit, each up to the
  /// node call deadline) or a lease's answer, plus a report's own deadline, so nothing a
  /// round or a grant still in flight holds is undercut.
  var holdingsGraceNanos: UInt64 {
    let ms = UInt64(clamping: max(0, options.config.nodeManagerRpcTimeoutMs)) &* 3
      &+ UInt64(clamping: max(0, options.config.resourceReportPeriodMs)) &* 2
    return ms.multipliedReportingOverflow(by: 1_000_000).overflow ? .max : ms * 1_000_000
  }

  /// Every `resourceReportPeriodMs`: report this node's free resources and pending
  /// demand to the ControlService, settle its bundles with the head's list of them, and
  /// take its view of every node (for routing). Ends at shutdown.
  /// Stops short of reporting when the ControlService stays unreachable for
  /// `gcsRpcServerReconnectTimeoutS`, or answers that it declared this node dead
  /// (fenced): `controlLost` runs once with the reason (the daemon then stops; its
  /// workers would serve a cluster that is gone, or work already moved elsewhere).
  func syncClusterView() async {
    var lastContact = clock.now()
    let patience = Duration.seconds(max(1, options.config.gcsRpcServerReconnectTimeoutS)).clampedNanoseconds
    while !state.withLock({ $0.shuttingDown }) {
      if let c = controlClient() {
        let client = c.controlService
        var report = Swiftray_ReportResourcesRequest()
        report.nodeID = Data(options.nodeID.binary)
        let store = store.stats
        report.objectStoreUsed = store.used
        report.objectStoreCapacity = store.capacity
        state.withLock { s in
          report.available = s.queue.available.proto
          report.total = s.queue.total.proto
          report.bundleEpoch = s.bundleEpoch
          report.infeasibleDemand = s.queue.pending.prefix(100).map { $0.shape.union($0.placement).proto }
        }
        // A head that hangs (no answer, TCP open) counts as unreachable, as one that died;
        // the report waits no longer than the patience left, so a node cut off from its
        // head stops about `gcsRpcServerReconnectTimeoutS` after the last answer, not a
        // whole call deadline later.
        if let reply = try? await client.reportResources(report, options: reportOptions(since: lastContact, patience: patience)) {
          lastContact = clock.now()
          headAnswered.withLock { [lastContact] in $0 = lastContact }
          if reply.declaredDead, let lost = controlLost.withLock({ h in defer { h = nil }; return h }) {
            // Fenced: a partition or a pause outlived the health checks. Its actors run
            // elsewhere now and its objects were rebuilt: acting on them would run an
            // actor twice or serve stale copies, so the node stops (as Ray's raylet).
            lost("the head declared this node dead (\(reply.deathDetail.prefix(300))) and fenced it; its work was moved "
              + "to other nodes. Start it again (swiftray start --address …) to rejoin as a new node")
          }
          if reply.holdingsListed { holdingsListed(reply) }
          if reply.unknownNode, let me = registration.withLock({ $0 }) {
            // The head restarted (its tables on Redis) and does not know this node yet.
            var req = Swiftray_RegisterNodeRequest()
            req.node = me
            req.recentWorkerExits = state.withLock { Array($0.recentExits) }
            if (try? await client.registerNode(req, options: headCallOptions)) != nil {
              log.info("node/re-registered", metadata: ["control": "\(options.controlEndpoint)"])
            }
          }
        } else if clock.now() - lastContact > patience, let lost = controlLost.withLock({ h in defer { h = nil }; return h }) {
          lost("the ControlService at \(options.controlEndpoint) has been unreachable for "
            + "\(options.config.gcsRpcServerReconnectTimeoutS) s (gcs_rpc_server_reconnect_timeout_s)")
        }
        await reportObjectEvents(client)
        await refreshClusterView(client)
      }
      await clock.sleep(for: .milliseconds(max(10, options.config.resourceReportPeriodMs)))
    }
  }

  /// What this node's `/api/healthz` reports: up unless stopping; the head reachable
  /// while it answered within five report rounds (at least 5 s), as a probe should see
  /// a head that stopped answering well before the node gives up on it.
  public func agentHealthSample() -> AgentHealth.Sample {
    let now = clock.now()
    let up = !state.withLock { $0.shuttingDown }
    let since = headAnswered.withLock { $0 }.map { now >= $0 ? now - $0 : 0 }
    // The period is a setting: bounded (an hour) before it is multiplied.
    let periodMs = UInt64(clamping: min(max(options.config.resourceReportPeriodMs, 0), 3_600_000))
    let stale = max(5_000, periodMs * 5) * 1_000_000
    return AgentHealth.Sample(rayletUp: up, sinceHeadNanos: since, staleAfterNanos: stale)
  }

  /// What happened to objects in this node's store since the last round, to the head
  /// (lost if the head does not take it: events are best effort).
  func reportObjectEvents(_ client: some Swiftray_ControlService.ClientProtocol) async {
    let (events, dropped) = store.takeObjectEvents(max: ControlService.maxEventsPerBatch)
    guard !events.isEmpty || dropped > 0 else { return }
    var r = Swiftray_ReportTaskEventsRequest()
    r.nodeID = Data(options.nodeID.binary)
    r.wallNowNs = WallClock.nanos()
    r.objectEvents = events
    r.objectEventsDropped = dropped
    _ = try? await client.reportTaskEvents(r, options: headCallOptions)
  }

  func refreshClusterView(_ client: some Swiftray_ControlService.ClientProtocol) async {
    var req = Swiftray_GetAllNodesRequest()
    (req.workerDeathsLog, req.workerDeathsNext) = state.withLock { $0.workerDeathsSeen }
    guard let reply = try? await client.getAllNodes(req, options: headCallOptions) else { return }
    let nodes = reply.nodes
    publishDeaths(of: nodes)
    publishWorkerDeaths(reply)
    store.setPullSources(NodeTable.pullableStores(nodes))
    let view = nodes.map { n in
      NodePicker.NodeView(id: n.nodeID, address: n.nodeManagerAddress.isEmpty ? n.nodeManagerEndpoint : n.nodeManagerAddress,
                          total: ResourceSet(proto: n.total), available: ResourceSet(proto: n.available),
                          alive: n.alive, startTimeMs: n.startTimeMs)
    }
    let moved = state.withLock { s in
      s.cluster.refreshed(view)
      return Self.spillQueued(&s, me: options.nodeID)
    }
    for (c, r) in moved { c.resume(returning: r) }
  }

  /// Sends waiting requests this node cannot run now to nodes of the fresh view that
  /// can (`QueueSpillback`): their owners get a spillback answer. Under the lock; returns
  /// the continuations to resume after it.
  static func spillQueued(_ s: inout State, me: NodeID)
    -> [(CheckedContinuation<Swiftray_RequestWorkerLeaseReply, Never>, Swiftray_RequestWorkerLeaseReply)] {
    guard !s.shuttingDown else { return [] }
    let queued = s.queue.movableRequests.map { (id: $0.id, needs: $0.needsFree) }
    var out: [(CheckedContinuation<Swiftray_RequestWorkerLeaseReply, Never>, Swiftray_RequestWorkerLeaseReply)] = []
    for m in s.cluster.spill(queued, free: s.queue.available, me: Data(me.binary)) {
      guard s.queue.leaseRequestMoved(m.requestID), let c = s.takeReply(m.requestID) else { continue }
      var r = Swiftray_RequestWorkerLeaseReply()
      r.status = .spillback
      r.retryAtEndpoint = m.address
      out.append((c, r))
    }
    return out
  }

  public var nodeInfo: Swiftray_NodeInfo {
    var n = Swiftray_NodeInfo()
    n.nodeID = Data(options.nodeID.binary)
    n.nodeManagerEndpoint = endpoint.description
    // Empty when this node is not networked: its processes then listen on Unix sockets only.
    n.ipAddress = options.nodeIP ?? ""
    n.storeAddress = store.remoteAddress
    let (total, available) = state.withLock { ($0.queue.total, $0.queue.available) }
    n.total = total.proto
    n.available = available.proto
    n.alive = true
    n.sessionDir = options.sessionDir
    return n
  }

  /// What this node's `/metrics` shows of it. Any thread.
  public func metricsSample(nodeIP: String) -> NodeMetricsSample {
    var n = NodeMetricsSample(nodeIP: nodeIP)
    let (total, available, workers, idle) = state.withLock {
      ($0.queue.total, $0.queue.available, $0.workers.count, $0.queue.idleWorkerCount)
    }
    n.resourcesTotal = total.asUnits
    n.resourcesAvailable = available.asUnits
    n.workers = workers
    n.idleWorkers = idle
    n.store = store.stats
    return n
  }

  // MARK: actions

  func perform(_ actions: [LeaseQueue.Action]) {
    for a in actions {
      switch a {
      case .grant(let requestID, let lease):
        let (cont, proc) = state.withLock { ($0.takeReply(requestID), $0.workers.process(lease.worker)) }
        var r = Swiftray_RequestWorkerLeaseReply()
        r.status = .granted
        r.leaseID = lease.id
        r.worker.workerID = Data(lease.worker.binary)
        r.worker.nodeID = Data(options.nodeID.binary)
        r.worker.endpoint = proc?.endpoint ?? ""
        r.worker.localEndpoint = proc?.localEndpoint ?? ""
        r.worker.pid = proc?.pid ?? 0
        r.gpuIds = lease.gpuIDs.map { Int32(truncatingIfNeeded: $0) }
        r.leaseGrant = leaseGrants.grant(leaseID: lease.id, worker: Data(lease.worker.binary),
                                         owner: lease.owner == .nil_ ? Data() : Data(lease.owner.binary))
        if let cont { cont.resume(returning: r) } else {
          // The owner went away between asking and the grant: take it back.
          perform(state.withLock { $0.queue.leaseReturned(lease.id, disconnect: false) })
        }
      case .reject(let requestID, let detail):
        var r = Swiftray_RequestWorkerLeaseReply()
        r.status = .infeasible
        r.detail = detail
        state.withLock { $0.takeReply(requestID) }?.resume(returning: r)
      case .placementGroupUnavailable(let requestID, let removed, let detail):
        var r = Swiftray_RequestWorkerLeaseReply()
        r.status = removed ? .placementGroupRemoved : .placementGroupPending
        r.detail = detail
        state.withLock { $0.takeReply(requestID) }?.resume(returning: r)
      case .workerStartFailed(let requestID, let detail):
        var r = Swiftray_RequestWorkerLeaseReply()
        r.status = .workerStartFailed
        r.detail = detail
        state.withLock { $0.takeReply(requestID) }?.resume(returning: r)
      case .canceled(let requestID):
        var r = Swiftray_RequestWorkerLeaseReply()
        r.status = .canceled
        state.withLock { $0.takeReply(requestID) }?.resume(returning: r)
      case .startWorker(let env):
        startWorker(env: env)
      case .killWorker(let id):
        if let pid = state.withLock({ $0.workers.kill(id) }) { monitor.signal(pid, SIGKILL) }
      }
    }
  }

  private func startWorker(env: String) {
    let id = WorkerID.random()
    let context = state.withLock { s -> String?? in
      if s.shuttingDown { _ = s.queue.workerStartFailed(env: env); return .none }
      // Known before its pid: the worker may register (over the node's socket) before
      // the launcher returns, and must not be turned away then.
      s.workers.launching(id)
      _ = s.queue.workerStarting(id, env: env)
      return .some(env.isEmpty ? nil : s.envContexts[env])
    }
    guard let context else { return }
    var environment = workerEnvironment(for: id)
    environment[Self.runtimeEnvContextKey] = context
    monitor.launch(executable: options.workerExecutable, arguments: ["worker"], environment: environment) {
      [self] result in
      switch result {
      case .success(let pid):
        switch state.withLock({ $0.workers.spawned(id, pid: pid) }) {
        case .none: break
        case .kill(let pid): monitor.signal(pid, SIGKILL)
        case .ended(let exitCode, let signal):
          // Its exit was seen before its pid came back: reported now.
          workerExited(.init(pid: pid, exitCode: exitCode, signal: signal))
        }
      case .failure(let error):
        // While the node stops, launches still queued fail by design: nothing to say or retry.
        let actions = state.withLock { s -> [LeaseQueue.Action]? in
          let stop = s.workers.launchFailed(id)
          if s.shuttingDown { return nil }
          let rejected = stop ? s.queue.workersFailToStart(detail: "worker processes cannot be started: \(error.message)") : []
          return rejected + s.queue.workerLaunchFailed(id)
        }
        guard let actions else { return }
        log.error("worker/spawn-failed", metadata: ["error": "\(error)"])
        perform(actions)
      }
    }
  }

  /// The variable that gives a worker its runtime environment's context (JSON; the
  /// worker applies it before any user code, `_worker._apply_runtime_env`).
  public static let runtimeEnvContextKey = "SWIFTRAY_RUNTIME_ENV_CONTEXT"

  /// A worker's whole environment; without `id`, the fork server's (every worker's
  /// but `ForkServer.perWorkerKeys`).
  func workerEnvironment(for id: WorkerID?) -> [String: String] {
    var env = options.workerEnvironment
    for (k, v) in options.config.asEnvironment { env[k] = v }
    env["SWIFTRAY_WORKER_ID"] = id?.hex
    env["SWIFTRAY_NODE_ID"] = options.nodeID.hex
    env["SWIFTRAY_NODE_MANAGER"] = endpoint.description
    env["SWIFTRAY_CONTROL"] = options.controlEndpoint.description
    env["SWIFTRAY_SESSION_DIR"] = options.sessionDir
    // The worker proves itself with the cluster's token; whatever the driver's
    // environment said about tokens does not apply to it.
    for k in ["SWIFTRAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"] { env[k] = nil }
    if let token = options.auth.tokenText {
      env["SWIFTRAY_AUTH_TOKEN"] = token
      env["SWIFTRAY_AUTH_MODE"] = nil
    } else {
      env["SWIFTRAY_AUTH_TOKEN"] = nil
      env["SWIFTRAY_AUTH_MODE"] = "disabled"
    }
    if let ip = options.nodeIP { env["SWIFTRAY_NODE_IP"] = ip }
    env[LeaseGrants.environmentKey] = leaseKey
    env["PYTHONUNBUFFERED"] = "1"
    // Swift's crash handler would catch SIGSEGV raised by user code and print a Swift
    // backtrace of the host; a crashing task must simply kill its worker.
    if env["SWIFT_BACKTRACE"] == nil { env["SWIFT_BACKTRACE"] = "enable=no" }
    return env
  }

  // MARK: process monitor callbacks

  func workerOutput(pid: Int32, isErr: Bool, lines: [String]) {
    var batch = Swiftray_LogBatch()
    batch.pid = pid
    batch.isErr = isErr
    batch.lines = lines
    let (subs, id) = state.withLock { s -> ([AsyncStream<Swiftray_LogBatch>.Continuation], WorkerID?) in
      s.workers.output(pid: pid, isErr: isErr, lines: lines)
      return (Array(s.logSubscribers.values), s.workers.byPid[pid])
    }
    for c in subs { c.yield(batch) }
    // On the monitor's thread, which this blocking write may hold up a little; drivers got the lines first.
    logFiles.append(LogFileName.worker(id, pid: pid, isErr: isErr), lines)
  }

  func workerExited(_ status: ProcessMonitor.ExitStatus) {
    store.processDied(status.pid)
    let id = state.withLock { $0.workers.byPid[status.pid] }
    logFiles.closeFiles([true, false].map { LogFileName.worker(id, pid: status.pid, isErr: $0) }
      + [true, false].map { LogFileName.worker(nil, pid: status.pid, isErr: $0) })
    var report: Swiftray_WorkerExitInfo?
    var failedStart: String?
    let actions: [LeaseQueue.Action] = state.withLock { s in
      guard let exit = s.workers.exited(pid: status.pid, exitCode: status.exitCode, signal: status.signal,
                                        node: options.nodeID, shuttingDown: s.shuttingDown) else { return [] }
      failedStart = exit.failedStart
      report = s.shuttingDown ? nil : exit.info
      s.recentExits.append(exit.info.workerID)
      if s.recentExits.count > WorkerDeathLog.maxPerAnswer { s.recentExits.removeFirst() }
      if s.shuttingDown { return [] }
      let rejected = exit.stopStarting ? s.queue.workersFailToStart(detail: "worker processes fail to start: \(exit.info.detail)") : []
      return rejected + s.queue.workerExited(exit.id)
    }
    if let failedStart { log.error("worker/start-failed", metadata: ["detail": "\(failedStart)"]) }
    perform(actions)
    // The ControlService restarts or buries the actor it hosted and the actors it owned.
    if let report { reportToControl(.with { $0.exit = report }) }
  }

  /// Tells the ControlService a worker (or driver) of this node is gone. Reports go in
  /// order; one made while the head is down (restarting on Redis) waits for it, up to
  /// `gcs_rpc_server_reconnect_timeout_s`, so the restarted head still learns of the
  /// workers and drivers that died meanwhile (their actors restart or die).
  func reportToControl(_ req: Swiftray_ReportWorkerFailureRequest) {
    let patience = Duration.seconds(max(1, options.config.gcsRpcServerReconnectTimeoutS))
    controlReports.yield { [self] in
      guard let c = controlClient() else { return }
      // Each try has the head's call deadline: a head that hangs must not stall the
      // reports queued behind this one (a failure report is idempotent at the head).
      let options = headCallOptions
      _ = try? await ControlPlane.whileUnavailable(patience: patience, orTimedOut: true) {
        try await c.controlService.reportWorkerFailure(req, options: options)
      }
    }
  }

  func controlClient() -> ControlPlane.Connection? { control.client(options.controlEndpoint.description) }

  // MARK: gRPC service

  /// What this node has in all (its capacity, not what is free).
  public var totalResources: ResourceSet { state.withLock { $0.queue.total } }

  public func requestWorkerLease(request: Swiftray_RequestWorkerLeaseRequest, context: ServerContext) async throws -> Swiftray_RequestWorkerLeaseReply {
    let shape = try ResourceSet.checked(request.resources, field: "resources")
    let placement = try ResourceSet.checked(request.placementResources, field: "placement_resources")
    let key = SchedulingKey(shape: shape, proto: request.strategy)
    let maxWaiting = options.config.maxPendingLeaseRequestsPerNode
    let nodeHex = options.nodeID.hex.prefix(12)
    // While it waits here it may still move to a node that frees up first
    // (QueueSpillback), also when another node sent it here (its owner follows a few such
    // hops, then asks its own node again). Affinity and bundles tie it to its node.
    let movable = (key.strategy == .default || key.strategy == .spread)
      && BundleResources.groups(in: shape.union(placement)).isEmpty
    // Numbered by the node once queued (`LeaseRequestIDs`): the owner's number is its own.
    var req = LeaseQueue.Request(id: 0, shape: shape,
                                 owner: WorkerID(binary: request.owner.workerID) ?? .nil_,
                                 placement: placement, movable: movable, forControl: request.forControl)
    let requestKey = LeaseRequestIDs.Key(owner: request.owner.workerID, number: request.leaseRequestID)
    let needs = req.shape.union(req.placement)
    let preferred = request.preferredNode.isEmpty ? nil : request.preferredNode
    // Unless a node already spilled it here, the request goes where its strategy says.
    var routed = !request.grantOrReject
    if routed && !state.withLock({ $0.queue.total.contains(needs) }), let c = controlClient() {
      // This node can never fit it and the view of the others is up to one report
      // period old: a node may just have joined. Look again before calling it infeasible.
      let client = c.controlService
      if let group = BundleResources.groups(in: needs).first,
         let r = await placementGroupAnswer(group, needs: needs, client) {
        return r
      }
      await refreshClusterView(client)
    }
    let busy = Swiftray_RequestWorkerLeaseReply.with {
      $0.status = .busy
      $0.detail = "node \(nodeHex) already has \(maxWaiting) lease requests waiting (max_pending_lease_requests_per_node); ask again later"
    }
    // A runtime environment is set up before the request is queued: routed first, so
    // a request another node should take costs no set-up here.
    let runtimeEnv: RuntimeEnv?
    do { runtimeEnv = try RuntimeEnv.parse(request.runtimeEnv) } catch {
      return Self.runtimeEnvFailed("node \(nodeHex) refused its runtime_env: \(error.message)")
    }
    if let env = runtimeEnv, state.withLock({ $0.envContexts[env.key] == nil }) {
      enum Admit { case reply(Swiftray_RequestWorkerLeaseReply), setUp }
      let admit = state.withLock { s -> Admit in
        if routed, let r = route(&s, key, needs: needs, preferred: preferred) { return .reply(r) }
        guard s.awaitingSetUp + s.queue.pending.count < maxWaiting else { return .reply(busy) }
        guard s.envContexts.count + s.awaitingSetUp < Self.maxRuntimeEnvs else {
          return .reply(.with {
            $0.status = .busy
            $0.detail = "node \(nodeHex) holds \(Self.maxRuntimeEnvs) runtime environments; unused ones are forgotten within minutes"
          })
        }
        s.awaitingSetUp += 1
        return .setUp
      }
      if case .reply(let r) = admit { return r }
      routed = false
      let outcome = await runtimeEnvAgent().setUp(env, now: { [clock] in clock.now() })
      state.withLock { $0.awaitingSetUp -= 1 }
      switch outcome {
      case .failure(let e):
        return Self.runtimeEnvFailed("the runtime_env could not be set up on node \(nodeHex): \(e.message)")
      case .success(let context):
        state.withLock { $0.envContexts[env.key] = context }
      }
      if Task.isCancelled { var r = Swiftray_RequestWorkerLeaseReply(); r.status = .canceled; return r }
    }
    req.env = runtimeEnv?.key ?? ""
    let routedHere = routed
    // The caller gave up: its deadline passed (the handler's task is cancelled), or its
    // connection went (gRPC says so only through the RPC's cancellation handle). Either
    // way the waiting request leaves the queue rather than be granted to nobody.
    let withdraw: @Sendable () -> Void = { [self] in
      perform(state.withLock { s in s.requestIDs.find(requestKey).map { s.queue.leaseRequestCanceled($0) } ?? [] })
    }
    return await withRPCCancellationHandler { await withTaskCancellationHandler {
      await withCheckedContinuation { (c: CheckedContinuation<Swiftray_RequestWorkerLeaseReply, Never>) in
        enum Step { case reply(Swiftray_RequestWorkerLeaseReply), queued([LeaseQueue.Action]) }
        // Routing and queueing under one lock: concurrent requests each see the ones
        // before them (a burst must not all stay because the first saw a free CPU).
        let step = state.withLock { s -> Step in
          var r = Swiftray_RequestWorkerLeaseReply()
          // Stopping: nothing will be granted any more; say so rather than hang the caller.
          if s.shuttingDown { r.status = .canceled; return .reply(r) }
          if routedHere, let elsewhere = route(&s, key, needs: needs, preferred: preferred) { return .reply(elsewhere) }
          // Bounded: owners keep a few requests per shape, so a full queue means a
          // flood; the owner asks again shortly.
          guard s.queue.pending.count + s.awaitingSetUp < maxWaiting else { return .reply(busy) }
          // The cache sweep may have forgotten the environment since it was looked up
          // (nothing used it yet): a worker started now would lack it. The owner asks
          // again, and that request sets it up anew (from the files, when they are left).
          if let env = runtimeEnv, s.envContexts[env.key] == nil {
            r.status = .busy
            r.detail = "node \(nodeHex) just evicted this runtime environment from its cache; ask again"
            return .reply(r)
          }
          guard let id = s.requestIDs.admit(requestKey) else {
            r.status = .infeasible
            r.detail = "lease request \(request.leaseRequestID) of this owner is already waiting on this node"
            return .reply(r)
          }
          req.id = id
          s.replies[id] = c
          return .queued(s.queue.leaseRequested(req))
        }
        switch step {
        case .reply(let r): c.resume(returning: r)
        case .queued(let actions): perform(actions)
        }
      }
    } onCancel: { withdraw() } } onCancelRPC: { withdraw() }
  }

  /// Where a request goes by its strategy: nil for here, else the spillback or the
  /// refusal to answer. Under the state lock.
  func route(_ s: inout State, _ key: SchedulingKey, needs: ResourceSet, preferred: Data?) -> Swiftray_RequestWorkerLeaseReply? {
    let me = NodePicker.NodeView(id: Data(options.nodeID.binary), address: endpoint.description, total: s.queue.total,
                                 available: s.queue.uncommitted, alive: true, startTimeMs: 0)
    var r = Swiftray_RequestWorkerLeaseReply()
    switch s.cluster.route(key, needs: needs, me: me, preferred: preferred) {
    case .local: return nil
    case .spillback(let address):
      r.status = .spillback
      r.retryAtEndpoint = address
    case .reject(let detail):
      r.status = .infeasible
      r.detail = detail
    }
    return r
  }

  static let runtimeEnvSweepPeriod: Duration = .seconds(60)
  static let maxRuntimeEnvs = 4096

  static func runtimeEnvFailed(_ detail: String) -> Swiftray_RequestWorkerLeaseReply {
    var r = Swiftray_RequestWorkerLeaseReply()
    r.status = .runtimeEnvSetupFailed
    r.detail = detail
    return r
  }

  /// The node's runtime-environment agent, made on first use. Its set-up steps run
  /// `$SWIFTRAY_PYTHON -m swiftray._runtime_env_setup` with the workers' environment.
  func runtimeEnvAgent() -> RuntimeEnvAgent {
    envAgent.withLock { a in
      if let a { return a }
      var env = options.workerEnvironment
      if let paths = env["SWIFTRAY_SYS_PATH"].flatMap({ try? JSONDecoder().decode([String].self, from: Data($0.utf8)) }) {
        env["PYTHONPATH"] = (paths + [env["PYTHONPATH"]].compactMap { $0 }).joined(separator: ":")
      }
      // The worker executable is the package's `_bin/swiftray`; the script lies beside `_bin`.
      let script = URL(fileURLWithPath: options.workerExecutable).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("_runtime_env_setup.py").path
      let made = RuntimeEnvAgent(root: options.sessionDir + "/runtime_resources", python: env["SWIFTRAY_PYTHON"] ?? "python3",
                                 script: FileManager.default.fileExists(atPath: script) ? script : nil, environment: env, maxPackageBytes: options.config.runtimeEnvMaxPackageBytes) { [weak self] key in
        guard let self, let c = self.controlClient() else { throw SwiftrayError(.system, "this node has no connection to the head") }
        var req = Swiftray_KVGetRequest()
        req.namespace = PackageStore.namespace
        req.key = key
        let r = try await c.controlService.kvGet(req, options: self.headCallOptions)
        return r.found ? r.value : nil
      }
      a = made
      return made
    }
  }

  /// Deletes what no live environment uses from the node's runtime-environment cache
  /// (`RuntimeEnvCache`), and forgets the contexts of environments nothing uses.
  func sweepRuntimeEnvs() async {
    guard let agent = envAgent.withLock({ $0 }) else { return }
    let inUse = state.withLock { $0.queue.environmentsInUse }
    let (deleted, forgotten) = await agent.sweep(inUse: inUse, now: clock.now(), maxBytes: options.config.runtimeEnvCacheMaxBytes,
                                                 ttlNanos: UInt64(options.config.runtimeEnvCacheTtlS) * 1_000_000_000)
    state.withLock { s in for k in forgotten { s.envContexts[k] = nil } }
    if !deleted.isEmpty { log.info("runtime-env/evicted", metadata: ["resources": "\(deleted)"]) }
  }

  /// For a request inside placement group `group` that this node cannot fit: asks the
  /// head about the group; `BundleResources.leaseAnswer` decides the reply (nil: it is
  /// placed; routing finds its bundles' node). Nil too when the head does not answer.
  func placementGroupAnswer(_ group: String, needs: ResourceSet,
                            _ client: some Swiftray_ControlService.ClientProtocol) async -> Swiftray_RequestWorkerLeaseReply? {
    var req = Swiftray_GetPlacementGroupRequest()
    req.placementGroupID = Data(PlacementGroupID(hex: group)?.binary ?? [])
    guard let reply = try? await client.getPlacementGroup(req, options: headCallOptions) else { return nil }
    return BundleResources.leaseAnswer(group: group, needs: needs, info: reply.found ? reply.group : nil)
  }

  // MARK: placement group bundles

  public func prepareBundles(request: Swiftray_PrepareBundlesRequest, context: ServerContext) async throws -> Swiftray_PrepareBundlesReply {
    var r = Swiftray_PrepareBundlesReply()
    var actions: [LeaseQueue.Action] = []
    let now = clock.now()
    state.withLock { s in
      for g in request.groups {
        guard let group = PlacementGroupID(binary: g.placementGroupID)?.hex else { r.prepared.append(false); continue }
        var wanted: [Int: ResourceSet] = [:]
        for (i, b) in zip(g.indices, g.bundles) { wanted[Int(i)] = ResourceSet(proto: b) }
        let ok = s.queue.bundlesPrepared(group: group, wanted, now: now)
        if ok && g.commit { actions += s.queue.bundlesCommitted(group: group, now: now) }
        r.prepared.append(ok)
      }
      s.bundleEpoch &+= 1
      r.bundleEpoch = s.bundleEpoch
    }
    perform(actions)
    return r
  }

  /// The head's list of what this node holds for it (from a report's answer):
  /// `LeaseQueue` commits the bundles it lists and returns, after the grace, those it
  /// does not; the ControlService's leases it does not list end after the grace (their
  /// workers stopped). Entries that do not parse are dropped; only what this node holds
  /// matters, so the lists are cut.
  func holdingsListed(_ reply: Swiftray_ReportResourcesReply) {
    var listed: [String: Set<Int>] = [:]
    for h in reply.bundles.prefix(Self.maxListed) {
      guard let hex = PlacementGroupID(binary: h.placementGroupID)?.hex else { continue }
      listed[hex, default: []].formUnion(h.indices.prefix(Self.maxListed).filter { $0 >= 0 }.map(Int.init))
    }
    let leases = Set(reply.controlLeases.prefix(Self.maxListed))
    let now = clock.now(), grace = holdingsGraceNanos
    perform(state.withLock { s in
      s.queue.bundlesReconciled(listed: listed, now: now, grace: grace)
        + s.queue.controlLeasesReconciled(listed: leases, now: now, grace: grace)
    })
  }
  static let maxListed = 10_000

  public func commitBundles(request: Swiftray_CommitBundlesRequest, context: ServerContext) async throws -> Swiftray_CommitBundlesReply {
    let groups = request.placementGroupIds.compactMap { PlacementGroupID(binary: $0)?.hex }
    let now = clock.now()
    var r = Swiftray_CommitBundlesReply()
    perform(state.withLock { s in
      defer { s.bundleEpoch &+= 1; r.bundleEpoch = s.bundleEpoch }
      return groups.flatMap { s.queue.bundlesCommitted(group: $0, now: now) }
    })
    return r
  }

  public func returnBundles(request: Swiftray_ReturnBundlesRequest, context: ServerContext) async throws -> Swiftray_ReturnBundlesReply {
    guard let group = PlacementGroupID(binary: request.placementGroupID)?.hex else { return .init() }
    let only = request.indices.isEmpty ? nil : Set(request.indices.map(Int.init))
    var r = Swiftray_ReturnBundlesReply()
    perform(state.withLock { s in
      defer {
        s.bundleEpoch &+= 1
        r.bundleEpoch = s.bundleEpoch
        if request.resourcesWanted { r.total = s.queue.total.proto; r.available = s.queue.available.proto }
      }
      return s.queue.bundlesReturned(group: group, only: only)
    })
    return r
  }

  public func returnWorkerLease(request: Swiftray_ReturnWorkerLeaseRequest, context: ServerContext) async throws -> Swiftray_ReturnWorkerLeaseReply {
    let owner = WorkerID(binary: request.ownerWorkerID) ?? .nil_
    perform(state.withLock { $0.queue.leaseReturned(request.leaseID, disconnect: request.disconnectWorker, owner: owner) })
    return Swiftray_ReturnWorkerLeaseReply()
  }

  public func cancelWorkerLease(request: Swiftray_CancelWorkerLeaseRequest, context: ServerContext) async throws -> Swiftray_CancelWorkerLeaseReply {
    let key = LeaseRequestIDs.Key(owner: request.ownerWorkerID, number: request.leaseRequestID)
    let actions = state.withLock { s in s.requestIDs.find(key).map { s.queue.leaseRequestCanceled($0) } ?? [] }
    var r = Swiftray_CancelWorkerLeaseReply()
    r.canceled = !actions.isEmpty
    perform(actions)
    return r
  }

  /// A driver's process ended (the monitor thread says so, through its pidfd): each
  /// driver it was is reported like a dead worker (it owned actors and objects), and the
  /// leases it held here go (it was killed before it could give them back).
  func driverProcessEnded(pid: Int32) {
    let (gone, actions) = state.withLock { s -> ([WorkerID], [LeaseQueue.Action]) in
      let ids = s.workers.driverProcessEnded(pid: pid)
      return (ids, ids.flatMap { s.queue.workerExited($0) })
    }
    perform(actions)
    for id in gone {
      var info = Swiftray_WorkerExitInfo()
      info.workerID = Data(id.binary)
      info.pid = pid
      info.nodeID = Data(options.nodeID.binary)
      info.detail = "the driver (pid \(pid)) on node \(options.nodeID.hex.prefix(12)) exited"
      reportToControl(.with { $0.exit = info })
    }
  }

  public func workerBlocked(request: Swiftray_WorkerBlockedRequest, context: ServerContext) async throws -> Swiftray_WorkerBlockedReply {
    if let id = WorkerID(binary: request.workerID) {
      perform(state.withLock { request.blocked ? $0.queue.workerBlocked(id) : $0.queue.workerUnblocked(id) })
    }
    return Swiftray_WorkerBlockedReply()
  }

  public func getWorkerFailureCause(request: Swiftray_GetWorkerFailureCauseRequest, context: ServerContext) async throws -> Swiftray_GetWorkerFailureCauseReply {
    var r = Swiftray_GetWorkerFailureCauseReply()
    guard let id = WorkerID(binary: request.workerID) else { return r }
    // The exit may race the owner's question by a few milliseconds: wait a little.
    for _ in 0..<50 {
      if let info = state.withLock({ $0.workers.exitInfo(id) }) {
        r.found = true
        r.exit = info
        return r
      }
      await clock.sleep(for: .milliseconds(10))
    }
    return r
  }

  public func killWorker(request: Swiftray_KillWorkerRequest, context: ServerContext) async throws -> Swiftray_KillWorkerReply {
    var r = Swiftray_KillWorkerReply()
    guard let id = WorkerID(binary: request.workerID) else { return r }
    let pid = state.withLock { $0.workers.killing(id, reason: request.reason) }
    if let pid { monitor.signal(pid, SIGKILL); r.killed = true }
    return r
  }

  public func freeObjects(request: Swiftray_FreeObjectsRequest, context: ServerContext) async throws -> Swiftray_FreeObjectsReply {
    store.free(request.objectIds.prefix(100_000).compactMap(ObjectID.init(binary:)))
    return Swiftray_FreeObjectsReply()
  }

  public func getNodeStats(request: Swiftray_GetNodeStatsRequest, context: ServerContext) async throws -> Swiftray_GetNodeStatsReply {
    var r = Swiftray_GetNodeStatsReply()
    r.node = nodeInfo
    r.store = store.stats
    state.withLock { s in
      r.numWorkers = Int32(s.workers.count)
      r.numIdleWorkers = Int32(s.queue.idleWorkerCount)
      r.workerPids = s.workers.pids
      if request.withWorkers { (r.workers, r.exits) = s.workers.listing }
    }
    return r
  }

  public func listLogs(request: Swiftray_ListLogsRequest, context: ServerContext) async throws -> Swiftray_ListLogsReply {
    let logs = NodeLogs(session: options.sessionDir)
    let files = try await NodeLogs.offLoop { logs.list() }
    return .with { r in
      r.files = files.map { f in .with { $0.name = f.name; $0.size = f.size; $0.modifiedMs = f.modifiedMs } }
    }
  }

  /// A log file's tail, then (with `follow`) what it gains, polled every quarter second
  /// until the caller hangs up or this node stops.
  public func getLog(request: Swiftray_GetLogRequest, response: RPCWriter<Swiftray_LogChunk>, context: ServerContext) async throws {
    let logs = NodeLogs(session: options.sessionDir)
    let name = request.name
    guard logs.path(name) != nil else {
      throw RPCError(code: .invalidArgument, message: "'\(name.prefix(64))' is not a log file name (see `swiftray logs` for the list)")
    }
    let lines = Int(max(0, min(request.tailLines, 1_000_000)))
    var offset: Int64
    do {
      let first = try await NodeLogs.offLoop { try logs.tail(name, lines: lines) }
      offset = first.end
      for start in stride(from: 0, to: first.data.count, by: NodeLogs.maxChunk) {
        try await response.write(.with { $0.data = Data(first.data[start..<min(start + NodeLogs.maxChunk, first.data.count)]) })
      }
    } catch is NodeLogs.ReadError {
      throw RPCError(code: .notFound, message: "no log file '\(name)' on node \(options.nodeID.hex)")
    }
    guard request.follow else { return }
    // Each follower polls its file: a bounded number at once.
    guard state.withLock({ s -> Bool in
      guard s.logFollowers < Self.maxLogFollowers else { return false }
      s.logFollowers += 1
      return true
    }) else {
      throw RPCError(code: .resourceExhausted, message: "node \(options.nodeID.hex) already has \(Self.maxLogFollowers) logs followed; "
        + "stop one (or leave out --follow)")
    }
    defer { state.withLock { $0.logFollowers -= 1 } }
    while !state.withLock({ $0.shuttingDown }) {
      try await Task.sleep(for: .milliseconds(250))
      let from = offset
      guard let next = try? await NodeLogs.offLoop({ try logs.read(name, from: from) }) else { continue }
      offset = next.end
      if !next.data.isEmpty { try await response.write(.with { $0.data = Data(next.data) }) }
    }
  }

  public func subscribeLogs(request: Swiftray_SubscribeLogsRequest, response: RPCWriter<Swiftray_LogBatch>, context: ServerContext) async throws {
    let (stream, cont) = AsyncStream<Swiftray_LogBatch>.makeStream(bufferingPolicy: .bufferingNewest(10_000))
    // A node shutting down takes no new subscriber (its last ones are finished once).
    guard let key = state.withLock({ s -> UInt64? in
      guard !s.shuttingDown else { return nil }
      let k = s.nextSubscriber
      s.nextSubscriber += 1
      s.logSubscribers[k] = cont
      return k
    }) else { return }
    defer { _ = state.withLock { $0.logSubscribers.removeValue(forKey: key) } }
    try await response.write(Swiftray_LogBatch())  // subscribed (LogBatch)
    for await batch in stream { try await response.write(batch) }
  }

  // MARK: shutdown

  /// Stops every worker: SIGTERM, then SIGKILL after `grace`. Blocks until they are gone
  /// (bounded by `grace` + 2 s): call from a thread of your own, never a Task or an
  /// event loop.
  public func shutdown(grace: Duration = .milliseconds(500)) {
    LockDiscipline.mayBlock("NodeManager.shutdown")
    typealias Taken = (pids: [Int32], replies: [CheckedContinuation<Swiftray_RequestWorkerLeaseReply, Never>])
    // Log subscribers stay until the workers are gone: what a worker printed just
    // before (read when its pipe is drained at its end) still reaches the drivers.
    let taken: Taken = state.withLock { s in
      s.shuttingDown = true
      defer { s.replies.removeAll(); s.deathSubscribers.removeAll() }
      return (s.workers.pids, Array(s.replies.values))
    }
    // Stopping: nothing will be granted any more; say so rather than hang the callers.
    var canceled = Swiftray_RequestWorkerLeaseReply()
    canceled.status = .canceled
    for c in taken.replies { c.resume(returning: canceled) }
    let pids = taken.pids
    for p in pids { monitor.signal(p, SIGTERM) }
    // A blocking wait on the caller's own thread (polling the monitor), not a timer:
    // real time even under a simulation's clock, which nothing advances meanwhile.
    let clock = SystemClock()
    let deadline = clock.deadline(after: grace)
    while !monitor.livePids.isEmpty && clock.now() < deadline { usleep(5_000) }
    for p in monitor.livePids { monitor.signal(p, SIGKILL) }
    let hard = clock.deadline(after: .seconds(2))
    while !monitor.livePids.isEmpty && clock.now() < hard { usleep(5_000) }
    monitor.stopAndWait()
    envAgent.withLock { $0 }.map { a in Task { await a.shutdown() } }
    let subs = state.withLock { s in
      defer { s.logSubscribers.removeAll() }
      return Array(s.logSubscribers.values)
    }
    for c in subs { c.finish() }
    logFiles.closeAll()
    controlReports.finish()
    control.shutdown()
  }
}
