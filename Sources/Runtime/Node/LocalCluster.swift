import Foundation
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
  let control: ControlService
  let controlServer: ControlPlane.Server
  let nodeServer: ControlPlane.Server

  public var controlEndpoint: Endpoint { controlServer.endpoint }
  public var nodeManagerEndpoint: Endpoint { nodeServer.endpoint }

  /// A fresh session directory under `root` (Ray: /tmp/ray/session_<time>_<pid>).
  public static func makeSessionDir(root: String = NSTemporaryDirectory() + "swiftray") throws -> String {
    removeStaleSessions(root: root)
    let f = DateFormatter()
    f.dateFormat = "yyyy-MM-dd_HH-mm-ss"
    let dir = "\(root)/session_\(f.string(from: Date()))_\(getpid())_\(String(UInt32.random(in: 0 ... .max), radix: 16))"
    try FileManager.default.createDirectory(atPath: dir + "/sockets", withIntermediateDirectories: true)
    return dir
  }

  /// The sessions under `root` by name, with the pid of the process that started
  /// each (`session_<date>_<time>_<pid>_<rand>`) and whether it still runs.
  public static func sessions(root: String = NSTemporaryDirectory() + "swiftray") -> [(name: String, alive: Bool)] {
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
  public static func newestLiveSession(root: String = NSTemporaryDirectory() + "swiftray") -> String? {
    let fm = FileManager.default
    let live = sessions(root: root).filter(\.alive).map { root + "/" + $0.name }
      .filter { fm.fileExists(atPath: $0 + "/sockets/gcs.sock") && fm.fileExists(atPath: $0 + "/sockets/raylet.sock") }
    func created(_ p: String) -> Date {
      (try? fm.attributesOfItem(atPath: p + "/sockets/gcs.sock")[.modificationDate] as? Date) ?? .distantPast
    }
    return live.max { (created($0), $0) < (created($1), $1) }
  }

  /// The NodeManager's own description (node id, resources), asked over its socket.
  public static func nodeInfo(nodeManager: Endpoint, group: MultiThreadedEventLoopGroup) throws -> Swiftray_NodeInfo {
    let c = try ControlPlane.connect(nodeManager, group: group)
    defer { c.shutdown() }
    return try blockingAwait(timeout: .seconds(10)) {
      do { return try await Swiftray_NodeManagerService.Client(wrapping: c.client).getNodeStats(Swiftray_GetNodeStatsRequest()).node }
      catch { throw ControlPlane.error(error, calling: "GetNodeStats", at: nodeManager) }
    }
  }

  /// Session directories of processes that were killed before they could clean up.
  static func removeStaleSessions(root: String) {
    for (name, alive) in sessions(root: root) where !alive {
      try? FileManager.default.removeItem(atPath: root + "/" + name)
    }
  }

  public static func start(resources: ResourceSet, config: Config, workerExecutable: String,
                           workerEnvironment: [String: String], prestartWorkers: Int,
                           objectStoreMemory: Int? = nil, spillDirectory: String? = nil,
                           group: MultiThreadedEventLoopGroup, root: String = NSTemporaryDirectory() + "swiftray",
                           warn: @escaping @Sendable (String) -> Void = { CoreWorker.writeStderr("(swiftray) WARNING: \($0)\n") }) throws -> LocalCluster {
    let session = try makeSessionDir(root: root)
    let store = try ObjectStore(
      options: .init(capacity: objectStoreMemory ?? ObjectStore.defaultCapacity, sessionDir: session,
                     spillDirectory: spillDirectory),
      group: group, warn: warn)
    let nodeID = NodeID.random()
    let control = ControlService(group: group)
    let controlEP = Endpoint.unix(session + "/sockets/gcs.sock")
    let controlServer = try blockingAwait { try await ControlPlane.serve([control], at: controlEP, group: group) }
    let nm = NodeManager(options: .init(
      nodeID: nodeID, resources: resources, sessionDir: session, workerExecutable: workerExecutable,
      workerEnvironment: workerEnvironment, controlEndpoint: controlEP, config: config,
      prestartWorkers: prestartWorkers), store: store)
    let nmEP = nm.endpoint
    let nodeServer = try blockingAwait { try await ControlPlane.serve([nm], at: nmEP, group: group) }
    var node = nm.nodeInfo
    node.startTimeMs = Int64(Date().timeIntervalSince1970 * 1000)
    let registration = node
    let c = try ControlPlane.connect(controlEP, group: group)
    defer { c.shutdown() }
    _ = try blockingAwait {
      var req = Swiftray_RegisterNodeRequest()
      req.node = registration
      return try await Swiftray_ControlService.Client(wrapping: c.client).registerNode(req)
    }
    nm.start()
    return LocalCluster(sessionDir: session, nodeID: nodeID, nodeManager: nm, control: control,
                        controlServer: controlServer, nodeServer: nodeServer)
  }

  init(sessionDir: String, nodeID: NodeID, nodeManager: NodeManager, control: ControlService,
       controlServer: ControlPlane.Server, nodeServer: ControlPlane.Server) {
    self.sessionDir = sessionDir; self.nodeID = nodeID; self.nodeManager = nodeManager; self.control = control
    self.controlServer = controlServer; self.nodeServer = nodeServer
  }

  /// Stops every worker, then the services, then removes the session directory.
  public func shutdown() {
    nodeManager.shutdown()
    nodeServer.shutdown()
    control.shutdown()
    controlServer.shutdown()
    nodeManager.store.close()
    try? FileManager.default.removeItem(atPath: sessionDir)
  }
}
