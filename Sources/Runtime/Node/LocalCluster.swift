import Foundation
import GRPCCore
import NIOPosix
import RuntimeProto

/// A cluster of one node inside the calling process (DESIGN §1): the ControlService and
/// a NodeManager served over gRPC on Unix sockets in the session directory, with real
/// worker processes. The same services and RPCs as a multi-node cluster.
///
/// Threading: `start` and `shutdown` from one thread; blocks while services start/stop.
public final class LocalCluster: Sendable {
  public let sessionDir: String
  public let nodeID: NodeID
  public let nodeManager: NodeManager
  /// The ControlService, on the head node only.
  public let control: ControlService?
  /// Where this node's ControlService is (a Unix socket on the head, TCP elsewhere).
  public let controlEndpoint: Endpoint
  let servers: [ControlPlane.Server]
  /// The node's Prometheus endpoint, when it serves one.
  public let metricsServer: HTTPServer?
  /// The head's dashboard, when it serves one.
  public let dashboardServer: HTTPServer?
  /// The node's health endpoints for probes (`AgentHealth`), when asked for a port.
  public let agentServer: HTTPServer?
  /// Runs submitted jobs (with the dashboard, on the head).
  public let jobs: JobManager?
  /// This node as registered (its TCP addresses when networked).
  public let node: Swiftray_NodeInfo

  public var nodeManagerEndpoint: Endpoint { nodeManager.endpoint }
  /// The ControlService's TCP address on a networked head ("HOST:PORT"), else nil.
  public var controlAddress: String? {
    guard control != nil else { return nil }
    for s in servers {
      if case .tcp(let h, let p) = s.endpoint, node.nodeManagerAddress != s.endpoint.description { return "\(h):\(p)" }
    }
    return nil
  }

  /// A fresh session directory under `root` (Ray: /tmp/ray/session_<time>_<pid>).
  public static func makeSessionDir(root: String = SessionPaths.sessionsRoot()) throws -> String {
    try SessionPaths.makePrivate(root)
    removeStaleSessions(root: root)
    let f = DateFormatter()
    f.dateFormat = "yyyy-MM-dd_HH-mm-ss"
    let dir = "\(root)/session_\(f.string(from: Date()))_\(getpid())_\(String(UInt32.random(in: 0 ... .max), radix: 16))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    do { try SessionPaths.makeSocketDir(dir) } catch {
      SessionPaths.removeSession(dir)
      throw error
    }
    return dir
  }

  /// The sessions under `root` by name, with the pid of the process that started
  /// each (`session_<date>_<time>_<pid>_<rand>`) and whether it still runs.
  public static func sessions(root: String = SessionPaths.sessionsRoot()) -> [(name: String, alive: Bool)] {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return [] }
    return names.compactMap { name in
      let parts = name.split(separator: "_")
      guard name.hasPrefix("session_"), parts.count >= 5, let pid = Int32(parts[3]) else { return nil }
      return (name, processAlive(pid))
    }
  }

  /// True while `pid` runs (a zombie, exited but not yet reaped, counts as gone).
  public static func processAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 || errno != ESRCH else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return true }
    return !stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
  }

  /// The newest session on this machine whose cluster is running (its ControlService
  /// socket exists and the process that started it lives): what `address="auto"` joins.
  public static func newestLiveSession(root: String = SessionPaths.sessionsRoot()) -> String? {
    let fm = FileManager.default
    let live = sessions(root: root).filter(\.alive).map { root + "/" + $0.name }
      .filter { fm.fileExists(atPath: SessionPaths.socket($0, "gcs.sock")) && fm.fileExists(atPath: SessionPaths.socket($0, "raylet.sock")) }
    func created(_ p: String) -> Date {
      (try? fm.attributesOfItem(atPath: SessionPaths.socket(p, "gcs.sock"))[.modificationDate] as? Date) ?? .distantPast
    }
    return live.max { (created($0), $0) < (created($1), $1) }
  }

  /// Every node the ControlService at `control` knows, and (`groups`) its placement
  /// groups, asked over one connection made for it (CLI and join paths, not per task).
  public static func allNodes(control: Endpoint, group: MultiThreadedEventLoopGroup, auth: ClusterAuth) throws -> [Swiftray_NodeInfo] {
    try clusterState(control: control, group: group, groups: false, auth: auth).nodes
  }

  public static func clusterState(control: Endpoint, group: MultiThreadedEventLoopGroup, groups: Bool, auth: ClusterAuth)
    throws -> (nodes: [Swiftray_NodeInfo], groups: [Swiftray_PlacementGroupInfo]) {
    let c = try ControlPlane.connect(control, group: group, auth: auth)
    defer { c.shutdown() }
    return try blockingAwait(timeout: .seconds(10)) {
      let client = c.controlService
      do {
        let nodes = try await client.getAllNodes(Swiftray_GetAllNodesRequest()).nodes
        let all = groups ? try await client.getAllPlacementGroups(Swiftray_GetAllPlacementGroupsRequest()).groups : []
        return (nodes, all)
      } catch { throw ControlPlane.error(error, calling: "GetAllNodes", at: control) }
    }
  }

  /// The NodeManager's own description (node id, resources), asked over its socket.
  public static func nodeInfo(nodeManager: Endpoint, group: MultiThreadedEventLoopGroup, auth: ClusterAuth) throws -> Swiftray_NodeInfo {
    let c = try ControlPlane.connect(nodeManager, group: group, auth: auth)
    defer { c.shutdown() }
    return try blockingAwait(timeout: .seconds(10)) {
      do { return try await c.nodeManagerService.getNodeStats(Swiftray_GetNodeStatsRequest()).node }
      catch { throw ControlPlane.error(error, calling: "GetNodeStats", at: nodeManager) }
    }
  }

  /// Session directories of processes that were killed before they could clean up.
  static func removeStaleSessions(root: String) {
    for (name, alive) in sessions(root: root) where !alive {
      SessionPaths.removeSession(root + "/" + name)
    }
  }

  /// What this node is in its cluster.
  public enum Role: Sendable {
    /// Hosts the ControlService; `port` also serves it (and the NodeManager) over TCP
    /// on `nodeIP` so other nodes can join (0: a free port). nil: this machine only.
    case head(port: Int?)
    /// Joins the cluster whose ControlService listens at this endpoint.
    case worker(control: Endpoint)
  }

  public static func start(resources: ResourceSet, config: Config, workerExecutable: String,
                           workerEnvironment: [String: String], prestartWorkers: Int,
                           objectStoreMemory: Int? = nil, spillDirectory: String? = nil,
                           group: MultiThreadedEventLoopGroup, root: String = SessionPaths.sessionsRoot(),
                           role: Role = .head(port: nil), nodeIP: String = "127.0.0.1",
                           controlStorage: (any ControlStorage)? = nil, auth: ClusterAuth,
                           metricsExportPort: Int? = nil, dashboard: Dashboard.Options? = nil,
                           agentPort: Int? = nil, labels: [String: String] = [:],
                           warn: @escaping @Sendable (String) -> Void = { CoreWorker.writeStderr("(swiftray) WARNING: \($0)\n") }) throws -> LocalCluster {
    let session = try makeSessionDir(root: root)
    do {
      // Drivers of this user on this machine join through the session: its token is there
      // (0600), beside its sockets.
      if let token = auth.tokenText { try ClusterAuth.writeTokenFile(token, to: ClusterAuth.sessionTokenPath(session)) }
      return try start(session: session, resources: resources, config: config, workerExecutable: workerExecutable,
                       workerEnvironment: workerEnvironment, prestartWorkers: prestartWorkers,
                       objectStoreMemory: objectStoreMemory, spillDirectory: spillDirectory, group: group,
                       role: role, nodeIP: nodeIP, controlStorage: controlStorage, auth: auth,
                       metricsExportPort: metricsExportPort, dashboard: dashboard, agentPort: agentPort, labels: labels,
                       warn: warn)
    } catch {
      SessionPaths.removeSession(session)
      throw error
    }
  }

  static func start(session: String, resources: ResourceSet, config: Config, workerExecutable: String,
                    workerEnvironment: [String: String], prestartWorkers: Int, objectStoreMemory: Int?,
                    spillDirectory: String?, group: MultiThreadedEventLoopGroup, role: Role, nodeIP: String,
                    controlStorage: (any ControlStorage)?, auth: ClusterAuth, metricsExportPort: Int?,
                    dashboard: Dashboard.Options?, agentPort: Int?, labels: [String: String],
                    warn: @escaping @Sendable (String) -> Void) throws -> LocalCluster {
    let networked: Bool
    switch role {
    case .head(let port): networked = port != nil
    case .worker: networked = true
    }
    let store = try ObjectStore(
      options: .init(capacity: objectStoreMemory ?? ObjectStore.defaultCapacity, sessionDir: session,
                     spillDirectory: spillDirectory, remoteHost: networked ? nodeIP : nil,
                     pull: .init(chunkTimeoutMs: config.objectManagerPullTimeoutMs),
                     recordEvents: config.enableTaskEvents == 1),
      group: group, auth: auth, warn: warn)
    let nodeID = NodeID.random()
    var servers: [ControlPlane.Server] = []
    var control: ControlService?
    let controlEP: Endpoint
    switch role {
    case .head(let port):
      let c = ControlService(group: group, config: config, storage: controlStorage ?? InMemoryControlStorage(), auth: auth)
      try blockingAwait(timeout: .seconds(30)) { try await c.restore() }
      control = c
      controlEP = Endpoint.unix(SessionPaths.socket(session, "gcs.sock"))
      servers.append(try blockingAwait { try await ControlPlane.serve([c], at: controlEP, group: group, auth: auth) })
      if let port {
        let tcp = Endpoint.tcp(host: nodeIP, port: port)
        do { servers.append(try blockingAwait { try await ControlPlane.serve([c], at: tcp, group: group, auth: auth) }) }
        catch { throw SwiftrayError(.invalidArgument, "cannot listen on \(nodeIP):\(port) for the ControlService: \(error). Is the port taken? Use --port 0 for a free one.") }
        // A fixed port answers on loopback too, as Ray's GCS does on every interface:
        // KubeRay's head pod says RAY_ADDRESS=127.0.0.1:6379 to the drivers run there.
        // Best effort: a loopback port taken by something else leaves the node as it was.
        if port != 0, !NodeAddress.isLoopback(nodeIP),
          let loop = try? blockingAwait({ try await ControlPlane.serve([c], at: .tcp(host: "127.0.0.1", port: port), group: group, auth: auth) }) {
          servers.append(loop)
        }
      }
    case .worker(let c):
      controlEP = c
    }
    control?.headNode.withLock { $0 = Data(nodeID.binary) }
    var nmOptions = NodeManager.Options(
      nodeID: nodeID, resources: resources, sessionDir: session, workerExecutable: workerExecutable,
      workerEnvironment: workerEnvironment, controlEndpoint: controlEP, config: config,
      prestartWorkers: prestartWorkers, auth: auth)
    if networked { nmOptions.nodeIP = nodeIP }
    let nm = NodeManager(options: nmOptions, store: store)
    let nmEP = nm.endpoint
    servers.append(try blockingAwait { try await ControlPlane.serve([nm], at: nmEP, group: group, auth: auth) })
    var node = nm.nodeInfo
    node.ipAddress = nodeIP
    node.labels = labels
    if networked {
      let tcp = try blockingAwait { try await ControlPlane.serve([nm], at: .tcp(host: nodeIP, port: 0), group: group, auth: auth) }
      servers.append(tcp)
      node.nodeManagerAddress = tcp.endpoint.description
    }
    node.startTimeMs = Int64(Date().timeIntervalSince1970 * 1000)
    var metricsServer: HTTPServer?
    var dashboardServer: HTTPServer?
    var agentServer: HTTPServer?
    var jobs: JobManager?
    // What a start that fails past this point has to stop again (blocking: this thread is the caller's).
    func abandon() {
      nm.shutdown()
      for s in servers { s.shutdown() }
      metricsServer?.shutdown()
      dashboardServer?.shutdown()
      agentServer?.shutdown()
      jobs?.shutdown()
    }
    if let port = metricsExportPort {
      do {
        metricsServer = try serveMetrics(host: nodeIP, port: port, node: nm, control: control, group: group)
      } catch {
        abandon()
        throw SwiftrayError(.invalidArgument, "cannot serve metrics on \(nodeIP):\(port): \(error). Is the port taken? "
          + "Use --metrics-export-port 0 for a free one.")
      }
      node.metricsExportPort = Int32(metricsServer?.port ?? 0)
    }
    if let port = agentPort {
      do {
        // Every interface: kubelet probes come to localhost, others to the pod's address.
        agentServer = try blockingAwait {
          try await HTTPServer.serve(host: "0.0.0.0", port: port, group: group) { r in AgentHealth.answer(r.path, nm.agentHealthSample()) }
        }
      } catch {
        abandon()
        throw SwiftrayError(.invalidArgument, "cannot serve the health endpoints on port \(port) (--dashboard-agent-listen-port): "
          + "\(error). Is the port taken?")
      }
    }
    if let d = dashboard, let control {
      // The head runs submitted jobs' drivers beside itself, joined through its session.
      let manager = JobManager(storage: control.storage, node: nm, address: session, environment: workerEnvironment)
      try? blockingAwait(timeout: .seconds(30)) { try await manager.restore() }
      jobs = manager
      do {
        dashboardServer = try serveDashboard(d, control: control, auth: auth, jobs: manager, group: group, warn: warn)
      } catch {
        abandon()
        throw SwiftrayError(.invalidArgument, "cannot serve the dashboard on \(d.host):\(d.port): \(error). Is the port taken? "
          + "Use --dashboard-port 0 for a free one, or --include-dashboard false.")
      }
    }
    let registration = node
    let c = try ControlPlane.connect(controlEP, group: group, auth: auth)
    defer { c.shutdown() }
    do {
      _ = try blockingAwait(timeout: .seconds(30)) {
        var req = Swiftray_RegisterNodeRequest()
        req.node = registration
        return try await c.controlService.registerNode(req)
      }
    } catch {
      abandon()
      let e = ControlPlane.error(error, calling: "RegisterNode", at: controlEP)
      if e.code == .authentication { throw e }
      // The head's own words when it refused this node (it cannot reach it back).
      if let rpc = error as? RPCError, rpc.code == .failedPrecondition { throw SwiftrayError(.invalidArgument, rpc.message) }
      throw SwiftrayError(.system, "cannot register this node with the ControlService at \(controlEP): \(error)")
    }
    nm.registration.withLock { $0 = registration }
    // Where this node's cluster is, for drivers that join through the session directory.
    try? controlEP.description.write(toFile: session + "/control.address", atomically: true, encoding: .utf8)
    nm.start()
    return LocalCluster(sessionDir: session, nodeID: nodeID, nodeManager: nm, control: control,
                        controlEndpoint: controlEP, servers: servers, node: registration, metricsServer: metricsServer,
                        dashboardServer: dashboardServer, agentServer: agentServer, jobs: jobs)
  }

  /// The head's web UI (`Dashboard`): on the asked port, or on a free one when the
  /// default is taken (another cluster on this machine).
  static func serveDashboard(_ d: Dashboard.Options, control: ControlService, auth: ClusterAuth, jobs: JobManager?,
                             group: MultiThreadedEventLoopGroup, warn: @Sendable (String) -> Void) throws -> HTTPServer {
    let ui = Dashboard(control: control, auth: auth, assets: d.assets, jobs: jobs)
    let handler: HTTPServer.Handler = { request in await ui.handle(request) }
    let limit: HTTPServer.BodyLimit = { ui.bodyLimit($0) }
    do {
      return try blockingAwait { try await HTTPServer.serve(host: d.host, port: d.port, group: group, bodyLimit: limit, webSocket: ui.logsTail, handler: handler) }
    } catch where d.fallBack && d.port != 0 {
      warn("port \(d.port) is taken; the dashboard serves on a free port instead (see the URL printed at start)")
      return try blockingAwait { try await HTTPServer.serve(host: d.host, port: 0, group: group, bodyLimit: limit, webSocket: ui.logsTail, handler: handler) }
    }
  }

  /// The node's `/metrics` (Prometheus text, readable without the cluster token, as
  /// Ray's: it holds counts and sizes only); `/` says where it is.
  static func serveMetrics(host: String, port: Int, node nm: NodeManager, control: ControlService?,
                           group: MultiThreadedEventLoopGroup) throws -> HTTPServer {
    var head: (@Sendable () -> HeadMetricsSample)?
    if let control { head = { control.headMetrics() } }
    let exporter = MetricsExporter(node: { nm.metricsSample(nodeIP: host) }, head: head, user: control?.userMetrics)
    let handler: HTTPServer.Handler = { request in
      switch request.path {
      case "/metrics":
        let body = await exporter.render()
        return HTTPResponse(.ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: body)
      case "/":
        return HTTPResponse.text(.ok, "swiftray node metrics: GET /metrics")
      default:
        return HTTPResponse.text(.notFound, "no such page: \(request.path) (try /metrics)")
      }
    }
    return try blockingAwait { try await HTTPServer.serve(host: host, port: port, group: group, handler: handler) }
  }

  /// Where a node's ControlService is, from its session directory.
  public static func controlEndpoint(session: String) -> Endpoint {
    if let text = try? String(contentsOfFile: session + "/control.address", encoding: .utf8),
      let ep = Endpoint(text.trimmingCharacters(in: .whitespacesAndNewlines))
    {
      return ep
    }
    return .unix(SessionPaths.socket(session, "gcs.sock"))
  }

  /// The session directory of a live node of the cluster at `control` that runs on this
  /// machine (the earliest started), for a driver joining with "HOST:PORT".
  public static func localNodeSession(control: Endpoint, group: MultiThreadedEventLoopGroup, auth: ClusterAuth) throws -> String? {
    try allNodes(control: control, group: group, auth: auth).filter { $0.alive && FileManager.default.fileExists(atPath: SessionPaths.socket($0.sessionDir, "raylet.sock")) }
      .min { $0.startTimeMs < $1.startTimeMs }?.sessionDir
  }

  init(sessionDir: String, nodeID: NodeID, nodeManager: NodeManager, control: ControlService?,
       controlEndpoint: Endpoint, servers: [ControlPlane.Server], node: Swiftray_NodeInfo, metricsServer: HTTPServer?,
       dashboardServer: HTTPServer?, agentServer: HTTPServer? = nil, jobs: JobManager?) {
    self.sessionDir = sessionDir; self.nodeID = nodeID; self.nodeManager = nodeManager; self.control = control
    self.controlEndpoint = controlEndpoint; self.servers = servers; self.node = node; self.metricsServer = metricsServer
    self.dashboardServer = dashboardServer; self.agentServer = agentServer; self.jobs = jobs
  }

  /// Stops every worker, then the services, then removes the session directory.
  public func shutdown() {
    dashboardServer?.shutdown()
    agentServer?.shutdown()
    jobs?.shutdown()
    metricsServer?.shutdown()
    nodeManager.shutdown()
    control?.shutdown()
    for s in servers.reversed() { s.shutdown() }
    nodeManager.store.close()
    SessionPaths.removeSession(sessionDir)
  }
}
