import DequeModule
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOPosix
import RuntimeProto
import Synchronization

/// The CoreWorker of one process (driver or worker): the owner side (submit, put, get,
/// wait, reference counts, retries) and the executor side (tasks pushed to it).
/// A shell: `TaskManager`, `DependencyResolver`, `ReferenceTable` and
/// `NormalTaskSubmitter` decide; this class stores values, sends RPCs and wakes waiters.
///
/// Threading: public methods may be called from any thread (Python threads with the
/// GIL released, NIO event loops, gRPC tasks). All state is behind `state`; actions
/// run outside the lock. Nothing here blocks an event loop.
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
    public init(isDriver: Bool, workerID: WorkerID, nodeID: NodeID, nodeManager: Endpoint, control: Endpoint,
                sessionDir: String, config: Config, nodeIP: String? = nil, auth: ClusterAuth, leaseGrants: LeaseGrants? = nil) {
      self.isDriver = isDriver; self.workerID = workerID; self.nodeID = nodeID; self.nodeManager = nodeManager
      self.control = control; self.sessionDir = sessionDir; self.config = config; self.nodeIP = nodeIP
      self.auth = auth; self.leaseGrants = leaseGrants
    }
  }

  /// A task pushed to this worker, waiting for or in execution by the language layer.
  public struct Execution: Sendable {
    public let spec: Swiftray_TaskSpec
    /// The GPUs of the lease it runs under (an actor's: those of its creation).
    public let gpuIDs: [Int32]
    let responder: DataPlaneResponder
  }

  struct State {
    var refs = ReferenceTable()
    var tasks = TaskManager()
    var resolver = DependencyResolver()
    var submitter: NormalTaskSubmitter
    var actorSubmitter = ActorTaskSubmitter()
    /// Actor work decided under the lock, carried out by `perform`.
    var actorOutbox: [ActorStep] = []
    var actorDraining = false
    /// Actors this process created: their handle objects, and the constructor's
    /// argument refs (held while the actor may restart).
    var ownedActors: [ObjectID: (actor: ActorID, detached: Bool, args: [ObjectID])] = [:]
    /// Named creations registered by their creator's thread (a taken name raises there).
    var syncCreations: Set<TaskID> = []
    var syncReady: Set<TaskID> = []
    /// Actors created here whose registration with the head is in flight (background).
    var actorRegistrations: [ActorID: AsyncLatch] = [:]
    var store: [ObjectID: Swiftray_RayObject] = [:]
    var owners: [ObjectID: Swiftray_Address] = [:]
    /// Refs contained in values held here (owned objects, cached borrowed values).
    var nestedOf: [ObjectID: [ObjectID]] = [:]
    var fetching: Set<ObjectID> = []
    var waiters: [ObjectID: [ObjectWaiter]] = [:]
    /// Borrowers asking for values we own that do not exist yet.
    var remoteGets: [ObjectID: [(DataPlaneResponder, WorkerID?)]] = [:]
    var leaseWorkers: [UInt64: Swiftray_Address] = [:]
    /// NodeManager addresses of the cluster's nodes by node id (for freeing objects
    /// elsewhere), refreshed from the ControlService when a node is missing.
    var nodeManagers: [Data: String] = [:]
    /// The node's grant of each held lease, shown with every push under it.
    var leaseGrants: [UInt64: Data] = [:]
    /// A worker's: which pushes it runs (set at init from `Options.leaseGrants`).
    var leaseGate = LeaseGate(grants: nil, worker: Data())
    /// Refused pushes are logged, but not one line each.
    var refusalLog = LogThrottle()
    /// The GPUs each granted lease holds, sent with every task pushed under it.
    var leaseGPUs: [UInt64: [Int32]] = [:]
    /// Leases granted by other nodes (after a spillback), by the NodeManager to return them to.
    var leaseNodes: [UInt64: String] = [:]

    /// Drops what is kept of a lease given back; its node's NodeManager address when it
    /// is another node's (nil: this node's).
    mutating func forgetLease(_ leaseID: UInt64) -> String? {
      leaseWorkers[leaseID] = nil
      leaseGrants[leaseID] = nil
      leaseGPUs[leaseID] = nil
      return leaseNodes.removeValue(forKey: leaseID)
    }
    /// Nodes the cluster declared dead: why, by node id and by NodeManager address.
    var deadNodes: [Data: String] = [:]
    var deadNodeManagers: [String: String] = [:]
    var idGen: TaskIDGenerator
    var selfAddress: Swiftray_Address
    var putTask: TaskID
    var putCounter: UInt32 = 0
    var tickAt: UInt64?
    // Executor side.
    var executions: Deque<Execution> = []
    var running: TaskID?
    /// The running task a cancel interrupts: the language layer's interrupt handler
    /// acts only while this is still the task running (`takeInterrupt`).
    var interruptTarget: TaskID?
    /// The placement strategy of the task or actor running here (placement groups only).
    var runningStrategy: SchedulingKey.Strategy?
    /// Placement groups created here whose registration with the head is in flight:
    /// what concerns them waits for it.
    var groupRegistrations: [PlacementGroupID: (op: UInt64, done: AsyncLatch)] = [:]
    /// Owned stored objects whose primary is on another node and of which this node's
    /// store pulled a copy: if that node dies, the copy is promoted instead of rebuilding.
    var localCopies: Set<ObjectID> = []
    var nextGroupOp: UInt64 = 0
    var shutdown = false
  }

  public let options: Options
  public let group: MultiThreadedEventLoopGroup
  public let address: Swiftray_Address
  public let jobID: JobID
  let state: Locked<State>
  let executionReady = DispatchSemaphore(value: 0)
  let pool: DataPlaneClientPool
  let server: DataPlaneServer
  let tcpServer: DataPlaneServer?
  let nodeManager: ControlPlane.Connection
  let control: ControlPlane.Connection
  /// This node's shared-memory object store.
  public let objectStore: StoreClient
  let notifications: AsyncStream<@Sendable () async -> Void>.Continuation
  let log = Logger(label: "swiftray.core")
  /// Set by the language layer: interrupts the task running on the main thread.
  let interruptRunningTask = Locked<(@Sendable () -> Void)?>(nil)
  /// The log subscription, cancelled at shutdown so the NodeManager client can close.
  let logForwarding = Locked<Task<Void, Never>?>(nil)
  /// The node-death subscription (networked nodes), cancelled at shutdown.
  let deathWatch = Locked<Task<Void, Never>?>(nil)
  /// Borrower registrations sent and not yet acknowledged: a task's reply waits for
  /// them, so its submitter cannot drop a ref before the owner counts this process.
  let registering = DispatchGroup()
  /// NodeManagers of other nodes this process leased from, by endpoint.
  let otherNodes: ControlClients
  /// Where user-facing warnings go (stderr of this process by default).
  let warn: @Sendable (String) -> Void

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
      infeasibleRetryNanos: UInt64(options.config.infeasibleRetryMs) * 1_000_000)
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
          return try await Swiftray_ControlService.Client(wrapping: control.client).registerJob(req)
        }
      } catch { throw ControlPlane.error(error, calling: "RegisterJob", at: options.control) }
      job = JobID(binary: reply.jobID) ?? JobID(0)
    } else {
      job = JobID(0)
    }
    self.jobID = job
    var gen = TaskIDGenerator(job: job)
    let putTask = gen.next()
    pool = DataPlaneClientPool(group: group, auth: options.auth)
    // A worker whose node's store is gone dies at once, whatever it was doing (reading
    // arguments, storing returns, a put): its owner then retries the task elsewhere
    // instead of seeing it fail with this node's death.
    objectStore = try StoreClient(endpoint: ObjectStore.endpoint(sessionDir: options.sessionDir), pool: pool,
                                  onUnreachable: options.isDriver ? nil : Self.exitStoreGone)
    let sockDir = SessionPaths.socketDir(options.sessionDir)
    let endpoint = Endpoint.unix("\(sockDir)/\(options.isDriver ? "d" : "w")-\(options.workerID.hex.prefix(16)).sock")
    if case .unix(let path) = endpoint, path.utf8.count > 103 {
      throw SwiftrayError(.invalidArgument, "The session directory \(options.sessionDir) is too long for Unix socket "
        + "paths (\(path.utf8.count) bytes; the limit is 103): use a shorter temp dir.")
    }
    // `server` needs `self` in its handler; a box breaks the init-order knot.
    let box = WeakBox()
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
    state = Locked(State(submitter: NormalTaskSubmitter(settings: settings, firstRequestID: randomWord() >> 16),
                        idGen: gen, selfAddress: addr, putTask: putTask))
    state.withLock { $0.leaseGate = LeaseGate(grants: options.leaseGrants, worker: Data(options.workerID.binary)) }
    // One sender keeps NodeManager notifications (blocked/unblocked) in order.
    let (stream, cont) = AsyncStream<@Sendable () async -> Void>.makeStream(bufferingPolicy: .unbounded)
    notifications = cont
    Task { for await job in stream { await job() } }
    box.core = self
    let nm = nodeManager
    let workerID = options.workerID
    let isDriver = options.isDriver
    let endpointText = addr.endpoint
    let localText = addr.localEndpoint
    do {
    _ = try blockingAwait(timeout: .seconds(30)) {
      var req = Swiftray_RegisterWorkerRequest()
      req.workerID = Data(workerID.binary)
      req.pid = getpid()
      req.endpoint = endpointText
      req.localEndpoint = localText
      req.isDriver = isDriver
      return try await Swiftray_NodeManagerService.Client(wrapping: nm.client).registerWorker(req)
    }
    } catch { throw ControlPlane.error(error, calling: "RegisterWorker", at: options.nodeManager) }
    if options.nodeIP != nil { watchNodeDeaths() }
  }

  /// Listens to this node's NodeManager for nodes the cluster declares dead: leases
  /// there are lost at once (their tasks retried), and errors about them say why.
  func watchNodeDeaths() {
    let nm = nodeManager
    let box = WeakBox()
    box.core = self
    let task = Task {
      do {
        try await Swiftray_NodeManagerService.Client(wrapping: nm.client).subscribeNodeDeaths(Swiftray_SubscribeNodeDeathsRequest()) { response in
          for try await d in response.messages { box.core?.nodeDied(d) }
        }
      } catch {}
    }
    deathWatch.withLock { $0 = task }
  }

  final class WeakBox: @unchecked Sendable {
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

  static func now() -> UInt64 { Clocks.current.now() }

  // MARK: - owner API

  public struct TaskArgument: Sendable {
    /// A `value`'s `nestedRefs` may list refs by id only: the core fills in owners.
    public enum Kind: Sendable { case value(Swiftray_RayObject), ref(ObjectID, owner: Swiftray_Address?) }
    public var kind: Kind
    public init(_ kind: Kind) { self.kind = kind }
  }

  /// Submits a normal task. Returns its return object IDs, each already holding one
  /// local reference (the caller's `ObjectRef`). Never blocks.
  public func submitTask(function: Swiftray_FunctionDescriptor, name: String, args: [TaskArgument], numReturns: Int,
                         resources: ResourceSet, maxRetries: Int, retryExceptions: Bool,
                         retryExceptionFilter: Data, strategy: SchedulingKey.Strategy = .default) -> [ObjectID] {
    var spec = Swiftray_TaskSpec()
    let strategy = strategyOrCaptured(strategy)
    spec.strategy = SchedulingKey(resources, strategy: strategy).strategyProto
    spec.function = function
    spec.name = name
    spec.numReturns = Int32(numReturns)
    spec.resources = SchedulingKey.shape(resources, under: strategy).proto
    spec.maxRetries = Int32(maxRetries)
    spec.retryExceptions = retryExceptions
    spec.retryExceptionFilter = retryExceptionFilter
    // A normal task cannot be refused.
    return (try? submit(spec, args: args, kind: .normal).returns) ?? []
  }

  /// `strategy`, or for a task that names none, the placement group of the task or actor
  /// running here when it captures its children (`placement_group_capture_child_tasks`):
  /// any bundle of that group.
  func strategyOrCaptured(_ strategy: SchedulingKey.Strategy) -> SchedulingKey.Strategy {
    // A driver runs no task: no lock on its per-task path.
    guard strategy == .default, !options.isDriver, let current = state.withLock({ $0.runningStrategy }),
          case .placementGroup(let g, _, true) = current else { return strategy }
    return .placementGroup(g, index: -1, captureChildTasks: true)
  }

  /// The placement strategy of the task (or actor) this worker runs now.
  public var currentStrategy: SchedulingKey.Strategy? { state.withLock { $0.runningStrategy } }

  /// What a submitted task is, for where it goes once its arguments are resolved.
  enum TaskKind { case normal, actorCreation(sync: Bool), actorCall(ActorID, maxTaskRetries: Int) }

  /// The common path of every submission: fills in the spec's arguments (each ref with
  /// its owner), registers the returns with one local reference each, holds the
  /// arguments' refs for the task, records the task and starts resolving arguments.
  func submit(_ spec: Swiftray_TaskSpec, args: [TaskArgument], kind: TaskKind) throws(SwiftrayError) -> (task: TaskID, returns: [ObjectID]) {
    var spec = spec
    spec.owner = address
    var deps: [ObjectID] = []      // ref arguments: resolved before the task runs
    var nested: [ObjectID] = []    // refs inside value arguments: only held
    spec.args = args.map { a in
      var t = Swiftray_TaskArg()
      switch a.kind {
      case .value(let v):
        t.value = v
        nested += v.nestedRefs.compactMap { ObjectID(binary: $0.objectID) }
      case .ref(let id, _):
        var r = Swiftray_ObjectReference()
        r.objectID = Data(id.binary)
        t.ref = r
        deps.append(id)
      }
      return t
    }
    let numReturns = Int(spec.numReturns)
    let now = Self.now()
    var fetches: [ObjectID] = []
    typealias Admitted = Result<(TaskID, [ObjectID], [NormalTaskSubmitter.Action]), SwiftrayError>
    let result: Admitted = state.withLock { (s: inout State) -> Admitted in
      let tid = s.idGen.next()
      spec.taskID = Data(tid.binary)
      spec.jobID = Data(JobID(UInt32(truncatingIfNeeded: tid.job)).binary)
      if let parent = s.running { spec.parentTaskID = Data(parent.binary) }
      var held: [ObjectID] = []
      switch kind {
      case .normal: break
      case .actorCreation(let sync):
        spec.actorID = Data(tid.binary)
        // The handle object: the caller's handle holds its one local reference.
        s.refs.ownedObjectCreated(tid.actorHandleObject)
        _ = s.refs.localRefAdded(tid.actorHandleObject)
        if sync { s.syncCreations.insert(tid) }
      case .actorCall(let actor, let retries):
        // Refused before anything is registered: nothing to undo.
        switch s.actorSubmitter.callSubmitted(tid, actor: actor, maxTaskRetries: retries) {
        case .failure(let e): return .failure(e)
        case .success(let admitted):
          spec.actorSeq = admitted.seq
          s.actorOutbox += admitted.actions.map { ActorStep.call($0) }
        }
        // A pending call keeps its actor's handle alive, as an argument would.
        if s.refs.isInScope(actor.actorHandleObject) { held.append(actor.actorHandleObject) }
      }
      let ids = (0..<numReturns).map { ObjectID.forReturn(of: tid, index: $0) }
      for id in ids { s.refs.ownedObjectCreated(id); _ = s.refs.localRefAdded(id) }
      for a in args { if case .ref(let id, let owner?) = a.kind, s.owners[id] == nil { s.owners[id] = owner } }
      // Each ref argument names its owner: the one recorded for it here, else this process.
      for i in spec.args.indices {
        if case .ref(var r)? = spec.args[i].kind, let id = ObjectID(binary: r.objectID) {
          r.owner = s.owners[id] ?? address
          spec.args[i].ref = r
        } else if !spec.args[i].value.nestedRefs.isEmpty {
          spec.args[i].value.nestedRefs = Self.nestedReferences(&s, spec.args[i].value.nestedRefs)
        }
      }
      // The task holds its ref arguments and the refs inside its value arguments.
      s.refs.submittedTaskRefsAdded(deps + nested + held)
      s.tasks.taskSubmitted(tid, spec: spec, extraRefs: held)
      let store = s.store
      let ready = s.resolver.taskArrived(tid, dependencies: deps, isReady: { store[$0] != nil })
      if !ready { fetches = deps.filter { store[$0] == nil && Self.startFetch(&s, $0) } }
      return .success((tid, ids, ready ? Self.taskReady(&s, tid, now: now) : []))
    }
    let (tid, returnIDs, actions) = try result.get()
    for id in fetches { fetch(id) }
    perform(actions)
    return (tid, returnIDs)
  }

  /// Stores a value owned by this process. Returns its ID with one local reference.
  public func put(_ object: Swiftray_RayObject) -> ObjectID {
    put(object, id: nextPutID())
  }

  func nextPutID() -> ObjectID {
    state.withLock { s in
      s.putCounter += 1
      return ObjectID.forPut(by: s.running ?? s.putTask, index: s.putCounter)
    }
  }

  /// Puts a value of `size` bytes into the node's shared-memory store: `write` fills
  /// the object's memory in place (one copy, by this process). Returns its ID with one
  /// local reference. Blocks while the store makes room; call with the GIL released.
  public func putStored(size: Int, nested: [ObjectID] = [], write: (UnsafeMutableRawBufferPointer) -> Void) throws(SwiftrayError) -> ObjectID {
    let id = nextPutID()
    var object = try writeStored(id, size: size, ownerPid: getpid(), write: write)
    object.nestedRefs = nested.map { n in Swiftray_ObjectReference.with { $0.objectID = Data(n.binary) } }
    return put(object, id: id)
  }

  /// Writes a task's return value into the node's store for its owner; returns what
  /// the owner keeps (a descriptor, not the bytes). Blocks like `putStored`.
  public func storeReturn(_ id: ObjectID, size: Int, owner: Swiftray_Address,
                          write: (UnsafeMutableRawBufferPointer) -> Void) throws(SwiftrayError) -> Swiftray_RayObject {
    // The store frees an object with its owner's process only when that process is on
    // this node: a pid from another machine means nothing here.
    let local = owner.nodeID.isEmpty || owner.nodeID == Data(options.nodeID.binary)
    return try writeStored(id, size: size, ownerPid: local ? owner.pid : 0, write: write)
  }

  func writeStored(_ id: ObjectID, size: Int, ownerPid: Int32,
                   write: (UnsafeMutableRawBufferPointer) -> Void) throws(SwiftrayError) -> Swiftray_RayObject {
    if let buf = try objectStore.create(id, size: size, ownerPid: ownerPid) {
      write(buf)
      try objectStore.seal(id)
    }  // else: a previous attempt of the same task stored it already
    var o = Swiftray_RayObject()
    o.storeSize = UInt64(size)
    o.storeNode = Data(options.nodeID.binary)
    o.storeAddress = objectStore.remoteAddress
    return o
  }

  func pinOnce(_ id: ObjectID, _ o: Swiftray_RayObject) throws(SwiftrayError) -> UnsafeRawBufferPointer {
    let remote = !o.storeNode.isEmpty && o.storeNode != Data(options.nodeID.binary)
    if remote, let why = state.withLock({ $0.deadNodes[o.storeNode] }) {
      throw SwiftrayError(.objectLost, "Object \(id.hex) was lost with its node (\(why)); its only copy was in that node's object store.")
    }
    if remote && o.storeAddress.isEmpty {
      throw SwiftrayError(.objectLost, "Object \(id.hex) lives on node \(NodeID(binary: o.storeNode)?.hex.prefix(12) ?? "?"), whose object store "
        + "other nodes cannot reach (it was started without networking).")
    }
    let buf = try objectStore.pin(id, pullFrom: remote ? o.storeAddress : "", size: Int(o.storeSize))
    guard let buf else {
      throw SwiftrayError(.objectFreed, "Object \(id.hex) is no longer in the object store of node "
        + "\(options.nodeID.hex.prefix(12)): it was freed after its last reference was dropped.")
    }
    if remote { state.withLock { s in if s.owners[id] == nil && s.store[id] != nil { s.localCopies.insert(id) } } }
    return buf
  }

  /// Frees owned stored objects where they live: the primary copy in its node's store
  /// (this node's, or another's through that node's NodeManager: a store's TCP port
  /// serves only chunk reads) and the copy this node may have pulled.
  func deleteStored(_ objects: [(ObjectID, Swiftray_RayObject)]) {
    guard !objects.isEmpty else { return }
    let me = Data(options.nodeID.binary)
    var elsewhere: [Data: [ObjectID]] = [:]
    for (id, o) in objects where !o.storeNode.isEmpty && o.storeNode != me && !o.storeAddress.isEmpty {
      elsewhere[o.storeNode, default: []].append(id)
    }
    objectStore.delete(objects.map(\.0))
    state.withLock { s in for (id, _) in objects { s.localCopies.remove(id) } }
    if !elsewhere.isEmpty { Task { await freeElsewhere(elsewhere) } }
  }

  /// Asks each node's NodeManager to free the objects in its store; a node not in the
  /// cached node table is looked up (once) at the ControlService. A node that is gone
  /// took its store with it, so errors are dropped.
  func freeElsewhere(_ byNode: [Data: [ObjectID]]) async {
    // A node that stopped answering holds nothing up.
    let options = ControlPlane.deadline(milliseconds: Self.freeDeadlineMs)
    var known = state.withLock { $0.nodeManagers }
    if byNode.keys.contains(where: { known[$0] == nil }),
      let nodes = try? await Swiftray_ControlService.Client(wrapping: control.client).getAllNodes(.init(), options: options).nodes {
      known = [:]
      for n in nodes where n.alive { known[n.nodeID] = n.nodeManagerAddress.isEmpty ? n.nodeManagerEndpoint : n.nodeManagerAddress }
      let table = known
      state.withLock { $0.nodeManagers = table }
    }
    await withTaskGroup(of: Void.self) { g in
      for (node, ids) in byNode {
        guard let address = known[node], let nm = nodeClient(address) else { continue }
        g.addTask {
          _ = try? await Swiftray_NodeManagerService.Client(wrapping: nm.client)
            .freeObjects(.with { $0.objectIds = ids.map { Data($0.binary) } }, options: options)
        }
      }
    }
  }

  func put(_ object: Swiftray_RayObject, id: ObjectID) -> ObjectID {
    var object = object
    let w = state.withLock { s -> [ObjectWaiter] in
      if !object.nestedRefs.isEmpty {
        object.nestedRefs = Self.nestedReferences(&s, object.nestedRefs)
        Self.holdNested(&s, id, object.nestedRefs)
      }
      s.refs.ownedObjectCreated(id)
      _ = s.refs.localRefAdded(id)
      s.store[id] = object
      return s.waiters.removeValue(forKey: id) ?? []
    }
    w.forEach { $0.arrived() }
    return id
  }

  /// Waits until at least `needed` of `ids` are available or `timeoutNanos` passes.
  /// Returns true when enough are. Blocks the caller; call with the GIL released.
  public func waitFor(_ ids: [ObjectID], needed: Int, timeoutNanos: UInt64) -> Bool {
    var fetches: [ObjectID] = []
    let unique = Array(Set(ids))
    let (done, waiter): (Bool, ObjectWaiter?) = state.withLock { s in
      var missing: [ObjectID] = []
      for id in unique where s.store[id] == nil { missing.append(id) }
      let have = unique.count - missing.count
      if have >= min(needed, unique.count) { return (true, nil) }
      for id in missing {
        if Self.startFetch(&s, id) { fetches.append(id) }
        else if s.owners[id] == nil && !s.refs.isInScope(id) && !s.tasks.isPending(id.task) {
          // Owned here, out of scope and not being computed: it was freed. (A value in
          // scope may be between its task's reply and the store: wait for it.)
          s.store[id] = Self.errorObject(.objectFreed, "Object \(id.hex) was freed: no reference to it remained in its owner.")
        }
      }
      let stillMissing = missing.filter { s.store[$0] == nil }
      let nowHave = unique.count - stillMissing.count
      if nowHave >= min(needed, unique.count) { return (true, nil) }
      let w = ObjectWaiter(needed: min(needed, unique.count) - nowHave)
      for id in stillMissing { s.waiters[id, default: []].append(w) }
      return (false, w)
    }
    for id in fetches { fetch(id) }
    guard let waiter, !done else { return true }
    if waiter.wait(nanos: timeoutNanos) { return true }
    // Timed out: unregister, then check once more (an arrival may have raced us).
    return state.withLock { s in
      for id in unique { s.waiters[id]?.removeAll { $0 === waiter } ; if s.waiters[id]?.isEmpty == true { s.waiters[id] = nil } }
      return unique.filter { s.store[$0] != nil }.count >= min(needed, unique.count)
    }
  }

  /// Sizes of this process's ownership tables, for leak checks and `memory` views.
  public struct Stats: Sendable {
    public var objects: Int, objectBytes: Int, references: Int, tasks: Int, pendingTasks: Int, leases: Int
    /// Objects of this owner that live in the shared-memory store, and their bytes.
    public var storedObjects: Int, storedBytes: Int
  }

  public func stats() -> Stats {
    state.withLock { s in
      Stats(objects: s.store.count, objectBytes: s.store.values.reduce(0) { $0 + $1.data.count },
            references: s.refs.refs.count, tasks: s.tasks.entries.count, pendingTasks: s.tasks.numPending,
            leases: s.submitter.numLeases, storedObjects: s.store.values.filter { $0.storeSize > 0 }.count,
            storedBytes: s.store.values.reduce(0) { $0 + Int($1.storeSize) })
    }
  }

  /// Positions of the first `limit` available ids, in input order.
  public func firstAvailable(_ ids: [ObjectID], limit: Int) -> [Int] {
    state.withLock { s in
      var out: [Int] = []
      for (i, id) in ids.enumerated() where s.store[id] != nil {
        out.append(i)
        if out.count == limit { break }
      }
      return out
    }
  }

  /// The stored objects (values or error objects); nil for one not available.
  public func objects(_ ids: [ObjectID]) -> [Swiftray_RayObject?] {
    state.withLock { s in ids.map { s.store[$0] } }
  }

  /// Tells the NodeManager this worker is blocked in `get` (lend its CPUs) or not.
  public func setBlocked(_ blocked: Bool) {
    guard !options.isDriver else { return }
    let nm = nodeManager
    let wid = options.workerID
    notifications.yield {
      var req = Swiftray_WorkerBlockedRequest()
      req.workerID = Data(wid.binary)
      req.blocked = blocked
      _ = try? await Swiftray_NodeManagerService.Client(wrapping: nm.client).workerBlocked(req)
    }
  }

  public func addLocalRef(_ id: ObjectID, owner: Swiftray_Address?) {
    let actions = state.withLock { s -> [ReferenceTable.Action] in
      if let owner, s.owners[id] == nil, owner.workerID != address.workerID { s.owners[id] = owner }
      return s.refs.localRefAdded(id, borrowed: s.owners[id] != nil)
    }
    applyRefActions(actions)
  }

  public func removeLocalRef(_ id: ObjectID) {
    let actions = state.withLock { $0.refs.localRefRemoved(id) }
    applyRefActions(actions)
  }

  /// The ref was serialized into a value that may reach a borrower.
  public func refEscaped(_ id: ObjectID) {
    state.withLock { $0.refs.refEscaped(id) }
  }

  /// The owner's address for a ref this process knows (itself when it owns it).
  public func ownerAddress(_ id: ObjectID) -> Swiftray_Address {
    state.withLock { $0.owners[id] } ?? address
  }

  /// Cancels the task that creates `id`. Returns false when it already finished.
  @discardableResult
  public func cancel(_ id: ObjectID, force: Bool) -> Bool {
    let tid = id.task
    let now = Self.now()
    enum Step { case none, failNow([NormalTaskSubmitter.Action]), remote(Swiftray_Address, WorkerID), remoteSoft(Swiftray_Address, WorkerID) }
    let step: Step = state.withLock { s in
      guard s.tasks.cancelRequested(tid) else { return .none }
      if s.resolver.taskRemoved(tid) {
        _ = s.actorSubmitter.callRemoved(tid)
        return .failNow([])
      }
      if let spec = s.tasks.spec(tid), let actor = TaskID(binary: spec.actorID) {
        // An actor call: drop it if not sent; else ask the actor's worker (never a kill).
        if s.actorSubmitter.callRemoved(tid) { return .failNow([]) }
        if let addr = s.actorSubmitter.address(actor), let w = WorkerID(binary: addr.workerID) { return .remoteSoft(addr, w) }
        return .none
      }
      let (removed, actions) = s.submitter.taskCanceled(tid, now: now)
      if removed { return .failNow(actions) }
      if let lease = s.submitter.leaseOf(task: tid), let addr = s.leaseWorkers[lease.leaseID] {
        return .remote(addr, lease.worker)
      }
      return .none
    }
    switch step {
    case .none: return false
    case .failNow(let actions):
      perform(actions)
      let acts = state.withLock { $0.tasks.taskReplied(tid, outcome: .cancelled) }
      applyTaskActions(acts, reply: nil)
    case .remoteSoft(let addr, _):
      if let ep = reach(addr) {
        var req = Swiftray_CancelTaskRequest()
        req.taskID = Data(tid.binary)
        pool.request(ep, .cancelTask(req)) { _ in }
      }
    case .remote(let addr, let worker):
      if force {
        let nm = nodeManager
        Task {
          var req = Swiftray_KillWorkerRequest()
          req.workerID = Data(worker.binary)
          req.reason = "killed by cancel(force=True)"
          _ = try? await Swiftray_NodeManagerService.Client(wrapping: nm.client).killWorker(req)
        }
      } else if let ep = reach(addr) {
        var req = Swiftray_CancelTaskRequest()
        req.taskID = Data(tid.binary)
        pool.request(ep, .cancelTask(req)) { _ in }
      }
    }
    return true
  }

  // MARK: - control-plane queries

  /// How long a control call waits out an unreachable head (it may be restarting).
  var controlPatience: Duration { .seconds(options.config.gcsRpcServerReconnectTimeoutS) }

  /// One ControlService call from a synchronous caller (GIL released), bounded, its
  /// failure mapped to the runtime's error naming the method and the endpoint. While
  /// the head is unreachable it is tried again, for `controlPatience`.
  func callControl<T: Sendable>(_ method: String, timeout: Duration = .seconds(30),
                                _ body: @escaping @Sendable (Swiftray_ControlService.Client<HTTP2ClientTransport.Posix>) async throws -> T) throws -> T {
    let c = control
    let patience = controlPatience
    return try blockingAwait(timeout: timeout + patience) {
      do { return try await ControlPlane.whileUnavailable(patience: patience) { try await body(Swiftray_ControlService.Client(wrapping: c.client)) } }
      catch { throw ControlPlane.error(error, calling: method, at: c.endpoint) }
    }
  }

  public func kvPut(namespace: String, key: Data, value: Data, overwrite: Bool) throws -> Bool {
    var req = Swiftray_KVPutRequest()
    req.namespace = namespace; req.key = key; req.value = value; req.overwrite = overwrite
    return try callControl("KVPut") { [req] in try await $0.kvPut(req).added }
  }

  public func kvGet(namespace: String, key: Data) throws -> Data? {
    var req = Swiftray_KVGetRequest()
    req.namespace = namespace; req.key = key
    return try callControl("KVGet") { [req] c in
      let r = try await c.kvGet(req)
      return r.found ? r.value : nil
    }
  }

  public func allNodes() throws -> [Swiftray_NodeInfo] {
    try callControl("GetAllNodes") { try await $0.getAllNodes(Swiftray_GetAllNodesRequest()).nodes }
  }

  public func nodeStats() throws -> Swiftray_GetNodeStatsReply {
    let nm = nodeManager
    return try blockingAwait {
      do { return try await Swiftray_NodeManagerService.Client(wrapping: nm.client).getNodeStats(Swiftray_GetNodeStatsRequest()) }
      catch { throw ControlPlane.error(error, calling: "GetNodeStats", at: nm.endpoint) }
    }
  }

  /// Prints worker output of this node with a `(pid=N)` prefix, as Ray does.
  public func forwardWorkerLogs() {
    let nm = nodeManager
    let task = Task {
      do {
        try await Swiftray_NodeManagerService.Client(wrapping: nm.client).subscribeLogs(Swiftray_SubscribeLogsRequest()) { response in
          for try await batch in response.messages {
            var text = ""
            for line in batch.lines { text += "(pid=\(batch.pid)) \(line)\n" }
            text.withUTF8 { buf in _ = write(batch.isErr ? 2 : 1, buf.baseAddress, buf.count) }
          }
        }
      } catch {}
    }
    logForwarding.withLock { $0 = task }
  }

  // MARK: - executor API

  public func setInterruptHandler(_ h: @escaping @Sendable () -> Void) {
    interruptRunningTask.withLock { $0 = h }
  }

  /// The next task pushed to this worker, or nil after `timeoutNanos`. Blocks.
  public func nextExecution(timeoutNanos: UInt64) -> Execution? {
    LockDiscipline.mayBlock("waiting for the next task")
    guard executionReady.wait(timeout: .now() + .nanoseconds(Int(timeoutNanos))) == .success else { return nil }
    return state.withLock { s in
      guard let e = s.executions.popFirst() else { return nil }
      s.running = TaskID(binary: e.spec.taskID)
      s.interruptTarget = nil
      if let job = JobID(binary: e.spec.jobID) { s.idGen.job = job }
      // An actor's methods run in its constructor's placement group.
      if e.spec.actorID.isEmpty || e.spec.hasActorCreation {
        s.runningStrategy = e.spec.strategy.kind == .placementGroup
          ? SchedulingKey(shape: ResourceSet(), proto: e.spec.strategy).strategy : nil
      }
      return e
    }
  }

  public var currentTaskID: TaskID? { state.withLock { $0.running } }

  /// Called by the interrupt handler on the thread that runs tasks: true (once per
  /// interrupt sent) when a cancel aimed at the task running now asked for it; false for
  /// an interrupt that arrived after its task ended.
  public func takeInterrupt() -> Bool {
    state.withLock { s in
      guard let t = s.interruptTarget, t == s.running else { return false }
      s.interruptTarget = nil
      return true
    }
  }
  /// The job of the task running here (a worker serves one job at a time), else ours.
  public var currentJobID: JobID { state.withLock { $0.idGen.job } }

  /// Sends the result of an execution back to the task's owner.
  /// Blocks while this worker's own borrower registrations are unacknowledged
  /// (bounded): call with the GIL released. The language layer has registered the
  /// owner for refs inside the returns already (`registerReceiver`), while the values
  /// still held them.
  public func finish(_ e: Execution, reply: Swiftray_PushTaskReply) {
    var reply = reply
    state.withLock { s in
      s.running = nil
      for i in reply.returns.indices where !reply.returns[i].object.nestedRefs.isEmpty {
        reply.returns[i].object.nestedRefs = Self.nestedReferences(&s, reply.returns[i].object.nestedRefs)
      }
    }
    LockDiscipline.mayBlock("a task's reply waiting for its borrower registrations")
    _ = registering.wait(timeout: .now() + .seconds(10))
    e.responder.respond(.pushTaskReply(reply))
  }

  /// First step of shutdown: from now on worker deaths are expected, not failures.
  public func prepareShutdown() {
    let first = state.withLock { s in let f = !s.shutdown; s.shutdown = true; return f }
    if first { markJobFinished() }
  }

  /// Closes servers and connections. Worker output already on its way is printed
  /// first (bounded), so a driver that exits right after `get` loses no lines.
  public func shutdown() {
    prepareShutdown()
    returnLeasesAtExit()
    if let t = logForwarding.withLock({ $0 }) {
      _ = try? blockingAwait(timeout: .seconds(1)) { await t.value }
      t.cancel()
    }
    deathWatch.withLock { $0 }?.cancel()
    server.close()
    tcpServer?.close()
    pool.closeAll()
    notifications.finish()
    nodeManager.shutdown()
    control.shutdown()
    otherNodes.shutdown()
  }

  /// How long freeing objects on another node may take before it is given up.
  static let freeDeadlineMs = 10_000

  /// Gives every held lease back and cancels every lease request still out, waiting
  /// (at most 2 s) for the nodes to hear it: a node that never hears keeps the worker
  /// and its CPUs for an owner that is gone. Blocks the calling thread (shutdown's).
  func returnLeasesAtExit() {
    let actions = state.withLock { $0.submitter.ownerExiting() }
    var calls: [(ControlPlane.Connection, NormalTaskSubmitter.Action)] = []
    for a in actions {
      switch a {
      case .returnLease(let leaseID, _):
        let node = state.withLock { $0.forgetLease(leaseID) }
        if let nm = node.map(nodeClient) ?? nodeManager { calls.append((nm, a)) }
      case .cancelLeaseRequest:
        calls.append((nodeManager, a))
      default: break
      }
    }
    guard !calls.isEmpty else { return }
    let sendable = calls.map { (conn: $0.0, action: $0.1) }
    let me = Data(options.workerID.binary)
    _ = try? blockingAwait(timeout: .seconds(2)) {
      await withTaskGroup(of: Void.self) { g in
        for (conn, action) in sendable {
          g.addTask {
            let nm = Swiftray_NodeManagerService.Client(wrapping: conn.client)
            switch action {
            case .returnLease(let leaseID, _):
              _ = try? await nm.returnWorkerLease(.with { $0.leaseID = leaseID; $0.ownerWorkerID = me })
            case .cancelLeaseRequest(let requestID):
              _ = try? await nm.cancelWorkerLease(.with { $0.leaseRequestID = requestID; $0.ownerWorkerID = me })
            default: break
            }
          }
        }
      }
    }
  }

  // MARK: - data-plane requests

  func handle(_ frame: Swiftray_DataFrame, _ responder: DataPlaneResponder) {
    switch frame.body {
    case .pushTask(let req):
      // A task, or an actor's creation, runs only under a lease this worker's node
      // granted to its owner (the ControlService, for a creation); actor calls need none.
      let underLease = req.spec.actorID.isEmpty || req.spec.hasActorCreation
      let owner = req.spec.hasActorCreation ? req.leaseOwner : req.spec.owner.workerID
      let maxQueued = options.config.maxQueuedTasksPerWorker
      let verdict: LeaseGate.Verdict = state.withLock { s in
        if underLease, case .refuse(let why) = s.leaseGate.admit(leaseID: req.leaseID, grant: req.leaseGrant, owner: owner) {
          return .refuse(why)
        }
        // Bounded: callers pushing faster than this worker runs cannot grow its queue
        // without end (an actor's callers, chiefly).
        guard s.executions.count < maxQueued else {
          return .refuse("it already has \(maxQueued) tasks queued (max_queued_tasks_per_worker); "
            + "submit fewer at once, e.g. wait on some results before submitting more")
        }
        s.executions.append(Execution(spec: req.spec, gpuIDs: req.gpuIds, responder: responder))
        return .admit
      }
      guard verdict == .admit else {
        if case .refuse(let why) = verdict {
          let now = Self.now()
          if let held = state.withLock({ $0.refusalLog.admit(now: now) }) {
            log.warning("worker/push-refused", metadata: ["task": "\(req.spec.name)", "why": "\(why)", "also_refused_since_last": "\(held)"])
          }
          responder.respond(.error(.with { $0.message = "task \(req.spec.name) refused by worker \(options.workerID.hex.prefix(12)): \(why)" }))
        }
        return
      }
      executionReady.signal()
    case .getObject(let req):
      guard let id = ObjectID(binary: req.objectID) else { return }
      let requester = WorkerID(binary: req.requesterID)
      var crowded = false
      let obj: Swiftray_RayObject?? = state.withLock { s in
        if let o = s.store[id] { return .some(o) }
        if s.tasks.isPending(id.task) || s.refs.isInScope(id) {
          // Bounded: peers asking again and again for one object cannot grow it without end.
          guard s.remoteGets[id, default: []].count < Self.maxRemoteGetsPerObject else { crowded = true; return .some(nil) }
          s.remoteGets[id, default: []].append((responder, requester))
          return .some(nil)
        }
        return nil
      }
      if crowded {
        return responder.respond(.error(.with {
          $0.message = "object \(id.hex) already has \(Self.maxRemoteGetsPerObject) requests waiting at its owner; ask again later"
        }))
      }
      switch obj {
      case .some(.some(let o)): replyObject(o, to: responder, requester: requester)
      case .some(.none): break  // answered when it arrives
      case .none:
        var reply = Swiftray_GetObjectReply()
        reply.status = .notFound
        responder.respond(.getObjectReply(reply))
      }
    case .addBorrower(let req):
      // A count below 1 would corrupt the reference counts: nothing to add.
      if let id = ObjectID(binary: req.objectID), let b = WorkerID(binary: req.borrowerID), req.count > 0 {
        guard state.withLock({ $0.refs.borrowerAdded(id, b, count: Int(req.count)) }) else {
          return responder.respond(.error(.with {
            $0.message = "object \(id.hex) already has \(ReferenceTable.maxBorrowersPerObject) borrowers at its owner"
          }))
        }
      }
      responder.respond(.ack(.init()))
    case .removeBorrower(let req):
      if let id = ObjectID(binary: req.objectID), let b = WorkerID(binary: req.borrowerID), req.count > 0 {
        applyRefActions(state.withLock { $0.refs.borrowerRemoved(id, b, count: Int(req.count)) })
      }
      responder.respond(.ack(.init()))
    case .cancelTask(let req):
      guard let tid = TaskID(binary: req.taskID) else { return }
      let (queued, running): (Execution?, Bool) = state.withLock { s in
        if let i = s.executions.firstIndex(where: { $0.spec.taskID == req.taskID }) {
          return (s.executions.remove(at: i), false)
        }
        return (nil, s.running == tid)
      }
      if let queued {
        var r = Swiftray_PushTaskReply()
        r.wasCancelled = true
        queued.responder.respond(.pushTaskReply(r))
        _ = executionReady.wait(timeout: .now())  // keep the semaphore count equal to the queue
      } else if running {
        interruptUntilStopped(tid)
      }
      var r = Swiftray_CancelTaskReply()
      r.attempted = queued != nil || running
      responder.respond(.cancelTaskReply(r))
    default:
      break
    }
  }

  // MARK: - internals (callers hold no lock unless the name says `&s`)

  /// Interrupts the running task `tid`, and twice more, 200 ms apart, while it still
  /// runs: a signal that lands just before the task enters a blocking call (between
  /// Python's checks and, say, `time.sleep`) is otherwise only seen when that call ends.
  /// (A task that catches the interrupt and goes on needs `force=True`, as in Ray.)
  /// The interrupt is aimed: the target is recorded under the lock, and the handler
  /// (on the thread that runs tasks) checks it with `takeInterrupt`, so an interrupt
  /// that lands after `tid` ended never reaches the task that runs next.
  func interruptUntilStopped(_ tid: TaskID, tries: Int = 3) {
    guard tries > 0, state.withLock({ s in
      guard s.running == tid else { return false }
      s.interruptTarget = tid
      return true
    }) else { return }
    interruptRunningTask.withLock { $0 }?()
    // The interrupt takes the GIL: off the timer's event loop, onto a thread that may wait.
    Clocks.current.schedule(after: .milliseconds(200)) { [weak self] in
      guard let worker = self else { return }
      DispatchQueue.global().async { worker.interruptUntilStopped(tid, tries: tries - 1) }
    }
  }

  /// Marks a borrowed object as being fetched from its owner. True when the caller
  /// must send the fetch.
  static func startFetch(_ s: inout State, _ id: ObjectID) -> Bool {
    guard s.owners[id] != nil, s.store[id] == nil, !s.fetching.contains(id) else { return false }
    s.fetching.insert(id)
    return true
  }

  func fetch(_ id: ObjectID) {
    guard let owner = state.withLock({ $0.owners[id] }), let ep = reach(owner) else { return }
    var req = Swiftray_GetObjectRequest()
    req.objectID = Data(id.binary)
    req.requesterID = Data(options.workerID.binary)
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
      state.withLock { _ = $0.fetching.remove(id) }
      objectsArrived([(id, obj)])
    }
  }

  public static func errorObject(_ code: SwiftrayError.Code, _ message: String) -> Swiftray_RayObject {
    var o = Swiftray_RayObject()
    o.metadata = Data(ErrorObject.metadata(code))
    o.data = Data(message.utf8)
    return o
  }

  /// Stores values (or error objects) and wakes whoever waited for them: local `get`s,
  /// tasks whose arguments they were, borrowers that asked.
  func objectsArrived(_ objs: [(ObjectID, Swiftray_RayObject)]) {
    let now = Self.now()
    var wake: [ObjectWaiter] = []
    var remote: [(DataPlaneResponder, WorkerID?, Swiftray_RayObject)] = []
    var orphans: [(ObjectID, Swiftray_RayObject)] = []
    var refActions: [ReferenceTable.Action] = []
    let me = options.workerID
    let actions: [NormalTaskSubmitter.Action] = state.withLock { s in
      var actions: [NormalTaskSubmitter.Action] = []
      for (id, o) in objs {
        // Refs inside the value came registered for this process by its sender: the
        // value holds them while it is kept here.
        let nested = o.nestedRefs.compactMap { r in ObjectID(binary: r.objectID).map { (r, $0) } }
        for (r, n) in nested where r.owner.workerID != address.workerID && s.owners[n] == nil { s.owners[n] = r.owner }
        s.refs.containedRefsAdded(nested.map(\.1))
        for (_, n) in nested { refActions += s.refs.registrationsReceived(n, count: 1, me: me) }
        // A freed owned object must not come back to life from a late reply (nor a
        // value be stored twice).
        if s.store[id] != nil || (s.owners[id] == nil && !s.refs.isInScope(id) && !s.tasks.isPending(id.task)) {
          if o.storeSize > 0 && s.store[id] == nil { orphans.append((id, o)) }
          refActions += s.refs.containedRefsRemoved(nested.map(\.1))
          continue
        }
        if !nested.isEmpty { s.nestedOf[id] = nested.map(\.1) }
        s.store[id] = o
        wake += s.waiters.removeValue(forKey: id) ?? []
        for (r, who) in s.remoteGets.removeValue(forKey: id) ?? [] { remote.append((r, who, o)) }
        for t in s.resolver.objectAvailable(id) { actions += Self.taskReady(&s, t, now: now) }
      }
      return actions
    }
    deleteStored(orphans)
    applyRefActions(refActions)
    wake.forEach { $0.arrived() }
    for (r, who, o) in remote { replyObject(o, to: r, requester: who) }
    perform(actions)
  }

  /// Answers a borrower's GetObject, registering it first for refs inside the value.
  func replyObject(_ o: Swiftray_RayObject, to responder: DataPlaneResponder, requester: WorkerID?) {
    var reply = Swiftray_GetObjectReply()
    reply.status = .ready
    reply.object = o
    guard let requester else { return responder.respond(.getObjectReply(reply)) }
    let ready = reply
    registerReceiver(requester, of: o.nestedRefs) { responder.respond(.getObjectReply(ready)) }
  }

  /// All arguments are here: inline them into the spec, queue for a lease.
  static func taskReady(_ s: inout State, _ tid: TaskID, now: UInt64) -> [NormalTaskSubmitter.Action] {
    guard var spec = s.tasks.spec(tid) else { return [] }
    var missing: [ObjectID] = []
    for i in spec.args.indices {
      guard case .ref(let r)? = spec.args[i].kind, let id = ObjectID(binary: r.objectID) else { continue }
      if let v = s.store[id] {
        spec.args[i].value = v
        spec.args[i].objectID = r.objectID
      } else {
        missing.append(id)
      }
    }
    s.tasks.specResolved(tid, spec: spec)
    if !missing.isEmpty {
      // An argument was lost with its node after it counted as available (it is being
      // rebuilt, or asked of its owner again): wait for it again, never send a bare ref.
      _ = s.resolver.taskArrived(tid, dependencies: missing, isReady: { _ in false })
      return []
    }
    if spec.hasActorCreation {
      if s.syncCreations.contains(tid) { s.syncReady.insert(tid) } else { s.actorOutbox.append(.create(tid)) }
      return []
    }
    if !spec.actorID.isEmpty {
      s.actorOutbox += s.actorSubmitter.callReady(tid).map { .call($0) }
      return []
    }
    return s.submitter.taskReady(tid, key: SchedulingKey(shape: ResourceSet(proto: spec.resources), proto: spec.strategy), now: now)
  }

  func perform(_ actions: [NormalTaskSubmitter.Action]) {
    // A lost lease's node, read before its `.returnLease` in the same batch forgets it
    // (no lock taken on the per-task path, where no lease is lost).
    var lostLeases: [UInt64] = []
    for case .tasksLost(_, let lease) in actions { lostLeases.append(lease.leaseID) }
    let lostOn: [UInt64: String] = lostLeases.isEmpty ? [:] : state.withLock { s in
      Dictionary(lostLeases.compactMap { id in s.leaseNodes[id].map { (id, $0) } }) { a, _ in a }
    }
    for a in actions {
      switch a {
      case .requestLease(let requestID, let key, let task):
        requestLease(requestID, key, preferred: preferredNode(for: task))
      case .cancelLeaseRequest(let requestID):
        let nm = nodeManager
        Task {
          var req = Swiftray_CancelWorkerLeaseRequest()
          req.leaseRequestID = requestID
          req.ownerWorkerID = Data(options.workerID.binary)
          _ = try? await Swiftray_NodeManagerService.Client(wrapping: nm.client).cancelWorkerLease(req)
        }
      case .push(let tid, let lease):
        push(tid, lease)
      case .returnLease(let leaseID, let disconnect):
        let node = state.withLock { $0.forgetLease(leaseID) }
        guard let nm = node.map(nodeClient) ?? nodeManager else { continue }
        Task {
          var req = Swiftray_ReturnWorkerLeaseRequest()
          req.leaseID = leaseID
          req.disconnectWorker = disconnect
          req.ownerWorkerID = Data(options.workerID.binary)
          _ = try? await Swiftray_NodeManagerService.Client(wrapping: nm.client).returnWorkerLease(req)
        }
      case .warnInfeasible(let key, let detail):
        warn("The following resource request cannot be scheduled right now: \(key). \(detail). "
          + "The task stays pending until a node that fits joins the cluster; "
          + "check num_cpus/num_gpus/resources in @remote(...) or start a node with those resources.")
      case .tasksLost(let tids, let lease):
        tasksLost(tids, lease, node: lostOn[lease.leaseID])
      case .tasksFailed(let tids, let detail, let code):
        for tid in tids {
          let acts = state.withLock { s in
            let what = "Task \(s.tasks.spec(tid)?.name ?? "?") (\(tid.hex)) cannot run: \(detail)"
            return s.tasks.taskFailed(tid, error: code == .system
              ? SwiftrayError(.system, what + ". Check that the driver's Python environment imports swiftray cleanly.")
              : SwiftrayError(code, what + "."))
          }
          applyTaskActions(acts, reply: nil)
        }
      }
    }
    scheduleTick()
    performActorSteps()
  }

  /// The node holding most of `task`'s stored argument bytes (locality), if any.
  func preferredNode(for task: TaskID) -> Data? {
    // A queued task's arguments are resolved: stored ones are descriptors in the spec.
    guard let spec = state.withLock({ $0.tasks.spec(task) }) else { return nil }
    let stored = spec.args.compactMap { a -> (node: Data, bytes: UInt64)? in
      guard case .value(let o)? = a.kind, o.storeSize > 0 else { return nil }
      return (o.storeNode, o.storeSize)
    }
    return LocalityPolicy.preferredNode(stored)
  }

  /// Asks a NodeManager for a lease: this node's, or (`node`) the one a spillback named,
  /// which must then grant or reject.
  /// A node may send a queued request on again when another frees up first
  /// (`QueueSpillback`): it is followed up to `maxLeaseHops` nodes, then asked again here.
  static let maxLeaseHops = 3

  func requestLease(_ requestID: UInt64, _ key: SchedulingKey, node: String? = nil, preferred: Data? = nil, hops: Int = 0) {
    guard let nm = node.map(nodeClient) ?? nodeManager else {
      let now = Self.now()
      return perform(state.withLock { $0.submitter.leaseRequestFailed(requestID: requestID, now: now) })
    }
    let owner = address
    let job = jobID
    Task { [self] in
      if case .placementGroup(let g, _, _) = key.strategy { await placementGroupRegistered(g) }
      var req = Swiftray_RequestWorkerLeaseRequest()
      req.leaseRequestID = requestID
      req.resources = key.shape.proto
      req.strategy = key.strategyProto
      req.owner = owner
      req.jobID = Data(job.binary)
      req.grantOrReject = node != nil
      if let preferred { req.preferredNode = preferred }
      let reply: Swiftray_RequestWorkerLeaseReply?
      do { reply = try await Swiftray_NodeManagerService.Client(wrapping: nm.client).requestWorkerLease(req) }
      catch { reply = nil }
      if let reply, reply.status == .spillback, hops < Self.maxLeaseHops {
        return requestLease(requestID, key, node: reply.retryAtEndpoint, hops: hops + 1)
      }
      let now = Self.now()
      let actions: [NormalTaskSubmitter.Action] = state.withLock { s in
        guard let reply else { return s.submitter.leaseRequestFailed(requestID: requestID, now: now) }
        switch reply.status {
        case .granted:
          guard let wid = WorkerID(binary: reply.worker.workerID) else { return [] }
          s.leaseWorkers[reply.leaseID] = reply.worker
          s.leaseGrants[reply.leaseID] = reply.leaseGrant
          if !reply.gpuIds.isEmpty { s.leaseGPUs[reply.leaseID] = reply.gpuIds }
          if let node { s.leaseNodes[reply.leaseID] = node }
          return s.submitter.leaseGranted(requestID: requestID, lease: .init(leaseID: reply.leaseID, worker: wid), now: now)
        case .infeasible:
          return s.submitter.leaseRejected(requestID: requestID, detail: reply.detail, now: now)
        case .canceled:
          return s.submitter.leaseRequestCanceled(requestID: requestID, now: now)
        case .workerStartFailed:
          return s.submitter.leaseFailed(requestID: requestID, detail: reply.detail, now: now)
        case .placementGroupRemoved:
          return s.submitter.leaseFailed(requestID: requestID, detail: reply.detail, now: now, code: .taskPlacementGroupRemoved)
        case .placementGroupPending, .busy:
          // Waits for its group to be placed, or for room in the node's queue: asked
          // again shortly, without a warning.
          return s.submitter.leaseRequestFailed(requestID: requestID, now: now)
        default:
          return s.submitter.leaseRequestFailed(requestID: requestID, now: now)
        }
      }
      perform(actions)
    }
  }

  /// A client of another node's NodeManager (spillback), made once.
  func nodeClient(_ endpoint: String) -> ControlPlane.Connection? { otherNodes.client(endpoint) }

  func push(_ tid: TaskID, _ lease: NormalTaskSubmitter.GrantedLease) {
    guard let (addr, gpus, grant) = state.withLock({ s in
      s.leaseWorkers[lease.leaseID].map { ($0, s.leaseGPUs[lease.leaseID] ?? [], s.leaseGrants[lease.leaseID] ?? Data()) }
    })
    else { return }
    send(tid, to: addr, gpuIDs: gpus, lease: (lease.leaseID, grant)) { [self] reply in
      taskReplied(tid, lease: lease, reply: reply)
    } lost: { [self] in
      let now = Self.now()
      perform(state.withLock { s in s.shutdown ? [] : s.submitter.workerLost(leaseID: lease.leaseID, now: now) })
    }
  }

  /// Pushes a task's spec to the worker at `addr` over the data plane; `replied` gets its
  /// reply, `lost` runs when the connection broke first. (Normal tasks and actor calls.)
  /// `lease`: the lease a normal task runs under and its node's grant (actor calls: nil).
  func send(_ tid: TaskID, to addr: Swiftray_Address, gpuIDs: [Int32] = [], lease: (id: UInt64, grant: Data)? = nil,
            replied: @escaping @Sendable (Swiftray_PushTaskReply) -> Void, lost: @escaping @Sendable () -> Void) {
    guard let spec = state.withLock({ $0.tasks.spec(tid) }), let ep = reach(addr) else { return }
    var req = Swiftray_PushTaskRequest()
    req.spec = spec
    req.gpuIds = gpuIDs
    if let lease { req.leaseID = lease.id; req.leaseGrant = lease.grant }
    pool.request(ep, .pushTask(req)) { result in
      switch result {
      case .success(let frame):
        switch frame.body {
        case .pushTaskReply(let reply)?: replied(reply)
        case .error(let e)?: replied(Self.refusedReply(tid, spec, SwiftrayError(.system, e.message)))
        default: replied(Self.refusedReply(tid, spec, SwiftrayError(.system, "worker at \(ep) answered a task with something else")))
        }
      case .failure(let e) where e.code == .invalidArgument:
        // The spec could not be sent as it is (too large a frame): running it again would not help.
        replied(Self.refusedReply(tid, spec, e))
      case .failure:
        lost()
      }
    }
  }

  /// Requests from other processes waiting for one object at its owner.
  static let maxRemoteGetsPerObject = 10_000

  /// The reply standing for a task that was refused, could not be sent, or whose reply
  /// could not come back (too large a frame): every return is the error; not retried.
  static func refusedReply(_ tid: TaskID, _ spec: Swiftray_TaskSpec, _ error: SwiftrayError) -> Swiftray_PushTaskReply {
    var reply = Swiftray_PushTaskReply()
    reply.isApplicationError = true
    reply.isRetryableError = false
    let obj = errorObject(error.code, "task \(spec.name) (\(tid.hex)) failed: \(error.message)")
    reply.returns = (0..<Int(max(spec.numReturns, 0))).map { i in
      var r = Swiftray_ReturnObject()
      r.objectID = Data(ObjectID.forReturn(of: tid, index: i).binary)
      r.object = obj
      return r
    }
    return reply
  }

  func taskReplied(_ tid: TaskID, lease: NormalTaskSubmitter.GrantedLease, reply: Swiftray_PushTaskReply) {
    let now = Self.now()
    if !reply.lostArguments.isEmpty {
      perform(state.withLock { $0.submitter.taskReplied(tid, leaseID: lease.leaseID, now: now) })
      return argumentsLost(tid, reply.lostArguments.compactMap(ObjectID.init(binary:)), detail: reply.lostDetail)
    }
    let outcome: TaskManager.Outcome = reply.wasCancelled ? .cancelled
      : reply.isApplicationError ? .applicationError(retryable: reply.isRetryableError) : .success
    let (submitActions, taskActions) = state.withLock { s in
      (s.submitter.taskReplied(tid, leaseID: lease.leaseID, now: now), s.tasks.taskReplied(tid, outcome: outcome))
    }
    perform(submitActions)
    applyTaskActions(taskActions, reply: reply)
  }

  /// `node`: the NodeManager that granted the lease, when not this node's.
  func tasksLost(_ tids: [TaskID], _ lease: NormalTaskSubmitter.GrantedLease, node: String?) {
    let nm = node.flatMap(nodeClient) ?? nodeManager
    let nodeDeath = node.flatMap { n in state.withLock { $0.deadNodeManagers[n] } }
    Task { [self] in
      var req = Swiftray_GetWorkerFailureCauseRequest()
      req.workerID = Data(lease.worker.binary)
      let cause = nodeDeath == nil ? try? await Swiftray_NodeManagerService.Client(wrapping: nm.client).getWorkerFailureCause(req) : nil
      let how = cause?.found == true ? cause!.exit.detail
        : nodeDeath.map { "worker \(lease.worker.hex.prefix(12)) was on \($0)" }
        ?? "worker \(lease.worker.hex.prefix(12)) died (its exit status is unknown)"
      for tid in tids {
        let (acts, name, attempt, maxRetries) = state.withLock { s in
          if s.shutdown { return ([TaskManager.Action](), "", 0, 0) }
          let spec = s.tasks.spec(tid)
          let e = SwiftrayError(.workerCrashed,
            "A worker died or was killed while executing task \(spec?.name ?? "?") (\(tid.hex)): \(how).")
          let acts = s.tasks.taskFailed(tid, error: e)
          return (acts, spec?.name ?? "?", Int(s.tasks.spec(tid)?.attempt ?? 0), Int(spec?.maxRetries ?? 0))
        }
        if case .resubmit? = acts.first {
          let limit = maxRetries < 0 ? "unlimited" : "\(maxRetries)"
          warn("A worker died or was killed while executing task \(name) (\(tid.hex)): \(how). "
            + "Retrying it (retry \(attempt) of \(limit), max_retries=\(maxRetries)).")
        }
        applyTaskActions(acts, reply: nil)
      }
    }
  }

  func applyTaskActions(_ actions: [TaskManager.Action], reply: Swiftray_PushTaskReply?) {
    let now = Self.now()
    for a in actions {
      switch a {
      case .complete(let tid):
        guard let reply else { continue }
        let objs = reply.returns.compactMap { r in ObjectID(binary: r.objectID).map { ($0, r.object) } }
        // Read before the returns arrive: a getter may drop them at once and with them
        // the task's entry (lineage), and the argument refs must still be released.
        let args = state.withLock { $0.tasks.argRefs(tid) }
        objectsArrived(objs)
        taskDone(tid, args: args)
      case .resubmit(let tid, _):
        perform(state.withLock { s in Self.taskReady(&s, tid, now: now) })
      case .fail(let tid, let error):
        let (n, args) = state.withLock { (Int($0.tasks.spec(tid)?.numReturns ?? 0), $0.tasks.argRefs(tid)) }
        let obj = Self.errorObject(error.code, error.message)
        objectsArrived((0..<n).map { (ObjectID.forReturn(of: tid, index: $0), obj) })
        taskDone(tid, args: args)
      }
    }
  }

  /// The task will not run again: release the references its arguments held, and its
  /// spec if nothing refers to its returns any more.
  func taskDone(_ tid: TaskID, args: [ObjectID]) {
    let actions = state.withLock { s -> [ReferenceTable.Action] in
      // Args were inlined into the spec; the refs it was submitted with are kept apart.
      let a = s.refs.submittedTaskRefsRemoved(args)
      Self.releaseLineageIfUnused(&s, tid)
      if s.tasks.lineageBytes > options.config.maxLineageBytes {
        for arg in s.tasks.evictLineage(limit: options.config.maxLineageBytes) where !arg.isPut {
          Self.releaseLineageIfUnused(&s, arg.task)
        }
      }
      return a
    }
    applyRefActions(actions)
  }

  /// Drops a finished task's spec once none of its return objects is referenced or
  /// needed as an argument by a kept spec; then, recursively, its arguments' specs.
  static func releaseLineageIfUnused(_ s: inout State, _ tid: TaskID) {
    var work = [tid]
    while let t = work.popLast() {
      guard let n = s.tasks.spec(t)?.numReturns, !s.tasks.isPending(t) else { continue }
      let needed = (0..<Int(n)).contains { i in
        let r = ObjectID.forReturn(of: t, index: i)
        return s.refs.isInScope(r) || s.tasks.isLineagePinned(r)
      }
      if !needed { work += s.tasks.release(t).filter { !$0.isPut }.map(\.task) }
    }
  }

  /// Carries out reference-count decisions: frees owned values (and what they
  /// contain, recursively), forgets borrowed ones, and sends borrower registrations
  /// and removals to owners.
  func applyRefActions(_ actions: [ReferenceTable.Action]) {
    guard !actions.isEmpty else { return }
    var sends: [(Swiftray_Address, Swiftray_DataFrame.OneOf_Body, Bool)] = []
    let me = Data(options.workerID.binary)
    var outOfScope: [ActorID] = []
    var abandoned: [TaskManager.Action] = []
    let stored: [(ObjectID, Swiftray_RayObject)] = state.withLock { s in
      var stored: [(ObjectID, Swiftray_RayObject)] = []
      var work = actions
      while let a = work.popLast() {
        switch a {
        case .free(let id):
          if let a = s.ownedActors.removeValue(forKey: id) {
            if !a.detached { outOfScope.append(a.actor) }
            work += s.refs.submittedTaskRefsRemoved(a.args)
            // Announced, its constructor still waiting for arguments: it never runs.
            if s.resolver.taskRemoved(a.actor) { abandoned += s.tasks.taskReplied(a.actor, outcome: .cancelled) }
          }
          if let o = s.store.removeValue(forKey: id), o.storeSize > 0 { stored.append((id, o)) }
          if let nested = s.nestedOf.removeValue(forKey: id) { work += s.refs.containedRefsRemoved(nested) }
          if id == id.task.actorHandleObject { s.actorSubmitter.handleReleased(id.task) }
          Self.releaseLineageIfUnused(&s, id.task)
        case .forget(let id, let n):
          s.store[id] = nil
          if id == id.task.actorHandleObject { s.actorSubmitter.handleReleased(id.task) }
          if let nested = s.nestedOf.removeValue(forKey: id) { work += s.refs.containedRefsRemoved(nested) }
          if let owner = s.owners.removeValue(forKey: id), n > 0 {
            sends.append((owner, .removeBorrower(.with { $0.objectID = Data(id.binary); $0.borrowerID = me; $0.count = Int32(n) }), false))
          }
        case .register(let id):
          if let owner = s.owners[id] {
            sends.append((owner, .addBorrower(.with { $0.objectID = Data(id.binary); $0.borrowerID = me; $0.count = 1 }), true))
          }
        }
      }
      return stored
    }
    deleteStored(stored)
    applyTaskActions(abandoned, reply: nil)
    outOfScope.forEach(actorOutOfScope)
    for (owner, body, acked) in sends {
      if acked { registering.enter() }
      sendBorrowerChange(body, to: owner) { [registering] in if acked { registering.leave() } }
    }
  }

  /// Refs listed by id inside a value, with their owners filled in from this process's
  /// table (itself when it owns them).
  static func nestedReferences(_ s: inout State, _ refs: [Swiftray_ObjectReference]) -> [Swiftray_ObjectReference] {
    refs.map { r in
      var r = r
      if !r.hasOwner, let id = ObjectID(binary: r.objectID) { r.owner = s.owners[id] ?? s.selfAddress }
      return r
    }
  }

  /// `id`, a value held here, contains `refs`: they live at least as long as it does.
  static func holdNested(_ s: inout State, _ id: ObjectID, _ refs: [Swiftray_ObjectReference]) {
    let ids = refs.compactMap { ObjectID(binary: $0.objectID) }
    s.nestedOf[id] = ids
    s.refs.containedRefsAdded(ids)
  }

  /// Before refs inside a value leave this process for `receiver`, register the
  /// receiver as their borrower: locally for refs owned here, else at their owners;
  /// `then` runs once every owner has acknowledged. Never blocks (event-loop safe).
  func registerReceiver(_ receiver: WorkerID, of refs: [Swiftray_ObjectReference], then: @escaping @Sendable () -> Void) {
    let remote: [(Swiftray_Address, ObjectID)] = state.withLock { s in
      var remote: [(Swiftray_Address, ObjectID)] = []
      for r in refs {
        guard let id = ObjectID(binary: r.objectID) else { continue }
        if let owner = s.owners[id] { remote.append((owner, id)) } else { s.refs.borrowerAdded(id, receiver) }
      }
      return remote
    }
    if remote.isEmpty { return then() }
    let left = Locked(remote.count)
    for (owner, id) in remote {
      sendBorrowerChange(.addBorrower(.with { $0.objectID = Data(id.binary); $0.borrowerID = Data(receiver.binary); $0.count = 1 }),
                         to: owner) { if left.withLock({ $0 -= 1; return $0 == 0 }) { then() } }
    }
  }

  /// The blocking form, bounded: call off the event loops (the executor's reply path).
  public func registerReceiver(_ receiver: WorkerID, of refs: [Swiftray_ObjectReference]) {
    guard !refs.isEmpty else { return }
    LockDiscipline.mayBlock("registering borrowers")
    let done = DispatchSemaphore(value: 0)
    registerReceiver(receiver, of: refs) { done.signal() }
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

  /// Keeps one timer armed for the submitter's next deadline (idle leases, retries).
  func scheduleTick() {
    let (deadline, arm): (UInt64?, Bool) = state.withLock { s in
      guard let d = s.submitter.nextDeadline(), !s.shutdown else { return (nil, false) }
      if let t = s.tickAt, t <= d { return (d, false) }
      s.tickAt = d
      return (d, true)
    }
    guard arm, let deadline else { return }
    Clocks.current.schedule(after: .nanoseconds(Clocks.current.nanos(until: deadline) + 1000)) { [self] in
      let now = Self.now()
      let actions = state.withLock { s -> [NormalTaskSubmitter.Action] in
        s.tickAt = nil
        return s.submitter.tick(now: now)
      }
      perform(actions)
    }
  }
}
