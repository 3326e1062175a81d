import Foundation
import NIOPosix
import Runtime
import RuntimeProto
import Synchronization
import Testing

/// A head and its nodes — the real ControlService and NodeManagers, their gRPC services
/// and clients — in one process over the `MemoryNetwork`, on a `ManualClock`: nothing
/// here waits for a real second, and a link is cut by name.
final class InProcessCluster: Sendable {
  final class Node: Sendable {
    let id: NodeID
    let endpoint: Endpoint
    let manager: NodeManager
    let store: ObjectStore
    let server: ControlPlane.Server
    /// Why the node stopped serving the cluster (`NodeManager.controlLost`), once it has.
    let lost = Locked<String?>(nil)
    let dir: String
    init(id: NodeID, endpoint: Endpoint, manager: NodeManager, store: ObjectStore, server: ControlPlane.Server, dir: String) {
      self.id = id; self.endpoint = endpoint; self.manager = manager; self.store = store; self.server = server; self.dir = dir
    }
  }

  let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
  let clock = ManualClock()
  let auth: ClusterAuth
  let config: Config
  /// The head's tables, kept across its restarts (as Redis keeps them).
  let storage = InMemoryControlStorage()
  let head: Locked<(control: ControlService, server: ControlPlane.Server)>
  let headEndpoint: Endpoint
  let connection: ControlPlane.Connection
  let nodes: [Node]

  var client: Swiftray_ControlService.Client<ControlPlane.Transport> { .init(wrapping: connection.client) }

  /// `execute`: what the nodes' workers (threads of this process, `InProcessWorkers`)
  /// do with a task; nil leaves the nodes without a way to start workers.
  init(nodes count: Int, config: Config, cpus: Int = 1, execute: InProcessWorkers.Execute? = nil) async throws {
    let tag = UInt64.random(in: 0 ... .max)
    auth = try ClusterAuth(token: ClusterAuth.generate(), source: "test")
    self.config = config
    let control = ControlService(group: group, config: config, storage: storage, auth: auth, clock: clock)
    headEndpoint = .memory("head-\(tag)")
    head = Locked((control, try await ControlPlane.serve([control], at: headEndpoint, group: group, auth: auth)))
    connection = try ControlPlane.connect(headEndpoint, group: group, auth: auth)
    var made: [Node] = []
    for i in 0..<count {
      let dir = NSTemporaryDirectory() + "inproc-\(tag)-\(i)"
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      try SessionPaths.makeSocketDir(dir)  // the store's own socket, for this node's processes
      let store = try ObjectStore(options: .init(capacity: 1 << 20, sessionDir: dir), group: group, auth: auth, warn: { _ in })
      let id = NodeID.random()
      var options = NodeManager.Options(nodeID: id, resources: ResourceSet(units: ["CPU": Double(cpus)]), sessionDir: dir,
                                        workerExecutable: "/bin/false", workerEnvironment: [:],
                                        controlEndpoint: headEndpoint, config: config, prestartWorkers: 0, auth: auth)
      options.endpoint = .memory("node-\(tag)-\(i)")
      options.seed = UInt64(i)
      var launcher: WorkerLauncherFactory?
      if let execute {
        let (group, clock): (MultiThreadedEventLoopGroup, ManualClock) = (self.group, self.clock)
        launcher = { @Sendable (_: @escaping ProcessMonitor.OutputHandler, onExit: @escaping ProcessMonitor.ExitHandler) -> any WorkerLauncher in
          InProcessWorkers(group: group, clock: clock, config: config, onExit: onExit, execute: execute)
        }
      }
      let manager = NodeManager(options: options, store: store, clock: clock, launcher: launcher)
      let server = try await ControlPlane.serve([manager], at: options.endpoint!, group: group, auth: auth)
      let node = Node(id: id, endpoint: options.endpoint!, manager: manager, store: store, server: server, dir: dir)
      let info = manager.nodeInfo
      _ = try await Swiftray_ControlService.Client(wrapping: connection.client).registerNode(.with { $0.node = info })
      manager.registration.withLock { $0 = info }
      manager.controlLost.withLock { $0 = { why in node.lost.withLock { $0 = why } } }
      manager.start()
      made.append(node)
    }
    nodes = made
  }

  /// Moves virtual time in `step`s, letting the tasks each step wakes run (a few real
  /// milliseconds), until `done` or `limit` of virtual time.
  func run(for limit: Duration, step: Duration = .milliseconds(100),
           until done: () async throws -> Bool = { false }) async throws {
    var elapsed = Duration.zero
    while elapsed < limit {
      if try await done() { return }
      clock.advance(by: step)
      elapsed += step
      try await Task.sleep(for: .milliseconds(15))
    }
  }

  func node(_ id: Data) -> Node? { nodes.first { Data($0.id.binary) == id } }

  func group(_ id: Data) async throws -> Swiftray_PlacementGroupInfo {
    try await client.getPlacementGroup(.with { $0.placementGroupID = id }).group
  }

  func alive(_ node: Node) async throws -> Bool {
    try await client.getAllNodes(Swiftray_GetAllNodesRequest()).nodes.first { $0.nodeID == Data(node.id.binary) }?.alive ?? false
  }

  /// A driver on node `index` (blocks while it registers its job: call from a thread
  /// of its own).
  func driver(on index: Int = 0) throws -> CoreWorker {
    let node = nodes[index]
    var options = CoreWorker.Options(isDriver: true, workerID: .random(), nodeID: node.id, nodeManager: node.endpoint,
                                     control: headEndpoint, sessionDir: node.dir, config: config, auth: auth)
    options.listen = .memory("driver-\(options.workerID.hex)")
    options.clock = clock
    return try CoreWorker(options: options, group: group, jobID: nil)
  }

  /// Runs `body` (which blocks) on a thread of its own while virtual time runs: 10 ms
  /// of it every 2 real ones.
  func whileTimeRuns<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    let clock = clock
    let ticker = Task {
      while !Task.isCancelled {
        clock.advance(by: .milliseconds(10))
        try? await Task.sleep(for: .milliseconds(2))
      }
    }
    defer { ticker.cancel() }
    return try await onOwnThread(body)
  }

  /// Stops the head and starts a new one on the same endpoint, from the same storage.
  func restartHead() async throws {
    let old = head.withLock { $0 }
    try await onOwnThread {
      old.server.shutdown()
      old.control.shutdown()
    }
    let control = ControlService(group: group, config: config, storage: storage, auth: auth, clock: clock)
    try await control.restore()
    let server = try await ControlPlane.serve([control], at: headEndpoint, group: group, auth: auth)
    head.withLock { $0 = (control, server) }
  }

  /// Stops everything (blocks: call from a thread of its own).
  func shutdown() {
    for n in nodes {
      MemoryNetwork.shared.heal(n.endpoint)
      n.manager.shutdown(grace: .milliseconds(500))
      n.server.shutdown()
      n.store.close()
      SessionPaths.removeSession(n.dir)
    }
    connection.shutdown()
    let (control, server) = head.withLock { $0 }
    server.shutdown()
    control.shutdown()
    try? group.syncShutdownGracefully()
  }
}

@Suite struct InProcessClusterTests {
  /// Health checks every virtual second, three missed ones a death; reports every 100 ms.
  static var config: Config {
    var config = Config()
    config.healthCheckPeriodMs = 1_000
    config.healthCheckFailureThreshold = 3
    config.resourceReportPeriodMs = 100
    return config
  }

  /// Issue 19's partition of the head from one node, on the real shells: a node the
  /// head can no longer reach is declared dead after the health-check threshold, its
  /// bundle of a STRICT_SPREAD group is placed again on the spare node, and the node —
  /// which still reaches the head — learns from its next report that it was declared
  /// dead and stops (fenced): the head's verdict wins.
  @Test func aNodeTheHeadCannotReachIsDeclaredDeadItsBundleMovesAndItIsFencedThoughItReachesTheHead() async throws {
    let cluster = try await InProcessCluster(nodes: 4, config: Self.config)

    let id = Data(PlacementGroupID.random().binary)
    var group = Swiftray_PlacementGroupInfo()
    group.placementGroupID = id
    group.strategy = "STRICT_SPREAD"
    group.detached = true
    group.bundles = Array(repeating: ResourceSet(units: ["CPU": 1]).proto, count: 3)
    let created = try await cluster.client.createPlacementGroup(.with { $0.group = group })
    #expect(created.error.isEmpty)
    try await cluster.run(for: .seconds(10)) { try await cluster.group(id).state == .created }
    let placed = try await cluster.group(id)
    #expect(placed.state == .created)
    #expect(Set(placed.bundleNodes).count == 3, "one bundle per node")

    let victim = try #require(cluster.node(placed.bundleNodes[0]))
    let spare = try #require(cluster.nodes.first { !placed.bundleNodes.contains(Data($0.id.binary)) })
    MemoryNetwork.shared.cut(victim.endpoint)
    try await cluster.run(for: .seconds(2))
    #expect(try await cluster.alive(victim), "fewer missed checks than the threshold are not a death")
    try await cluster.run(for: .seconds(20)) {
      let g = try await cluster.group(id)
      return g.state == .created && g.bundleNodes[0] == Data(spare.id.binary)
    }
    #expect(try await !cluster.alive(victim))
    let moved = try await cluster.group(id)
    #expect(moved.state == .created)
    #expect(moved.bundleNodes[0] == Data(spare.id.binary), "the dead node's bundle went to the spare node")
    #expect(Array(moved.bundleNodes[1...]) == Array(placed.bundleNodes[1...]), "the others stayed")

    try await cluster.run(for: .seconds(5)) { victim.lost.withLock { $0 } != nil }
    let why = try #require(victim.lost.withLock { $0 })
    #expect(why.contains("dead"), "the node was told it had been declared dead: \(why)")
    #expect(cluster.nodes.filter { $0.id != victim.id }.allSatisfy { $0.lost.withLock { $0 } == nil })
    try await onOwnThread { cluster.shutdown() }
  }

  /// A head restart on the real shells: the new head takes up the tables from storage,
  /// every node registers again on its next report, the placement group keeps its
  /// bundles where they were (none reserved twice: a group needing one more CPU waits),
  /// and no node is fenced by a head that merely restarted.
  @Test func aRestartedHeadTakesUpItsNodesAndGroupsWithoutReservingABundleTwice() async throws {
    let cluster = try await InProcessCluster(nodes: 3, config: Self.config)
    func group(_ n: Int, _ strategy: String) -> Swiftray_PlacementGroupInfo {
      var g = Swiftray_PlacementGroupInfo()
      g.placementGroupID = Data(PlacementGroupID.random().binary)
      g.strategy = strategy
      g.detached = true
      g.bundles = Array(repeating: ResourceSet(units: ["CPU": 1]).proto, count: n)
      return g
    }
    let first = group(3, "STRICT_SPREAD")
    _ = try await cluster.client.createPlacementGroup(.with { $0.group = first })
    try await cluster.run(for: .seconds(10)) { try await cluster.group(first.placementGroupID).state == .created }
    let placed = try await cluster.group(first.placementGroupID)
    #expect(placed.state == .created)

    try await cluster.restartHead()
    try await cluster.run(for: .seconds(10)) {
      var all = true
      for n in cluster.nodes where !(try await cluster.alive(n)) { all = false }
      return all
    }
    for n in cluster.nodes { #expect(try await cluster.alive(n), "every node registered with the new head") }
    let after = try await cluster.group(first.placementGroupID)
    #expect(after.state == .created)
    #expect(after.bundleNodes == placed.bundleNodes, "the bundles stayed where they were")

    // Every CPU is held by a bundle: a group that needs one more waits (nothing counted twice).
    let second = group(1, "PACK")
    _ = try await cluster.client.createPlacementGroup(.with { $0.group = second })
    try await cluster.run(for: .seconds(3))
    #expect(try await cluster.group(second.placementGroupID).state == .pending)
    // Freeing the first group lets the second in.
    _ = try await cluster.client.removePlacementGroup(.with { $0.placementGroupID = first.placementGroupID })
    try await cluster.run(for: .seconds(10)) { try await cluster.group(second.placementGroupID).state == .created }
    #expect(try await cluster.group(second.placementGroupID).state == .created)
    #expect(cluster.nodes.allSatisfy { $0.lost.withLock { $0 } == nil }, "a restart fences no one")
    try await onOwnThread { cluster.shutdown() }
  }

  /// Removing a group frees its bundle in the head's view of the node at once — before
  /// any report from the node — and the view the head works out is the one the node
  /// then reports. The node's answer to a return carries its whole view (every live
  /// group's renamed resources: a cost that grows with the groups alive) only when the
  /// head asks for it.
  @Test func aRemovedGroupIsFreedInTheHeadsViewAtOnceAndTheNodeSendsItsViewOnlyWhenAsked() async throws {
    let cluster = try await InProcessCluster(nodes: 1, config: Self.config, cpus: 2)
    let node = cluster.nodes[0]
    func view() async throws -> Swiftray_NodeInfo? {
      try await cluster.client.getAllNodes(Swiftray_GetAllNodesRequest()).nodes.first { $0.nodeID == Data(node.id.binary) }
    }
    var g = Swiftray_PlacementGroupInfo()
    g.placementGroupID = Data(PlacementGroupID.random().binary)
    g.strategy = "PACK"
    g.detached = true
    g.bundles = [ResourceSet(units: ["CPU": 2]).proto]
    let hex = try #require(PlacementGroupID(binary: g.placementGroupID)).hex
    _ = try await cluster.client.createPlacementGroup(.with { $0.group = g })
    try await cluster.run(for: .seconds(10)) { try await cluster.group(g.placementGroupID).state == .created }
    let held = try #require(try await view())
    #expect(held.available.quantities["CPU", default: 0] == 0)
    #expect(held.total.quantities.keys.contains { $0.hasSuffix(hex) })

    _ = try await cluster.client.removePlacementGroup(.with { $0.placementGroupID = g.placementGroupID })
    // No virtual time has passed: no report from the node came in.
    let freed = try #require(try await view())
    #expect(freed.available.quantities["CPU"] == 2 * ResourceSet.unit)
    #expect(!freed.total.quantities.keys.contains { $0.hasSuffix(hex) })
    #expect(!freed.available.quantities.keys.contains { $0.hasSuffix(hex) })
    // The node's reports after its return agree with the view worked out here.
    try await cluster.run(for: .seconds(1))
    let reported = try #require(try await view())
    #expect(reported.total.quantities == freed.total.quantities)
    #expect(reported.available.quantities == freed.available.quantities)

    let toNode = try ControlPlane.connect(node.endpoint, group: cluster.group, auth: cluster.auth)
    let nodeClient = Swiftray_NodeManagerService.Client(wrapping: toNode.client)
    let other = Data(PlacementGroupID.random().binary)
    let bare = try await nodeClient.returnBundles(.with { $0.placementGroupID = other })
    #expect(!bare.hasTotal && !bare.hasAvailable && bare.bundleEpoch > 0)
    let full = try await nodeClient.returnBundles(.with { $0.placementGroupID = other; $0.resourcesWanted = true })
    #expect(full.total.quantities["CPU"] == 2 * ResourceSet.unit)
    #expect(full.available.quantities["CPU"] == 2 * ResourceSet.unit)
    #expect(full.bundleEpoch > bare.bundleEpoch)
    try await onOwnThread {
      toNode.shutdown()
      cluster.shutdown()
    }
  }

  /// Tasks on the real shells end to end, in one process: a driver's `CoreWorker` leases
  /// workers from the real NodeManagers (started by `InProcessWorkers`), pushes tasks
  /// over the in-memory data plane and gathers their returns; a task whose worker dies
  /// mid-task is retried on another worker, and its result is the retry's.
  @Test func tasksRunOnWorkersOfTheRealShellsAndOneWhoseWorkerDiesIsRetried() async throws {
    let cluster = try await InProcessCluster(nodes: 2, config: Self.config, cpus: 2) { spec in
      guard case .value(let v)? = spec.args.first?.kind else { return Swiftray_PushTaskReply() }
      if spec.name == "flaky", spec.attempt == 0 { return nil }  // its worker dies mid-task
      return .returning(Data(v.data.reversed()), for: spec)
    }
    let driver = try await onOwnThread { try cluster.driver() }
    let ids: [ObjectID] = (0..<20).compactMap { i in
      var arg = Swiftray_RayObject()
      arg.data = Data([UInt8(i), 1])
      return driver.submitTask(function: Swiftray_FunctionDescriptor(), name: i == 7 ? "flaky" : "echo",
                               args: [TaskArgument(.value(arg))], numReturns: 1, resources: ResourceSet(units: ["CPU": 1]),
                               maxRetries: 3, retryExceptions: false, retryExceptionFilter: Data()).first
    }
    #expect(ids.count == 20)
    let done = try await cluster.whileTimeRuns { driver.waitFor(ids, needed: ids.count, timeoutNanos: 30_000_000_000) }
    #expect(done, "every task finished")
    let values = driver.objects(ids)
    for (i, v) in values.enumerated() { #expect(v?.data == Data([1, UInt8(i)]), "task \(i)'s own return") }
    try await onOwnThread { driver.shutdown() }
    try await onOwnThread { cluster.shutdown() }
  }

  /// A driver holds itself (through its servers' handler, its registration and its event
  /// reporter) only until `shutdown`: dropped after it, it is freed, whatever ran on it.
  @Test func aDriverIsFreedOnceShutDownAndDropped() async throws {
    // Its next task-event report is due long after the time the test lets pass: only
    // a shutdown that cancels it lets the driver go.
    var config = Self.config
    config.taskEventsReportIntervalMs = 600_000
    let cluster = try await InProcessCluster(nodes: 1, config: config, cpus: 1) { spec in
      .returning(Data([7]), for: spec)
    }
    final class Watch: @unchecked Sendable { weak var core: CoreWorker? }
    let watch = Watch()
    do {
      let driver = try await onOwnThread { try cluster.driver() }
      watch.core = driver
      let ids = driver.submitTask(function: Swiftray_FunctionDescriptor(), name: "one", args: [], numReturns: 1,
                                  resources: ResourceSet(units: ["CPU": 1]), maxRetries: 0, retryExceptions: false,
                                  retryExceptionFilter: Data())
      let done = try await cluster.whileTimeRuns { driver.waitFor(ids, needed: 1, timeoutNanos: 30_000_000_000) }
      #expect(done, "its task finished")
      try await onOwnThread { driver.shutdown() }
    }
    try await cluster.run(for: .seconds(30)) { watch.core == nil }
    #expect(watch.core == nil, "nothing holds a driver past its shutdown")
    try await onOwnThread { cluster.shutdown() }
  }

  /// An actor on the real shells: created through the head's `ActorDirectory` on a
  /// worker of a real NodeManager, its calls run in order; when its worker dies mid-call,
  /// that call fails with the actor's death (no retries asked for), the head restarts it
  /// (`max_restarts=1`) — its constructor runs again — and later calls reach the new
  /// incarnation.
  @Test func anActorOnTheRealShellsRunsItsCallsInOrderAndRestartsWhenItsWorkerDies() async throws {
    let count = Locked(0)
    let constructed = Locked(0)
    let cluster = try await InProcessCluster(nodes: 2, config: Self.config, cpus: 2) { spec in
      if spec.hasActorCreation {
        constructed.withLock { $0 += 1 }
        count.withLock { $0 = 0 }
        return Swiftray_PushTaskReply()
      }
      if spec.methodName == "die" { return nil }
      let n = count.withLock { c in c += 1; return c }
      return .returning(Data([UInt8(n)]), for: spec)
    }
    let driver = try await onOwnThread { try cluster.driver() }
    let options = CoreWorker.ActorOptions(className: "Counter", resources: ResourceSet(), placement: ResourceSet(units: ["CPU": 1]),
                                          maxRestarts: 1, maxTaskRetries: 0, maxConcurrency: 1, isAsync: false,
                                          maxPendingCalls: -1, name: "", namespace: "", detached: false, handleMeta: Data())
    let actor = try await onOwnThread { try driver.createActor(function: Swiftray_FunctionDescriptor(), args: [], options: options) }
    func call(_ method: String) throws -> ObjectID {
      try driver.submitActorTask(actor: actor, method: method, name: "Counter.\(method)", args: [], numReturns: 1,
                                 maxTaskRetries: 0)[0]
    }
    func values(_ ids: [ObjectID]) async throws -> [Swiftray_RayObject?] {
      let done = try await cluster.whileTimeRuns { driver.waitFor(ids, needed: ids.count, timeoutNanos: 30_000_000_000) }
      #expect(done)
      return driver.objects(ids)
    }
    let first = try (0..<5).map { _ in try call("inc") }
    #expect(try await values(first).map { $0?.data } == (1...5).map { Data([UInt8($0)]) }, "in the order made")

    let died = try await values([try call("die")])[0]
    #expect(died.flatMap { ErrorObject.code(fromMetadata: $0.metadata) } == .actorDied, "the call its worker died in")
    let later = try await values([try call("inc"), try call("inc")])
    #expect(later.map { $0?.data } == [Data([1]), Data([2])], "the restarted incarnation, constructed afresh")
    #expect(constructed.withLock { $0 } == 2)
    try await onOwnThread { driver.shutdown() }
    try await onOwnThread { cluster.shutdown() }
  }
}
