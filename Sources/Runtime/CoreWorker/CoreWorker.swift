import DequeModule
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOPosix
import RuntimeProto
import Synchronization

/// The CoreWorker of one process (driver or worker). A shell: `OwnerState` decides
/// everything an owner decides (references, tasks, lineage, leases, actor calls,
/// recovery); this class feeds it events (calls from the language layer, frames from
/// the data plane, replies from NodeManagers and the head, timers) and carries out the
/// `Effects` it returns: RPCs, fetches, store frees, waking readers. `TaskExecutor` is
/// the executor side (tasks pushed to this worker).
///
/// Threading: public methods may be called from any thread (Python threads with the
/// GIL released, NIO event loops, gRPC tasks). One event is one transition under
/// `state`'s lock; effects are carried out after it. Nothing here blocks an event loop.
public final class CoreWorker: Sendable {
  public struct Options: Sendable {
    public var isDriver: Bool
    public var workerID: WorkerID
    public var nodeID: NodeID
    public var nodeManager: Endpoint
    public var control: Endpoint
    public var sessionDir: String
    public var config: Config
    /// The node's IP on a networked node: this process also listens there over TCP.
    public var nodeIP: String?
    /// The cluster's token: every connection this process makes or accepts shows it.
    public var auth: ClusterAuth
    /// A worker's: its node's lease-grant key (pushed tasks run only under its grants);
    /// nil for a driver, which runs no pushed task.
    public var leaseGrants: LeaseGrants?
    /// Where its data plane listens (nil: a Unix socket in the session directory; a
    /// `MemoryNetwork` name for a process simulated in a test's).
    public var listen: Endpoint? = nil
    /// Every timer and reading of time: the system's, or a simulation's `ManualClock`.
    public var clock: any RuntimeClock = Clocks.current
    public init(isDriver: Bool, workerID: WorkerID, nodeID: NodeID, nodeManager: Endpoint, control: Endpoint,
                sessionDir: String, config: Config, nodeIP: String? = nil, auth: ClusterAuth, leaseGrants: LeaseGrants? = nil) {
      self.isDriver = isDriver; self.workerID = workerID; self.nodeID = nodeID; self.nodeManager = nodeManager
      self.control = control; self.sessionDir = sessionDir; self.config = config; self.nodeIP = nodeIP
      self.auth = auth; self.leaseGrants = leaseGrants
    }

    /// A worker's options, from the environment its NodeManager started it with
    /// (`NodeManager.startWorker`): ids, endpoints, session, the cluster's token and the
    /// node's lease-grant key. Throws for a process not started as a swiftray worker.
    public static func worker(environment env: [String: String], config: Config) throws(SwiftrayError) -> Options {
      guard let wid = env["SWIFTRAY_WORKER_ID"].flatMap(WorkerID.init(hex:)),
        let nid = env["SWIFTRAY_NODE_ID"].flatMap(NodeID.init(hex:)),
        let nm = env["SWIFTRAY_NODE_MANAGER"].flatMap(Endpoint.init),
        let control = env["SWIFTRAY_CONTROL"].flatMap(Endpoint.init),
        let session = env["SWIFTRAY_SESSION_DIR"]
      else { throw SwiftrayError(.system, "not started as a swiftray worker (SWIFTRAY_* variables missing)") }
      let auth = try ClusterAuth.required(for: "connect this worker to its node", environment: env)
      return Options(isDriver: false, workerID: wid, nodeID: nid, nodeManager: nm, control: control,
                     sessionDir: session, config: config, nodeIP: env["SWIFTRAY_NODE_IP"], auth: auth,
                     leaseGrants: env[LeaseGrants.environmentKey].flatMap(LeaseGrants.init(hex:)))
    }
  }

  /// A task pushed to this worker, waiting for or in execution by the language layer.
  public struct Execution: Sendable {
    public let spec: Swiftray_TaskSpec
    /// The GPUs of the lease it runs under (an actor's: those of its creation).
    public let gpuIDs: [Int32]
    let responder: DataPlaneResponder
    /// When the task thread took it (wall clock, ns): the span's start, sent back in the reply.
    var startedWallNs: UInt64 = 0
  }

  /// A remote reader waiting at this owner for a value not here yet.
  struct PendingGet: Sendable {
    let responder: DataPlaneResponder
    /// Who asks, and on which node (registered as a borrower of refs in the value).
    let requester: (id: WorkerID, node: Data)?
  }
  typealias Owner = OwnerState<ObjectWaiter, PendingGet>
  public typealias TaskArgument = Runtime.TaskArgument

  /// What only the shell keeps: registrations in flight at the head, which what
  /// concerns them waits for, and the cached NodeManager addresses of the cluster.
  struct Registrations {
    /// Actors created here whose registration with the head is in flight (background).
    var actors: [ActorID: AsyncLatch] = [:]
    /// Placement groups created here whose registration with the head is in flight.
    var groups: [PlacementGroupID: (op: UInt64, done: AsyncLatch)] = [:]
    var nextGroupOp: UInt64 = 0
    /// NodeManager addresses by node id (for freeing objects elsewhere), refreshed from
    /// the ControlService when a node is missing.
    var nodeManagers: [Data: String] = [:]
  }

  public let options: Options
  public let group: MultiThreadedEventLoopGroup
  public let address: Swiftray_Address
  public let jobID: JobID
  let state: Locked<Owner>
  let registrations = Locked(Registrations())
  let executor: TaskExecutor
  /// Objects awaited without a thread (`notifyWhenAvailable`).
  public let availability = AvailabilityNotices()
  let pool: DataPlaneClientPool
  /// Lanes to the workers of this node (tasks and actor calls only).
  let lanes: LaneClients
  let server: DataPlaneServer
  let selfBox = CoreBox()
  let tcpServer: DataPlaneServer?
  let nodeManager: ControlPlane.Connection
  let control: ControlPlane.Connection
  /// This node's shared-memory object store.
  public let objectStore: StoreClient
  let notifications: AsyncStream<@Sendable () async -> Void>.Continuation
  let log = Logger(label: "swiftray.core")
  /// The log subscription, cancelled at shutdown so the NodeManager client can close.
  let logForwarding = Locked<Task<Void, Never>?>(nil)
  /// Borrower registrations sent and not yet acknowledged: a task's reply waits for
  /// them, so its submitter cannot drop a ref before the owner counts this process.
  let registering = DispatchGroup()
  /// Streaming generators running here: their reports to their owners, by task.
  let generatorReports = Locked<[TaskID: GeneratorReport]>([:])
  /// NodeManagers of other nodes this process leased from, by endpoint.
  let otherNodes: ControlClients
  /// Lease requests out to other nodes, ended when their node is declared dead.
  let leaseCalls = CallsByNode()
  /// Set once this process's node is gone (its registration connection closed): why.
  public let localNodeLost = Locked<SwiftrayError?>(nil)
  /// Where user-facing warnings go (stderr of this process by default).
  let warn: @Sendable (String) -> Void
  /// The periodic task-event report: stopped at shutdown (not armed again), and its
  /// next round's timer cancelled then (it holds the worker weakly, so that only
  /// frees the timer's slot on the clock early).
  let eventReporter = Locked<(stopped: Bool, timer: ScheduledTimer?)>((false, nil))
  /// Task events a failed batch lost, told to the head with the next one.
  let eventsUnsent = Locked<UInt64>(0)
  /// The head when it lives in this process (a driver's local cluster): batches go to
  /// it directly rather than encoded over a connection. Set once, before tasks run.
  public let localHead = Locked<(@Sendable (Swiftray_ReportTaskEventsRequest, TaskEventBatch) async throws -> Void)?>(nil)
  /// User metrics recorded since the last report (`swiftray.util.metrics`).
  let userMetrics = Locked(UserMetricsBuffer())

  public init(options: Options, group: MultiThreadedEventLoopGroup, jobID: JobID?,
              warn: @escaping @Sendable (String) -> Void = { CoreWorker.writeStderr("(swiftray) WARNING: \($0)\n") }) throws {
    self.options = options
    self.group = group
    self.warn = warn
    otherNodes = ControlClients(group: group, auth: options.auth)
    let settings = NormalTaskSubmitter.Settings(
      maxPendingLeaseRequests: options.config.maxPendingLeaseRequestsPerShape,
      maxTasksInFlightPerWorker: options.config.maxTasksInFlightPerWorker,
      idleLingerNanos: UInt64(options.config.leaseIdleLingerMs) * 1_000_000,
      infeasibleRetryNanos: UInt64(options.config.infeasibleRetryMs) * 1_000_000,
      pipelineDepth: options.config.taskPipelineDepth,
      pipelineBelowNanos: UInt64(options.config.taskPipelineBelowUs) * 1000)
    nodeManager = try ControlPlane.connect(options.nodeManager, group: group, auth: options.auth)
    control = try ControlPlane.connect(options.control, group: group, auth: options.auth)
    let job: JobID
    if let jobID {
      job = jobID
    } else if options.isDriver {
      let control = control
      let reply: Swiftray_RegisterJobReply
      do {
        reply = try blockingAwait(timeout: .seconds(30)) {
          var req = Swiftray_RegisterJobRequest()
          req.driverPid = getpid()
          req.driverID = Data(options.workerID.binary)
          req.nodeID = Data(options.nodeID.binary)
          req.nodeIp = options.nodeIP ?? "127.0.0.1"
          req.entrypoint = Self.commandLine()
          req.submissionID = ProcessInfo.processInfo.environment["SWIFTRAY_SUBMISSION_ID"] ?? ""
          return try await control.controlService.registerJob(req)
        }
      } catch { throw ControlPlane.error(error, calling: "RegisterJob", at: options.control) }
      job = JobID(binary: reply.jobID) ?? JobID(0)
    } else {
      job = JobID(0)
    }
    self.jobID = job
    pool = DataPlaneClientPool(group: group, auth: options.auth)
    let pool = pool
    lanes = LaneClients(auth: options.auth, group: group, enabled: options.config.taskLanes == 1,
                        spinMicros: options.config.taskLaneSpinUs, witness: { ep, dead in pool.watch(ep) { _ in dead() } })
    // A worker whose node's store is gone dies at once, whatever it was doing (reading
    // arguments, storing returns, a put): its owner then retries the task elsewhere
    // instead of seeing it fail with this node's death.
    objectStore = try StoreClient(endpoint: ObjectStore.endpoint(sessionDir: options.sessionDir), pool: pool,
                                  onUnreachable: options.isDriver ? nil : Self.exitStoreGone)
    let sockDir = SessionPaths.socketDir(options.sessionDir)
    let endpoint = options.listen ?? Endpoint.unix("\(sockDir)/\(options.isDriver ? "d" : "w")-\(options.workerID.hex.prefix(16)).sock")
    if case .unix(let path) = endpoint, path.utf8.count > 103 {
      throw SwiftrayError(.invalidArgument, "The session directory \(options.sessionDir) is too long for Unix socket "
        + "paths (\(path.utf8.count) bytes; the limit is 103): use a shorter temp dir.")
    }
    // `server` needs `self` in its handler; a box breaks the init-order knot.
    let box = selfBox
    let handler: DataPlaneServer.Handler = { frame, responder in box.core?.handle(frame, responder) }
    server = try DataPlaneServer(group: group, endpoint: endpoint, auth: options.auth, handler: handler)
    // On a networked node other nodes reach this process over TCP; its own node keeps
    // using the Unix socket.
    tcpServer = try options.nodeIP.map { ip in
      try DataPlaneServer(group: group, endpoint: .tcp(host: ip, port: 0), auth: options.auth, handler: handler)
    }
    var addr = Swiftray_Address()
    addr.workerID = Data(options.workerID.binary)
    addr.nodeID = Data(options.nodeID.binary)
    addr.endpoint = (tcpServer?.endpoint ?? endpoint).description
    if tcpServer != nil { addr.localEndpoint = endpoint.description }
    addr.pid = getpid()
    address = addr
    let events = TaskEventBuffer(capacity: options.config.taskEventsMaxNumStatusEventsBufferOnWorker,
                                 enabled: options.config.enableTaskEvents == 1)
    state = Locked(Owner(submitter: NormalTaskSubmitter(settings: settings, firstRequestID: randomWord() >> 16),
                         idGen: TaskIDGenerator(job: job), selfAddress: addr, maxLineageBytes: options.config.maxLineageBytes,
                         taskEvents: events))
    executor = TaskExecutor(workerID: options.workerID, grants: options.leaseGrants,
                            maxQueued: options.config.maxQueuedTasksPerWorker, clock: options.clock, taskEvents: events,
                            maxHeldReplies: options.config.taskReplyBatch)
    if !options.isDriver, options.config.taskLanes == 1, let lanePath = Lane.path(forWorker: endpoint) {
      executor.lanes = try LaneServer(path: lanePath, auth: options.auth, wake: executor.ready)
      executor.spin = SpinPolicy(budgetNanos: UInt64(options.config.taskLaneSpinUs) * 1000)
      if options.config.taskReplyBatch > 0 { executor.replies.start() }
    }
    // One sender keeps NodeManager notifications (blocked/unblocked) in order.
    let (stream, cont) = AsyncStream<@Sendable () async -> Void>.makeStream(bufferingPolicy: .unbounded)
    notifications = cont
    Task { for await job in stream { await job() } }
    selfBox.core = self
    try registerWithNode()
    startTaskEventReporter()
  }

  /// This process's command line (a driver's entrypoint), from /proc: an embedded
  /// runtime's `CommandLine` may be empty. At most 4 KiB.
  static func commandLine() -> String {
    guard let raw = FileManager.default.contents(atPath: "/proc/self/cmdline") else { return CommandLine.arguments.joined(separator: " ") }
    let parts = raw.split(separator: 0, omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
    return String(parts.joined(separator: " ").prefix(4096))
  }

  /// Registers this process with its node over the node's Unix socket (the data-plane
  /// connection the store already uses: no gRPC connection, the larger part of a new
  /// worker's start-up) and stays subscribed there to deaths: nodes the cluster declares
  /// dead (leases there are lost at once, their tasks retried, and errors about them
  /// say why) and workers that exited anywhere (they borrow nothing any more). Blocks
  /// until the node answers (at most 30 s).
  func registerWithNode() throws {
    var req = Swiftray_RegisterWorkerRequest()
    req.workerID = Data(options.workerID.binary)
    req.pid = getpid()
    req.endpoint = address.endpoint
    req.localEndpoint = address.localEndpoint
    req.isDriver = options.isDriver
    let answer = Locked<Result<Void, SwiftrayError>?>(nil)
    let answered = DispatchSemaphore(value: 0)
    let box = selfBox
    let store = objectStore.endpoint
    pool.subscribe(store, .registerWorker(req)) { r in
      let first: Result<Void, SwiftrayError>
      switch r {
      case .success(let f):
        switch f.body {
        case .nodeDeath(let d)?: box.core?.nodeDied(d); return
        case .registerWorkerReply?: first = .success(())
        case .error(let e)?: first = .failure(SwiftrayError(.localRayletDied, "the node at \(store) refused to register this process: \(e.message)"))
        default: first = .failure(SwiftrayError(.system, "the node at \(store) answered a registration with \(String(describing: f.body))"))
        }
      case .failure(let e):
        first = .failure(SwiftrayError(.localRayletDied, "cannot register with the node at \(store): \(e.message)"))
        // Lost after it registered: this process's node is gone. A worker exits on its
        // own (its store is gone); a driver's waits end with this instead of hanging.
        box.core?.localNodeLost.withLock { l in
          if l == nil {
            l = SwiftrayError(.localRayletDied, "this process's node (at \(store)) is gone: \(e.message). It stops when "
              + "it cannot reach the head for gcs_rpc_server_reconnect_timeout_s, when the head declared it dead "
              + "(fenced), or when it was stopped or killed; its log is daemon.log in its session directory. "
              + "Start a node on this machine and call init() again")
          }
        }
      }
      // Only the first answer counts (a registration is answered once; a connection
      // lost later only ends the subscription).
      let isFirst = answer.withLock { a -> Bool in
        guard a == nil else { return false }
        a = first
        return true
      }
      if isFirst { answered.signal() }
    }
    guard answered.wait(timeout: .now() + .seconds(30)) == .success else {
      throw SwiftrayError(.localRayletDied, "the node at \(store) did not answer this process's registration within 30 s")
    }
    try answer.withLock { $0! }.get()
  }

  /// This worker, for the callbacks of what it owns (its servers, its registration).
  /// Weak, so a worker dropped after `shutdown` is freed at once. (A weak reference
  /// gives the CoreWorker a side table, so its retains take the runtime's slow path; a
  /// strong one cleared at shutdown kept a descriptor per init/shutdown cycle in the
  /// full suite, so it waits for its holder to be found.)
  final class CoreBox: @unchecked Sendable {
    // Written once during init before the server can deliver a frame.
    weak var core: CoreWorker?
  }

  @Sendable static func exitStoreGone(_ e: SwiftrayError) {
    writeStderr("swiftray worker \(getpid()) exiting: \(e.message)\n")
    _exit(1)
  }

  public static func writeStderr(_ s: String) {
    var s = s
    s.withUTF8 { buf in _ = write(2, buf.baseAddress, buf.count) }
  }

  /// Time as this process sees it (`Options.clock`).
  var clock: any RuntimeClock { options.clock }
  func now() -> UInt64 { options.clock.now() }

  public static func errorObject(_ code: SwiftrayError.Code, _ message: String) -> Swiftray_RayObject {
    Owner.errorObject(code, message)
  }

  /// Feeds one event to the owner's state under the lock, then carries out its effects.
  @discardableResult
  func owner<T>(_ event: (inout Owner) -> (T, Owner.Effects)) -> T {
    let (result, effects, round) = state.withLock { s in
      let (result, effects) = event(&s)
      return (result, effects, Self.takeActorRound(effects, &s))
    }
    perform(effects, actorRound: round)
    return result
  }

  func owner(_ event: (inout Owner) -> Owner.Effects) {
    let (effects, round) = state.withLock { s in
      let effects = event(&s)
      return (effects, Self.takeActorRound(effects, &s))
    }
    perform(effects, actorRound: round)
  }

  /// The actor steps an event queued, taken in the event's own lock: with calls
  /// streaming, the submitting thread and the thread taking replies met on the owner
  /// lock once more per call when the steps were taken in a lock of their own.
  static func takeActorRound(_ effects: Owner.Effects, _ s: inout Owner) -> ActorRound? {
    effects.actorSteps ? s.takeActorStepsWithSpecs() : nil
  }

  // MARK: - owner API

  /// What every call of one function under one set of options shares: the spec's
  /// function, name, resources, retries and strategy, built once. Each task's spec
  /// starts as a copy, sharing these fields' buffers (a task in flight then holds only
  /// what is its own: ids and arguments).
  public struct TaskTemplate: Sendable {
    let spec: Swiftray_TaskSpec
    let resources: ResourceSet
    let strategy: SchedulingKey.Strategy

    public init(function: Swiftray_FunctionDescriptor, name: String, numReturns: Int, resources: ResourceSet,
                maxRetries: Int, retryExceptions: Bool, retryExceptionFilter: Data, strategy: SchedulingKey.Strategy = .default,
                runtimeEnv: String = "") {
      var spec = Swiftray_TaskSpec()
      spec.runtimeEnv = runtimeEnv
      spec.function = function
      spec.name = name
      CoreWorker.setReturns(&spec, numReturns)
      spec.maxRetries = Int32(clamping: maxRetries)
      spec.retryExceptions = retryExceptions
      spec.retryExceptionFilter = retryExceptionFilter
      Self.place(&spec, resources, strategy)
      self.spec = spec
      self.resources = resources
      self.strategy = strategy
    }

    static func place(_ spec: inout Swiftray_TaskSpec, _ resources: ResourceSet, _ strategy: SchedulingKey.Strategy) {
      spec.strategy = SchedulingKey(resources, strategy: strategy).strategyProto
      spec.resources = SchedulingKey.shape(resources, under: strategy).proto
    }
  }

  /// Submits a normal task. Returns its return object IDs, each already holding one
  /// local reference (the caller's `ObjectRef`). Never blocks.
  public func submitTask(function: Swiftray_FunctionDescriptor, name: String, args: [TaskArgument], numReturns: Int,
                         resources: ResourceSet, maxRetries: Int, retryExceptions: Bool,
                         retryExceptionFilter: Data, strategy: SchedulingKey.Strategy = .default) -> [ObjectID] {
    submitTask(TaskTemplate(function: function, name: name, numReturns: numReturns, resources: resources,
                            maxRetries: maxRetries, retryExceptions: retryExceptions,
                            retryExceptionFilter: retryExceptionFilter, strategy: strategy), args: args)
  }

  /// Submits a normal task from its function's template. Never blocks.
  public func submitTask(_ template: TaskTemplate, args: [TaskArgument]) -> [ObjectID] {
    var spec = template.spec
    // A task inside a capturing placement group lands in its bundles instead.
    let strategy = strategyOrCaptured(template.strategy)
    if strategy != template.strategy { TaskTemplate.place(&spec, template.resources, strategy) }
    // A normal task cannot be refused.
    return (try? submit(spec, args: args, kind: .normal).returns) ?? []
  }

  /// `strategy`, or for a task that names none, the placement group of the task or actor
  /// running here when it captures its children (`placement_group_capture_child_tasks`):
  /// any bundle of that group.
  func strategyOrCaptured(_ strategy: SchedulingKey.Strategy) -> SchedulingKey.Strategy {
    // A driver runs no task: no lock on its per-task path.
    guard strategy == .default, !options.isDriver, let current = executor.runningStrategy,
          case .placementGroup(let g, _, true) = current else { return strategy }
    return .placementGroup(g, index: -1, captureChildTasks: true)
  }

  /// The placement strategy of the task (or actor) this worker runs now.
  public var currentStrategy: SchedulingKey.Strategy? { executor.runningStrategy }

  /// The task running here, the parent of what it submits (a driver runs none).
  var runningTask: TaskID? { options.isDriver ? nil : executor.running }

  /// The common path of every submission (`OwnerState.taskSubmitted`).
  func submit(_ spec: Swiftray_TaskSpec, args: [TaskArgument], kind: Owner.TaskKind) throws(SwiftrayError) -> (task: TaskID, returns: [ObjectID]) {
    let parent = runningTask
    let now = self.now()
    let (admitted, round) = state.withLock { s -> (Result<(task: TaskID, returns: [ObjectID], effects: Owner.Effects), SwiftrayError>, ActorRound?) in
      let admitted = s.taskSubmitted(spec, args: args, kind: kind, parent: parent, now: now)
      guard case .success(let ok) = admitted else { return (admitted, nil) }
      return (admitted, Self.takeActorRound(ok.effects, &s))
    }
    let (tid, returns, effects) = try admitted.get()
    perform(effects, actorRound: round)
    return (tid, returns)
  }

  /// A `get`/`wait` registered once with the owner state, then waited on in slices.
  /// Registering costs O(len(ids)) once; each arrival then costs O(1) (a count-down),
  /// so a wait over N refs is O(N) in total however long it lasts.
  public struct PendingWait: Sendable {
    let ids: [ObjectID]
    let needed: Int
    let waiter: ObjectWaiter?
    /// Enough were available at registration: nothing was registered.
    public var isReady: Bool { waiter == nil }
  }

  /// Registers a wait for `needed` of `ids` (duplicates counted once). Never blocks.
  /// End every wait that is not ready with `endWait`.
  public func startWait(_ ids: [ObjectID], needed: Int) -> PendingWait {
    let unique = ids.count == 1 ? ids : Array(Set(ids))
    let waiter = owner { $0.waitStarted(unique, needed: needed, makeWaiter: { ObjectWaiter(needed: $0) }) }
    return PendingWait(ids: unique, needed: needed, waiter: waiter)
  }

  /// Blocks up to `nanos` for a registered wait; true when it was released.
  /// Threading: the caller's thread, with the GIL released.
  public func wait(_ pending: PendingWait, nanos: UInt64) -> Bool {
    guard let w = pending.waiter else { return true }
    // The reply of a task this thread just pushed by lane: read it here (no hand-off).
    let start = DispatchTime.now().uptimeNanoseconds
    if lanes.readWhileWaiting(nanos: nanos, wake: w.wake, until: { w.isReleased }) { return true }
    let spent = DispatchTime.now().uptimeNanoseconds &- start
    let left = nanos > spent ? nanos - spent : 0
    // A worker's task thread blocked in a task keeps answering its lanes (pushes
    // are handed back: `TaskExecutor.runningTaskBlocked`).
    if executor.lanes != nil, executor.onTaskThread, currentTaskID != nil {
      return executor.serveLanesWhileBlocked(w, nanos: left)
    }
    return w.wait(nanos: left)
  }

  /// Ends a wait: unregisters it from the ids that have not arrived. True when enough
  /// are available (an arrival may have raced a timeout).
  public func endWait(_ pending: PendingWait) -> Bool {
    guard let waiter = pending.waiter else { return true }
    // Released waiting for all of them: every id arrived, and each arrival already
    // dropped its waiters, so there is nothing left to unregister.
    if waiter.isReleased && pending.needed >= pending.ids.count { return true }
    let enough = state.withLock { $0.waitEnded(pending.ids, needed: pending.needed, waiter: waiter) }
    return enough || waiter.isReleased
  }

  /// Waits until at least `needed` of `ids` are available or `timeoutNanos` passes.
  /// Returns true when enough are. Blocks the caller; call with the GIL released.
  public func waitFor(_ ids: [ObjectID], needed: Int, timeoutNanos: UInt64) -> Bool {
    let pending = startWait(ids, needed: needed)
    if pending.isReady { return true }
    _ = wait(pending, nanos: timeoutNanos)
    return endWait(pending)
  }

  public typealias Stats = OwnerStats

  /// Sizes of this process's ownership tables, for leak checks and `memory` views.
  public func stats() -> Stats { state.withLock { $0.stats } }

  /// Positions of the first `limit` available ids, in input order.
  public func firstAvailable(_ ids: [ObjectID], limit: Int) -> [Int] {
    state.withLock { $0.firstAvailable(ids, limit: limit) }
  }

  /// The stored objects (values or error objects); nil for one not available.
  public func objects(_ ids: [ObjectID]) -> [Swiftray_RayObject?] {
    state.withLock { s in ids.map { s.store[$0] } }
  }

  /// Tells the NodeManager this worker is blocked in `get` (lend its CPUs) or not.
  public func setBlocked(_ blocked: Bool) {
    guard !options.isDriver else { return }
    executor.runningTaskBlocked(blocked)
    let nm = nodeManager
    let wid = options.workerID
    notifications.yield {
      var req = Swiftray_WorkerBlockedRequest()
      req.workerID = Data(wid.binary)
      req.blocked = blocked
      _ = try? await nm.nodeManagerService.workerBlocked(req)
    }
  }

  public func addLocalRef(_ id: ObjectID, owner: Swiftray_Address?) {
    self.owner { $0.localRefAdded(id, owner: owner, now: self.now()) }
  }

  /// A ref owned by another process was made here (`OwnerState.borrowedRefAdded`).
  public func addBorrowedRef(_ id: ObjectID, owner: () -> Swiftray_Address) {
    self.owner { $0.borrowedRefAdded(id, owner: owner, now: self.now()) }
  }

  public func removeLocalRef(_ id: ObjectID) {
    owner { $0.localRefRemoved(id, now: self.now()) }
  }

  /// The ref was serialized into a value that may reach a borrower.
  public func refEscaped(_ id: ObjectID) {
    state.withLock { $0.refEscaped(id) }
  }

  /// The owner's address for a ref this process knows (itself when it owns it).
  public func ownerAddress(_ id: ObjectID) -> Swiftray_Address {
    state.withLock { $0.ownerAddress(id) }
  }

  /// Cancels the task that creates `id`. Returns false when it already finished.
  @discardableResult
  public func cancel(_ id: ObjectID, force: Bool) -> Bool {
    let tid = id.task
    let now = self.now()
    let step = owner { $0.cancelRequested(tid, now: now) }
    switch step {
    case .finished, .pending: return false
    case .done: return true
    case .remote(let addr, let worker, let killable):
      if force && killable {
        let nm = nodeManager
        Task {
          var req = Swiftray_KillWorkerRequest()
          req.workerID = Data(worker.binary)
          req.reason = "killed by cancel(force=True)"
          _ = try? await nm.nodeManagerService.killWorker(req)
        }
      } else if let ep = reach(addr) {
        var req = Swiftray_CancelTaskRequest()
        req.taskID = Data(tid.binary)
        // By the data plane for a running task (its worker's task thread is busy and
        // reads no lane), and by lane too when the task went by lane: there the cancel
        // comes after the push, so a push not read yet is still cancelled.
        _ = lanes.request(ep, .cancelTask(req), .frame({ _ in }))
        pool.request(ep, .cancelTask(req)) { _ in }
      }
      return true
    }
  }

  // MARK: - executor API

  public func setInterruptHandler(_ h: @escaping @Sendable () -> Void) {
    executor.interruptRunningTask.withLock { $0 = h }
  }

  /// The next task pushed to this worker, or nil after `timeoutNanos`. Blocks.
  public func nextExecution(timeoutNanos: UInt64) -> Execution? {
    guard let e = executor.next(timeoutNanos: timeoutNanos) else { return nil }
    // A worker serves one job at a time: what the task submits belongs to its job.
    if let job = JobID(binary: e.spec.jobID) { state.withLock { $0.job = job } }
    return e
  }

  /// The next task already queued here, without reading the lanes or waiting; nil
  /// when none is. For the task thread that hands a threaded actor's calls to its pool:
  /// it hands over all that one read of its lanes brought under one hold of the GIL.
  /// Threading: the task thread.
  public func queuedExecution() -> Execution? {
    guard let e = executor.popQueued() else { return nil }
    if let job = JobID(binary: e.spec.jobID) { state.withLock { $0.job = job } }
    return e
  }

  /// Up to `max` tasks pushed to this worker, without waiting (`TaskExecutor.take`).
  /// Threading: the task thread, between waits on `executionsFD`.
  public func takeExecutions(max: Int) -> [Execution] {
    let taken = executor.take(max: max)
    if let job = taken.last.flatMap({ JobID(binary: $0.spec.jobID) }) { state.withLock { $0.job = job } }
    return taken
  }

  /// Looks at `fd` without sleeping for a moment (`TaskExecutor.spinUntilReadable`):
  /// for an async actor's event loop about to sleep. Threading: the task thread.
  public func spinUntilReadable(_ fd: Int32, nanos: UInt64) -> Bool {
    executor.spinUntilReadable(fd, nanos: nanos)
  }

  /// Readable when `takeExecutions` may find a task (level-triggered).
  public var executionsFD: Int32 { executor.readinessFD }

  public var currentTaskID: TaskID? { executor.running }

  /// Called by the interrupt handler on the thread that runs tasks: true (once per
  /// interrupt sent) when a cancel aimed at the task running now asked for it; false for
  /// an interrupt that arrived after its task ended.
  public func takeInterrupt() -> Bool { executor.takeInterrupt() }

  /// The job of the task running here (a worker serves one job at a time), else ours.
  public var currentJobID: JobID { state.withLock { $0.job } }

  /// Sends the result of an execution back to the task's owner.
  /// Blocks while this worker's own borrower registrations are unacknowledged
  /// (bounded): call with the GIL released. The language layer has registered the
  /// owner for refs inside the returns already (`registerReceiver`), while the values
  /// still held them.
  /// `moreQueued`: set by a thread other than the task thread (a threaded actor's) that
  /// runs another call right after this one: its reply may wait for that one's
  /// (`ReplyHold`). Nil: the task thread decides from its own queue.
  public func finish(_ e: Execution, reply: Swiftray_PushTaskReply, moreQueued: Bool? = nil) {
    var reply = reply
    reply.startedWallNs = e.startedWallNs
    reply.endedWallNs = Self.wallNanos()

    executor.finished(e.spec, reply)
    if reply.returns.contains(where: { !$0.object.nestedRefs.isEmpty }) {
      state.withLock { s in
        for i in reply.returns.indices where !reply.returns[i].object.nestedRefs.isEmpty {
          reply.returns[i].object.nestedRefs = s.nestedReferences(reply.returns[i].object.nestedRefs)
        }
      }
    }
    LockDiscipline.mayBlock("a task's reply waiting for its borrower registrations")
    _ = registering.wait(timeout: .now() + .seconds(10))
    if e.spec.streaming, let tid = TaskID(binary: e.spec.taskID) {
      // Every report answered, or one failed: then the owner lacks items, and the
      // stream ends with the reason rather than short.
      let (items, failure) = generatorFinished(tid)
      reply.streamedItems = UInt64(items)
      if let failure, !reply.isApplicationError, !reply.wasCancelled {
        reply.isApplicationError = true
        reply.returns = [.with {
          $0.objectID = Data(ObjectID.forReturn(of: tid, index: 0).binary)
          $0.object = Self.errorObject(.system, "streaming generator \(e.spec.name) lost an item on its way to its owner: \(failure)")
        }]
      }
    }
    executor.reply(e.responder, .pushTaskReply(reply), moreQueued: moreQueued)
  }

  /// Sends the replies held for later (`ReplyHold`) now: before this process ends on
  /// purpose (`exit_actor`), so the calls that finished before it still answer.
  public func releaseHeldReplies() { executor.replies.releaseAll() }

  /// First step of shutdown: from now on worker deaths are expected, not failures.
  public func prepareShutdown() {
    if state.withLock({ $0.shutdownStarted() }) { markJobFinished() }
  }

  /// Closes servers and connections. Worker output already on its way is printed
  /// first (bounded), so a driver that exits right after `get` loses no lines.
  public func shutdown() {
    executor.replies.stop()
    prepareShutdown()
    returnLeasesAtExit()
    stopTaskEventReporter()
    flushTaskEvents(timeout: .seconds(1))
    if let t = logForwarding.withLock({ $0 }) {
      _ = try? blockingAwait(timeout: .seconds(1)) { await t.value }
      t.cancel()
    }
    server.close()
    tcpServer?.close()
    executor.lanes?.close()
    lanes.closeAll()
    pool.closeAll()
    notifications.finish()
    nodeManager.shutdown()
    control.shutdown()
    otherNodes.shutdown()
  }

  // MARK: - data-plane requests

  func handle(_ frame: Swiftray_DataFrame, _ responder: DataPlaneResponder) {
    switch frame.body {
    case .pushTask(let req):
      executor.admit(req, responder)
    case .getObject(let req):
      guard let id = ObjectID(binary: req.objectID) else { return }
      let requester = WorkerID(binary: req.requesterID).map { (id: $0, node: req.requesterNode) }
      switch state.withLock({ $0.remoteGet(id, from: PendingGet(responder: responder, requester: requester)) }) {
      case .ready(let o): replyObject(o, to: responder, requester: requester)
      case .queued: break  // answered when it arrives
      case .crowded:
        responder.respond(.error(.with {
          $0.message = "object \(id.hex) already has \(Owner.maxRemoteGetsPerObject) requests waiting at its owner; ask again later"
        }))
      case .notFound:
        var reply = Swiftray_GetObjectReply()
        reply.status = .notFound
        responder.respond(.getObjectReply(reply))
      }
    case .addBorrower(let req):
      // A count below 1 would corrupt the reference counts: nothing to add.
      if let id = ObjectID(binary: req.objectID), let b = WorkerID(binary: req.borrowerID), req.count > 0 {
        guard state.withLock({ $0.borrowerAdded(id, b, node: req.borrowerNode, count: Int(req.count)) }) else {
          return responder.respond(.error(.with {
            $0.message = "object \(id.hex) already has \(ReferenceTable.maxBorrowersPerObject) borrowers at its owner"
          }))
        }
      }
      responder.respond(.ack(.init()))
    case .removeBorrower(let req):
      if let id = ObjectID(binary: req.objectID), let b = WorkerID(binary: req.borrowerID), req.count > 0 {
        let now = self.now()
        owner { $0.borrowerRemoved(id, b, count: Int(req.count), now: now) }
      }
      responder.respond(.ack(.init()))
    case .cancelTask(let req):
      guard let tid = TaskID(binary: req.taskID) else { return }
      var r = Swiftray_CancelTaskReply()
      r.attempted = executor.cancel(tid)
      responder.respond(.cancelTaskReply(r))
    case .reportGeneratorItem, .waitGeneratorConsumed:
      handleGeneratorFrame(frame, responder)
    case .listObjects(let req):
      // A snapshot under the lock (the tables are shared until the next change), rows
      // built off the event loop.
      let (refs, values) = state.withLock { ($0.refs.refs, $0.store) }
      Task {
        let (rows, total) = ObjectListing.rows(refs: refs, values: values, limit: Int(req.limit))
        responder.respond(.listObjectsReply(.with { $0.rows = rows; $0.total = Int64(total) }))
      }
    default:
      break
    }
  }

  // MARK: - carrying out effects (callers hold no lock)

  /// Carries out what an owner event decided, in order: fetches, lease work, frees,
  /// borrower changes, wake-ups and answers, warnings, actor steps, the tick timer.
  /// `actorRound`: the actor steps `e` queued, already taken in the lock `e` came from.
  func perform(_ e: Owner.Effects, actorRound: ActorRound? = nil) {
    if e.isEmpty { return }
    for id in e.fetches { fetch(id) }
    for step in e.leases { perform(step) }
    deleteStored(e.freeStored)
    e.actorsOutOfScope.forEach(actorOutOfScope)
    for c in e.borrowerChanges {
      var body: Swiftray_DataFrame.OneOf_Body
      if c.added {
        body = .addBorrower(.with {
          $0.objectID = Data(c.object.binary); $0.borrowerID = Data(c.borrower.binary); $0.count = c.count
          $0.borrowerNode = address.nodeID  // every change is this process's own
        })
        registering.enter()
        sendBorrowerChange(body, to: c.owner) { [registering] in registering.leave() }
      } else {
        body = .removeBorrower(.with { $0.objectID = Data(c.object.binary); $0.borrowerID = Data(c.borrower.binary); $0.count = c.count })
        sendBorrowerChange(body, to: c.owner)
      }
    }
    e.wake.forEach { $0.arrived() }
    for (get, o) in e.replies { replyObject(o, to: get.responder, requester: get.requester) }
    e.warnings.forEach(warn)
    if let p = e.promote { promote(p.ids, why: p.why) }
    if let at = e.armTick { armTick(at) }
    if e.actorSteps { performActorSteps(first: actorRound) }
    if !e.generatorProgress.isEmpty || !e.expirePolls.isEmpty { performGeneratorEffects(e) }
  }

  /// Asks a borrowed object's owner for its value.
  func fetch(_ id: ObjectID) {
    guard let owner = state.withLock({ $0.owners[id] }), let ep = reach(owner) else { return }
    var req = Swiftray_GetObjectRequest()
    req.objectID = Data(id.binary)
    req.requesterID = Data(options.workerID.binary)
    req.requesterNode = address.nodeID
    pool.request(ep, .getObject(req)) { [self] result in
      let obj: Swiftray_RayObject
      switch result {
      case .success(let f):
        if case .getObjectReply(let r)? = f.body, r.status == .ready {
          obj = r.object
        } else {
          obj = Self.errorObject(.objectFreed, "Object \(id.hex) was freed by its owner (\(owner.endpoint)) before it could be read.")
        }
      case .failure(let e):
        obj = Self.errorObject(.ownerDied,
          "The owner of object \(id.hex) (worker \(WorkerID(binary: owner.workerID)?.hex.prefix(12) ?? "?"), pid \(owner.pid)) died or is unreachable: \(e.message).")
      }
      let now = self.now()
      self.owner { $0.fetchEnded(id, obj, now: now) }
    }
  }

  /// Stores values (or error objects) and wakes whoever waited for them: local `get`s,
  /// tasks whose arguments they were, borrowers that asked.
  func objectsArrived(_ objs: [(ObjectID, Swiftray_RayObject)]) {
    let now = self.now()
    owner { $0.objectsArrived(objs, now: now) }
  }

  /// Answers a borrower's GetObject, registering it first for refs inside the value.
  func replyObject(_ o: Swiftray_RayObject, to responder: DataPlaneResponder, requester: (id: WorkerID, node: Data)?) {
    var reply = Swiftray_GetObjectReply()
    reply.status = .ready
    reply.object = o
    guard let requester else { return responder.respond(.getObjectReply(reply)) }
    let ready = reply
    registerReceiver(requester.id, node: requester.node, of: o.nestedRefs) { responder.respond(.getObjectReply(ready)) }
  }

  /// Before refs inside a value leave this process for `receiver`, register the
  /// receiver (on `node`) as their borrower: locally for refs owned here, else at their
  /// owners; `then` runs once every owner has acknowledged. Never blocks (event-loop safe).
  func registerReceiver(_ receiver: WorkerID, node: Data, of refs: [Swiftray_ObjectReference],
                        then: @escaping @Sendable () -> Void) {
    let remote = refs.isEmpty ? [] : state.withLock { $0.receiverRegistered(receiver, node: node, of: refs) }
    if remote.isEmpty { return then() }
    let left = Locked(remote.count)
    for (owner, id) in remote {
      sendBorrowerChange(.addBorrower(.with {
        $0.objectID = Data(id.binary); $0.borrowerID = Data(receiver.binary); $0.count = 1; $0.borrowerNode = node
      }), to: owner) { if left.withLock({ $0 -= 1; return $0 == 0 }) { then() } }
    }
  }

  /// The blocking form, bounded: call off the event loops (the executor's reply path).
  public func registerReceiver(_ receiver: WorkerID, node: Data, of refs: [Swiftray_ObjectReference]) {
    guard !refs.isEmpty else { return }
    LockDiscipline.mayBlock("registering borrowers")
    let done = DispatchSemaphore(value: 0)
    registerReceiver(receiver, node: node, of: refs) { done.signal() }
    _ = done.wait(timeout: .now() + .seconds(10))
  }

  /// Sends a borrower registration or removal to an owner; `acked` runs on its reply
  /// (or failure: an owner that is gone counts nothing).
  func sendBorrowerChange(_ body: Swiftray_DataFrame.OneOf_Body, to owner: Swiftray_Address,
                          acked: @escaping @Sendable () -> Void = {}) {
    guard let ep = reach(owner) else { return acked() }
    pool.request(ep, body) { _ in acked() }
  }

  /// How this process reaches another: its Unix socket when both live on one node,
  /// else the address every node can reach.
  func reach(_ a: Swiftray_Address) -> Endpoint? {
    if !a.localEndpoint.isEmpty, a.nodeID == address.nodeID { return Endpoint(a.localEndpoint) }
    return Endpoint(a.endpoint)
  }

  /// Runs the owner's `tick` at `deadline` (idle leases, retries): the owner keeps one
  /// timer armed for its next deadline (`Effects.armTick`).
  func armTick(_ deadline: UInt64) {
    clock.schedule(after: .nanoseconds(clock.nanos(until: deadline) + 1000)) { [self] in
      let now = self.now()
      owner { $0.tick(now: now) }
    }
  }
}
