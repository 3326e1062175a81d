import Foundation
import Runtime
import RuntimeProto

/// A blocked `get`, as the real shell's `ObjectWaiter`: here only counted.
final class SimReader: Sendable {
  init(needed: Int) {}
}

typealias SimOwnerState = OwnerState<SimReader, Int>

/// A whole cluster on virtual time, driven by one seed: nodes whose scheduling is the
/// NodeManager's `LeaseQueue`, drivers whose every decision is `OwnerState`'s, workers
/// that run fake tasks, and a network of channels with delays, reordering between
/// connections, broken connections, worker and node deaths, slow nodes. The shells
/// here only deliver messages and carry out effects, as CoreWorker and NodeManager do;
/// the decisions are the runtime's own code.
///
/// Threading: single-threaded.
final class SimCluster {
  struct Settings {
    var nodes = 50
    var cpusPerNode = 2
    var drivers = 2
    var tasksPerDriver = 120
    /// Faults happen only before this time; afterwards the cluster must settle.
    var faultWindow: UInt64 = 3_000 * ms
    var workerKills = 4
    var nodeKills = 2
    var connectionDrops = 3
    var slowNodes = 3
    /// How long the head takes to declare a silent node dead.
    var healthTimeout: UInt64 = 400 * ms
    /// Placement groups each driver creates; the deadline of the head's calls to nodes
    /// (prepare, commit, return); the chance, in the fault window, that one such call or
    /// its answer is lost; whether nodes settle their bundles with the head's list.
    var groupsPerDriver = 3
    var nodeCallTimeout: UInt64 = 300 * ms
    var bundleMessageLoss = 0.1
    var reconcileBundles = true
    /// The chance that the head restarts once in the fault window (down 100–600 ms), and
    /// that it keeps its tables in storage (Redis) across the restart. Restarts without
    /// storage are not checked by default: a node that dies while a head without storage
    /// is down is never reported to owners (the new head never knew it; known, open).
    var headRestartChance = 0.5
    var headStorageChance = 1.0
    /// Partitions (see SimPartitions: one node cut off from all or from the head alone,
    /// the cluster split in two, node 0 cut off from the rest), each for a quarter to
    /// three times the health-check time (so most far sides are declared dead, fenced
    /// when they heal, and back as new nodes a little later).
    var partitions = 2
    var maxSteps = 2_000_000
  }

  static let ms: UInt64 = 1_000_000
  var ms: UInt64 { Self.ms }

  final class Node {
    let index: Int
    let id: NodeID
    var alive = true
    var queue: LeaseQueue
    var requests: [UInt64: (owner: Int, requestID: UInt64, key: SchedulingKey)] = [:]
    var nextRequest: UInt64 = 1
    /// The node's object store: stored values by id.
    var objects: [ObjectID: Data] = [:]
    var slowness: UInt64 = 1
    /// The cluster as the head last reported it, for routing (the NodeManager's).
    var view: ClusterView<SimRandom>
    /// What it last reported free (what the head still believes of a dead node).
    var lastReported = ResourceSet()
    /// Its latest worker exits, reported again when it registers again (NodeManager's).
    var recentExits: [Data] = []
    init(index: Int, id: NodeID, queue: LeaseQueue, rng: SimRandom) {
      self.index = index; self.id = id; self.queue = queue
      view = ClusterView(rng: rng)
    }
    var address: String { "node-\(index)" }
  }

  final class Worker {
    let id: WorkerID
    let node: Int
    var alive = true
    /// A creation carries the head incarnation that pushed it (its answer goes there).
    enum JobKind { case task, creation(ActorID, ActorDirectory.Lease, head: Int), call(incarnation: Int32) }
    typealias Job = (owner: Int, tid: TaskID, spec: Swiftray_TaskSpec, leaseID: UInt64, conn: UInt64, kind: JobKind)
    /// The actor this worker hosts, and per caller the last call sequence it ran.
    var actor: ActorID?
    var lastSeq: [Int: UInt64] = [:]
    var ran: [Int: Set<UInt64>] = [:]
    var current: Job?
    var busy: Bool { current != nil }
    var inbox: [Job] = []
    init(id: WorkerID, node: Int) { self.id = id; self.node = node }
  }

  final class Driver {
    let index: Int
    var state: SimOwnerState
    let address: Swiftray_Address
    /// Refs the driver holds, and the value each must have unless it failed.
    var held: [ObjectID: UInt64] = [:]
    var heldOrder: [ObjectID] = []
    var submitted = 0
    /// Actors this driver created (it holds each handle's one reference).
    var actors: [ActorID] = []
    /// Placement groups it created and has not removed.
    var groups: [Data] = []
    init(index: Int, state: SimOwnerState, address: Swiftray_Address) {
      self.index = index; self.state = state; self.address = address
    }
  }

  let seed: UInt64
  let settings: Settings
  var rng: SimRandom
  var time = VirtualTime()
  var nodes: [Node] = []
  var workers: [WorkerID: Worker] = [:]
  var drivers: [Driver] = []
  /// Where each driver's lease request went, and which node granted each lease.
  var requestNode: [Int: [UInt64: Int]] = [:]
  var leaseNode: [UInt64: Int] = [:]
  /// Push connections broken by the network: replies on them are never delivered.
  var brokenConnections: Set<UInt64> = []
  var nextConnection: UInt64 = 1
  var failures: [String] = []
  // The head's actors (ControlService: ActorDirectory decides).
  var actorDirectory = ActorDirectory(leaseRetryNanos: 200 * SimCluster.ms)
  /// The head's lease-owner id: a restarted head is a new process with a new one.
  var headID = WorkerID(a: 0x4EAD, b: 0, c: 0, d: 0)
  // The head's node table (ControlService: NodeTable decides), whether it is up, which
  // incarnation it is (timers and answers of an older one are void), and what its
  // storage keeps across a restart.
  var nodeTable = NodeTable(health: NodeHealth(failureThreshold: 3))
  var headUp = true
  var headEpoch = 0
  var headStorage = true
  var storedActors: [ActorID: Swiftray_ActorRecord] = [:]
  var storedGroups: [Data: Swiftray_PlacementGroupInfo] = [:]
  var storedNodes: [Data: Swiftray_NodeInfo] = [:]
  /// The head's log of worker exits (kept in memory only: a restart starts a new one),
  /// and how far node 0 has read it.
  var workerDeaths = WorkerDeathLog(id: 1)
  var workerDeathsSeen: (log: UInt64, next: UInt64) = (0, 0)
  var headRequests: [UInt64: ActorID] = [:]
  /// What an actor's creation needs free only while it is placed (its lifetime needs
  /// `resources`), by the head's request.
  var headPlacement: [UInt64: ResourceSet] = [:]
  var nextHeadRequest: UInt64 = 1
  var headTickArmed = false
  /// Each actor's max_task_retries, as its handle knows it.
  var actorRetries: [ActorID: Int] = [:]
  /// Long polls of drivers for actors' states: (driver, after version).
  var actorWatches: [ActorID: [(driver: Int, after: UInt64, token: UInt64)]] = [:]
  var nextWatch: UInt64 = 1
  var faultsInjected: [String: Int] = [:]
  /// Nodes cut off by a partition: when the cut began, when it heals, and whether only
  /// the head is cut off from it (drivers and the other nodes still reach it).
  struct Cut { let start: UInt64; let end: UInt64; let fromHeadOnly: Bool }
  var cuts: [Int: Cut] = [:]
  /// Each worker's node, by the name its channels use ("w" and 6 hex digits).
  var workerHost: [String: Int] = [:]
  // The head's placement groups (ControlService: PlacementGroupTable decides).
  var groups = PlacementGroupTable()
  var placementKicked = false
  /// Groups whose creation reached the head (a driver's removal waits for it).
  var registeredGroups: Set<Data> = []
  /// Dead nodes the drivers were told of (NodeManager.deadNodes).
  var toldDead: Set<Data> = []
  /// What happened, counted: spillbacks, grants, tasks run, retries warned of.
  var activity: [String: Int] = [:]
  /// Stored returns of attempts whose reply never reached their owner (left behind).
  var orphanedCopies = 0

  init(seed: UInt64, settings: Settings) {
    self.seed = seed
    self.settings = settings
    rng = SimRandom(seed: seed)
    for _ in 0..<settings.nodes {
      let n = newNode()
      storedNodes[Data(n.id.binary)] = nodeTable.registered(info(of: n))
    }
    for d in 0..<settings.drivers {
      var addr = Swiftray_Address()
      addr.workerID = Data(WorkerID(a: rng.next(), b: rng.next(), c: 0, d: UInt32(d)).binary)
      addr.nodeID = Data(nodes[0].id.binary)
      addr.endpoint = "driver-\(d)"
      let submitter = NormalTaskSubmitter(settings: .init(maxPendingLeaseRequests: 4, maxTasksInFlightPerWorker: 1,
                                                          idleLingerNanos: 10 * Self.ms, infeasibleRetryNanos: 1000 * Self.ms),
                                          firstRequestID: UInt64(d + 1) << 40)
      let state = SimOwnerState(submitter: submitter, idGen: TaskIDGenerator(job: JobID(UInt32(d + 1)), prefix: rng.next()),
                                selfAddress: addr, maxLineageBytes: 1 << 30)
      drivers.append(Driver(index: d, state: state, address: addr))
    }
  }

  /// A node daemon starting with a fresh id, at the next index (a fenced node's host
  /// starts one again as a new node, so indices are never reused).
  @discardableResult
  func newNode() -> Node {
    let i = nodes.count
    let total = ResourceSet(units: ["CPU": Double(settings.cpusPerNode)])
    let q = LeaseQueue(total: total, limits: .init(maxStartingWorkers: 2, maxWorkers: 8),
                       firstLeaseID: (UInt64(i) + 1) << 32)
    let n = Node(index: i, id: NodeID(a: rng.next(), b: rng.next(), c: rng.next(), d: UInt32(i)), queue: q,
                 rng: SimRandom(seed: rng.next()))
    nodes.append(n)
    return n
  }

  func fail(_ why: String) {
    if failures.count < 5 { failures.append("t=\(Double(time.now) / 1e6)ms: \(why)") }
  }

  func latency(_ node: Int) -> UInt64 { rng.between(50_000, 2 * ms) * nodes[node].slowness }

  // MARK: - drivers: feeding OwnerState events and carrying out its effects

  func driverEvent(_ d: Int, _ event: (inout SimOwnerState) -> SimOwnerState.Effects) {
    let e = event(&drivers[d].state)
    perform(d, e)
  }

  func perform(_ d: Int, _ e: SimOwnerState.Effects) {
    if !e.fetches.isEmpty { fail("driver \(d) fetches \(e.fetches.count) objects, but owns every object there is") }
    for step in e.leases { perform(d, step) }
    for (id, o) in e.freeStored {
      if drivers[d].state.refs.isInScope(id) { fail("object \(id.hex) freed while in scope") }
      let node = nodes.first { Data($0.id.binary) == o.storeNode }
      if let node { send(on: "d\(d)->n\(node.index)", delay: latency(node.index), "free \(id.task.counter)#\(id.hex.suffix(2)) on n\(node.index)") {
        node.objects[id] = nil
      } }
    }
    activity["warning", default: 0] += e.warnings.count
    if let at = e.armTick { time.at(at + 1000, "tick d\(d)") { [self] in driverEvent(d) { $0.tick(now: time.now) } } }
    for actor in e.actorsOutOfScope {
      toHead(on: "d\(d)->head", delay: latency(0), "d\(d): actor \(actor.counter) out of scope") { [self] in
        headPerform(actorDirectory.outOfScope(actor))
      }
    }
    if e.actorSteps { driverActorSteps(d) }
  }

  func perform(_ d: Int, _ step: SimOwnerState.LeaseStep) {
    switch step {
    case .request(let requestID, let key, let preferred):
      // To the driver's own node, which routes it (as NodeManager.requestWorkerLease).
      sendRequest(d, requestID, key, preferred: preferred, to: 0, routed: true, hops: 0)
    case .cancelRequest(let requestID):
      guard let target = requestNode[d]?[requestID] else { return }
      send(on: "d\(d)->n\(target)", delay: latency(target), "cancel request \(requestID & 0xffff)") { [self] in
        let n = nodes[target]
        guard n.alive, let local = n.requests.first(where: { $0.value.owner == d && $0.value.requestID == requestID })?.key else { return }
        perform(node: target, n.queue.leaseRequestCanceled(local))
      }
    case .push(let tid, let spec, let lease, let worker, _, _):
      guard let wid = WorkerID(binary: worker.workerID), let w = workers[wid] else { return fail("push to an unknown worker") }
      let conn = nextConnection
      nextConnection += 1
      send(on: "d\(d)->w\(wid.hex.prefix(6))", delay: latency(w.node), "push \(spec.name) to w\(wid.hex.prefix(6))") { [self] in
        guard w.alive else { return connectionBroke(d, leaseID: lease.leaseID, host: w.node) }
        w.inbox.append((d, tid, spec, lease.leaseID, conn, .task))
        runNext(w)
      }
    case .giveBack(let leaseID, let disconnect, _):
      guard let target = leaseNode[leaseID] else { return fail("lease \(leaseID) given back, never granted") }
      send(on: "d\(d)->n\(target)", delay: latency(target), "return lease \(leaseID & 0xffff) disconnect=\(disconnect)") { [self] in
        guard nodes[target].alive else { return }
        perform(node: target, nodes[target].queue.leaseReturned(leaseID, disconnect: disconnect,
                                                                 owner: WorkerID(binary: drivers[d].address.workerID)))
      }
    case .lost(let tids, let lease, _, let nodeDeath):
      let how = nodeDeath.map { "worker \(lease.worker.hex.prefix(8)) was on \($0)" }
        ?? "worker \(lease.worker.hex.prefix(8)) was killed by the simulation"
      time.after(latency(0), "worker failure cause for \(tids.count) tasks") { [self] in
        driverEvent(d) { $0.tasksLostWithWorker(tids, how: how, now: time.now) }
      }
    }
  }

  /// The head's index among lease requesters (drivers are 0...).
  static let head = -1
  func name(_ o: Int) -> String { o == Self.head ? "head" : "d\(o)" }

  /// A lease request from requester `o` (a driver, or the head for an actor) to node
  /// `n`; `routed`: the node decides where it goes (else it was spilled back here and
  /// must queue or be rejected).
  func sendRequest(_ o: Int, _ requestID: UInt64, _ key: SchedulingKey, preferred: Data?, to n: Int, routed: Bool, hops: Int) {
    requestNode[o, default: [:]][requestID] = n
    // The request names its owner as sent (a head's id is its incarnation's).
    let owner = o == Self.head ? headID : WorkerID(binary: drivers[o].address.workerID)!
    let epoch = headEpoch
    send(on: "\(name(o))->n\(n)", delay: latency(n), "lease request \(requestID & 0xffff) \(name(o))->n\(n)\(routed ? "" : " (spilled)")") { [self] in
      leaseRequested(n, from: o, owner: owner, requestID: requestID, key: key, preferred: preferred, routed: routed, hops: hops)
      // From a head that is gone: its connection broke, so the node withdraws the
      // request if it waits (one granted at once is lost with its answer).
      if o == Self.head && epoch != headEpoch, let local = nodes[n].requests.first(where: { $0.value.owner == o && $0.value.requestID == requestID })?.key {
        nodes[n].requests[local] = nil
        perform(node: n, nodes[n].queue.leaseRequestCanceled(local))
      }
    }
  }

  /// The final answer to a lease request reaches its requester (nil: the node could
  /// not be reached); `n`: the node that gave it.
  func answer(_ o: Int, _ requestID: UInt64, _ reply: Swiftray_RequestWorkerLeaseReply?, from n: Int) {
    if o == Self.head { return headLeaseAnswered(requestID, reply, node: n) }
    driverEvent(o) { $0.leaseReplied(requestID, reply, node: n == 0 ? nil : nodes[n].address, now: time.now) }
  }

  /// The connection to a worker on node `host` broke (the news crosses the network).
  func connectionBroke(_ d: Int, leaseID: UInt64, host: Int) {
    send(on: "n\(host)->d\(d)", delay: rng.between(1 * ms, 5 * ms), "connection of lease \(leaseID & 0xffff) broke") { [self] in
      driverEvent(d) { $0.workerLost(leaseID: leaseID, now: time.now) }
    }
  }

  // MARK: - nodes: LeaseQueue events and actions

  func leaseRequested(_ n: Int, from d: Int, owner: WorkerID, requestID: UInt64, key: SchedulingKey, preferred: Data?, routed: Bool, hops: Int) {
    let node = nodes[n]
    let placement = d == Self.head ? headPlacement[requestID] ?? ResourceSet() : ResourceSet()
    guard node.alive else {
      // Connection refused: the requester asks again.
      return time.after(rng.between(1 * ms, 3 * ms), "lease request to dead n\(n) failed") { [self] in
        answer(d, requestID, nil, from: n)
      }
    }
    if routed {
      let me = NodePicker.NodeView(id: Data(node.id.binary), address: node.address, total: node.queue.total,
                                   available: node.queue.uncommitted, alive: true, startTimeMs: 0)
      switch node.view.route(key, needs: key.shape.union(placement), me: me, preferred: preferred) {
      case .local: break
      case .spillback(let address):
        guard let target = nodes.first(where: { $0.address == address }) else { return fail("spillback to unknown \(address)") }
        return spilledBack(d, requestID, key, from: n, to: target.index, hops: hops)
      case .reject(let detail):
        var r = Swiftray_RequestWorkerLeaseReply()
        r.status = .infeasible
        r.detail = detail
        let reply = r
        return send(on: "n\(n)->\(name(d))", delay: latency(n), "lease request rejected by n\(n)") { [self] in
          answer(d, requestID, reply, from: n)
        }
      }
    }
    let local = node.nextRequest
    node.nextRequest += 1
    node.requests[local] = (d, requestID, key)
    // As NodeManager.requestWorkerLease: only affinity and bundles tie a request here.
    let movable = (key.strategy == .default || key.strategy == .spread)
      && BundleResources.groups(in: key.shape.union(placement)).isEmpty
    perform(node: n, node.queue.leaseRequested(.init(id: local, shape: key.shape, owner: owner, placement: placement,
                                                     movable: movable, forControl: d == Self.head)))
  }

  /// A spillback answer reaches its requester, which follows it (`LeaseClient`: a
  /// driver up to 3 nodes, then asks its own node again; the head one node).
  func spilledBack(_ d: Int, _ requestID: UInt64, _ key: SchedulingKey, from n: Int, to target: Int, hops: Int) {
    activity["spillback", default: 0] += 1
    send(on: "n\(n)->\(name(d))", delay: latency(n), "spillback n\(n)->n\(target) for \(name(d))") { [self] in
      if d == Self.head {
        guard headRequests[requestID] != nil else { return }  // asked by a head that is gone
        guard hops < 1 else {
          var r = Swiftray_RequestWorkerLeaseReply()
          r.status = .spillback
          return answer(d, requestID, r, from: n)
        }
        sendRequest(d, requestID, key, preferred: nil, to: target, routed: false, hops: hops + 1)
      } else if hops < 3 {
        sendRequest(d, requestID, key, preferred: nil, to: target, routed: false, hops: hops + 1)
      } else {
        sendRequest(d, requestID, key, preferred: nil, to: 0, routed: true, hops: 0)
      }
    }
  }

  /// Every report period: each node reports to the head and takes back its view of all
  /// nodes; queued requests move to nodes that freed up first.
  func reportCycle() {
    let view = nodes.map { n in
      NodePicker.NodeView(id: Data(n.id.binary), address: n.address, total: n.queue.total,
                          available: n.alive ? n.queue.available : n.lastReported, alive: !headCountsDead(n), startTimeMs: 0)
    }
    for n in nodes where n.alive {
      // A head that is down, or a cut, takes no report and gives no view: the node
      // keeps its old one.
      guard headUp, cuts[n.index] == nil else { continue }
      nodeReported(n)
      guard n.alive else { continue }  // fenced
      n.view.refreshed(view)
      if n.index == 0 { driversLearnDeaths(); driversLearnWorkerDeaths() }
      let queued = n.queue.movableRequests.map { (id: $0.id, needs: $0.needsFree) }
      for m in n.view.spill(queued, free: n.queue.available, me: Data(n.id.binary)) {
        guard n.queue.leaseRequestMoved(m.requestID), let (d, requestID, key) = n.requests.removeValue(forKey: m.requestID),
              let target = nodes.first(where: { $0.address == m.address }) else { continue }
        spilledBack(d, requestID, key, from: n.index, to: target.index, hops: 0)
      }
    }
    // Until the work is done (bounded: a run that never finishes is reported as a hang).
    if time.now < settings.faultWindow * 2
      || (time.now < settings.faultWindow * 40
          && (drivers.contains(where: { $0.state.tasks.numPending > 0 }) || !groups.waiting.isEmpty)) {
      time.after(100 * ms, "report cycle") { [self] in reportCycle() }
    }
  }

  /// Answers a queued request; a node other than the driver's is named (as after a
  /// spillback), so the driver knows where its lease lives.
  func reply(_ n: Int, _ local: UInt64, _ make: (inout Swiftray_RequestWorkerLeaseReply) -> Void) {
    guard let (d, requestID, _) = nodes[n].requests.removeValue(forKey: local) else { return }
    var r = Swiftray_RequestWorkerLeaseReply()
    make(&r)
    let reply = r
    send(on: "n\(n)->\(name(d))", delay: latency(n), "lease reply \(reply.status) n\(n)->\(name(d))") { [self] in
      answer(d, requestID, reply, from: n)
    }
  }

  func perform(node n: Int, _ actions: [LeaseQueue.Action]) {
    let node = nodes[n]
    for a in actions {
      switch a {
      case .grant(let local, let lease):
        activity["lease grant", default: 0] += 1
        leaseNode[lease.id] = n
        reply(n, local) { r in
          r.status = .granted
          r.leaseID = lease.id
          r.worker.workerID = Data(lease.worker.binary)
          r.worker.nodeID = Data(node.id.binary)
          r.worker.endpoint = "w-\(lease.worker.hex.prefix(8))"
        }
      case .reject(let local, let detail):
        reply(n, local) { $0.status = .infeasible; $0.detail = detail }
      case .placementGroupUnavailable(let local, let removed, let detail):
        reply(n, local) { $0.status = removed ? .placementGroupRemoved : .placementGroupPending; $0.detail = detail }
      case .canceled(let local):
        reply(n, local) { $0.status = .canceled }
      case .workerStartFailed(let local, let detail):
        reply(n, local) { $0.status = .workerStartFailed; $0.detail = detail }
      case .startWorker(let env):
        let id = WorkerID(a: rng.next(), b: rng.next(), c: rng.next(), d: UInt32(n))
        perform(node: n, node.queue.workerStarting(id, env: env))
        time.after(rng.between(5 * ms, 30 * ms) * node.slowness, "worker \(id.hex.prefix(6)) starts on n\(n)") { [self] in
          guard node.alive else { return }
          workers[id] = Worker(id: id, node: n)
          workerHost["w\(id.hex.prefix(6))"] = n
          perform(node: n, node.queue.workerRegistered(id))
        }
      case .killWorker(let id):
        if let w = workers[id] { killWorker(w, why: "killed by its node") }
      }
    }
    checkResources(node)
  }

  /// Resources are never over-committed: what is free never goes below zero nor
  /// above the node's total.
  func checkResources(_ node: Node) {
    for (k, v) in node.queue.available.quantities where v < 0 || v > node.queue.total[k] {
      fail("node \(node.index) has \(v) of \(k) free (total \(node.queue.total[k]))")
    }
  }

  // MARK: - workers: fake tasks

  func runNext(_ w: Worker) {
    guard w.alive, !w.busy, !w.inbox.isEmpty else { return }
    let job = w.inbox.removeFirst()
    w.current = job
    let node = nodes[w.node]
    time.after(rng.between(1 * ms, 20 * ms) * node.slowness, "w\(w.id.hex.prefix(6)) ran \(job.spec.name)") { [self] in
      guard w.alive else { return }
      w.current = nil
      if case .task = job.kind {} else {
        actorJobDone(w, job)
        return runNext(w)
      }
      activity["task run", default: 0] += 1
      let reply = execute(job.spec, on: node)
      if reply.lostArguments.isEmpty, rng.chance(0.2),
         let kept = job.spec.args.compactMap({ ObjectID(binary: $0.objectID) }).randomElement(using: &rng) {
        keepBorrowed(w, kept, owner: job.owner)
      }
      if brokenConnections.contains(job.conn) {
        // The reply cannot reach its owner: what the attempt stored stays behind.
        orphanedCopies += reply.returns.filter { $0.object.storeSize > 0 }.count
      } else {
        send(on: "w\(w.id.hex.prefix(6))->d\(job.owner)", delay: latency(w.node), "reply \(job.spec.name)") { [self] in
          guard !brokenConnections.contains(job.conn) else {
            orphanedCopies += reply.returns.filter { $0.object.storeSize > 0 }.count
            return
          }
          let lostNodes: Set<Data>? = {
            var got: Set<Data>?
            driverEvent(job.owner) { s in
              let (lost, e) = s.taskReplied(job.tid, leaseID: job.leaseID, reply: reply, now: time.now)
              got = lost
              return e
            }
            return got
          }()
          if let lostNodes { awaitVerdict(job.owner, job.tid, nodes: lostNodes, deadline: time.now + settings.healthTimeout * 3) }
        }
      }
      runNext(w)
    }
  }

  /// The task's value: its number plus its arguments' values; an argument that is an
  /// error is raised again (the returns carry it); a stored argument is read from its
  /// node's store, and one that cannot be read is reported as lost.
  func execute(_ spec: Swiftray_TaskSpec, on node: Node) -> Swiftray_PushTaskReply {
    var reply = Swiftray_PushTaskReply()
    var sum = UInt64(spec.name.split(separator: "-").last.flatMap { UInt64($0) } ?? 0)
    var error: Swiftray_RayObject?
    for a in spec.args {
      guard case .value(let v)? = a.kind else { fail("task \(spec.name) was sent an unresolved ref argument"); continue }
      if ErrorObject.code(fromMetadata: v.metadata) != nil { error = v; continue }
      var data = v.data
      if v.storeSize > 0 {
        guard let id = ObjectID(binary: a.objectID),
              let at = nodes.first(where: { Data($0.id.binary) == v.storeNode }), at.alive, reachable(node.index, at.index),
              let stored = at.objects[id]
        else {
          reply.lostArguments.append(a.objectID)
          reply.lostDetail = "the node holding it did not answer"
          continue
        }
        data = stored
      }
      if v.nestedRefs.isEmpty { sum &+= UInt64(String(decoding: data, as: UTF8.self)) ?? 0 }
    }
    if !reply.lostArguments.isEmpty { return reply }
    let tid = TaskID(binary: spec.taskID)!
    var ret = Swiftray_ReturnObject()
    ret.objectID = Data(ObjectID.forReturn(of: tid, index: 0).binary)
    if let error {
      reply.isApplicationError = true
      ret.object = error
    } else if spec.name.hasPrefix("big") {
      let id = ObjectID.forReturn(of: tid, index: 0)
      node.objects[id] = Data(String(sum).utf8)
      ret.object.storeSize = 1_000_000
      ret.object.storeNode = Data(node.id.binary)
      ret.object.storeAddress = "\(node.address):store"
    } else {
      ret.object.data = Data(String(sum).utf8)
    }
    reply.returns = [ret]
    return reply
  }

  /// As the shell does for a task whose arguments could not be read: waits for the
  /// cluster's verdict on their nodes (bounded), then tells the owner.
  func awaitVerdict(_ d: Int, _ t: TaskID, nodes lost: Set<Data>, deadline: UInt64) {
    time.after(50 * ms, "verdict check for \(t.hex.suffix(6))") { [self] in
      if !drivers[d].state.declaredDead(lost) && time.now < deadline {
        return awaitVerdict(d, t, nodes: lost, deadline: deadline)
      }
      driverEvent(d) { $0.argumentsVerdict(t, nodes: lost, detail: "the node holding it did not answer", now: time.now) }
    }
  }

  // MARK: - faults

  func killWorker(_ w: Worker, why: String) {
    guard w.alive else { return }
    w.alive = false
    let inFlight = (w.current.map { [$0] } ?? []) + w.inbox
    w.current = nil
    w.inbox = []
    // Each driver with a task on it sees that connection break (an idle lease's owner
    // finds out with its next push).
    var seen = Set<UInt64>()
    for job in inFlight where !brokenConnections.contains(job.conn) {
      brokenConnections.insert(job.conn)
      switch job.kind {
      case .task: if seen.insert(job.leaseID).inserted { connectionBroke(job.owner, leaseID: job.leaseID, host: w.node) }
      case .call(let incarnation): actorCallBroke(job.owner, job.tid, incarnation: incarnation, host: w.node)
      case .creation: break  // the head learns from the node's report below
      }
    }
    if nodes[w.node].alive {
      perform(node: w.node, nodes[w.node].queue.workerExited(w.id))
      // The node reports every worker exit to the head: its actor restarts or dies.
      let wid = Data(w.id.binary)
      nodes[w.node].recentExits = Array((nodes[w.node].recentExits + [wid]).suffix(WorkerDeathLog.maxPerAnswer))
      toHead(on: "n\(w.node)->head", delay: latency(w.node), "n\(w.node) reports w\(w.id.hex.prefix(6)) exited") { [self] in
        workerDeaths.died(wid)
        headPerform(actorDirectory.workerDied(wid, detail: "worker \(w.id.hex.prefix(8)) \(why)"))
      }
    }
  }

  /// Node `n` stops (killed, or `why` another reason such as fencing): its workers,
  /// store and queued requests are gone.
  func killNode(_ n: Int, why: String = "killed") {
    let node = nodes[n]
    guard node.alive else { return }
    if why == "killed" { faultsInjected["node kill", default: 0] += 1 }
    cuts[n] = nil
    node.alive = false
    for w in workers.values.sorted(by: { $0.id.hex < $1.id.hex }) where w.node == n { killWorker(w, why: "its node was \(why)") }
    node.objects = [:]
    for (_, r) in node.requests.sorted(by: { $0.key < $1.key }) {
      let (d, requestID, _) = r
      time.after(rng.between(1 * ms, 5 * ms), "lease request on dead n\(n) broke") { [self] in
        answer(d, requestID, nil, from: n)
      }
    }
    node.requests = [:]
    healthCheck(n)
  }

  func injectFaults() {
    let s = settings
    let window = s.faultWindow
    for _ in 0..<s.workerKills {
      time.at(rng.between(0, window), "fault: kill a worker") { [self] in
        let busy = workers.values.filter { $0.alive && $0.busy }.sorted { $0.id.hex < $1.id.hex }
        guard let w = busy.randomElement(using: &rng) else { return }
        faultsInjected["worker kill", default: 0] += 1
        killWorker(w, why: "SIGKILL")
      }
    }
    for _ in 0..<s.nodeKills {
      time.at(rng.between(0, window), "fault: kill a node") { [self] in
        let alive = nodes.dropFirst().filter(\.alive)
        if let n = alive.randomElement(using: &rng) { killNode(n.index) }
      }
    }
    for _ in 0..<s.partitions {
      time.at(rng.between(0, window), "fault: partition") { [self] in injectPartition() }
    }
    for _ in 0..<s.connectionDrops {
      time.at(rng.between(0, window), "fault: drop a push connection") { [self] in
        let busy = workers.values.filter { $0.alive && $0.busy }.sorted { $0.id.hex < $1.id.hex }
        guard let w = busy.randomElement(using: &rng), let job = w.current, !brokenConnections.contains(job.conn) else { return }
        switch job.kind {
        case .task: connectionBroke(job.owner, leaseID: job.leaseID, host: w.node)
        case .call(let incarnation): actorCallBroke(job.owner, job.tid, incarnation: incarnation, host: w.node)
        case .creation: return  // the head's push carries no reply it waits on
        }
        faultsInjected["connection drop", default: 0] += 1
        brokenConnections.insert(job.conn)
      }
    }
    if rng.chance(s.headRestartChance) {
      headStorage = rng.chance(s.headStorageChance)
      time.at(rng.between(window / 4, window * 3 / 4), "fault: restart the head") { [self] in restartHead() }
    }
    for _ in 0..<s.slowNodes {
      if let n = nodes.randomElement(using: &rng) { n.slowness = rng.between(3, 10) }
    }
  }
}
