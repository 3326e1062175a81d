import ArgumentParser
import Foundation
import GRPCCore
import NIOPosix
import Runtime
import RuntimeProto

/// `swiftray logs`: the log files of any node of the cluster — what each worker printed
/// (`worker-<id>-<pid>.out|.err`) and the node daemon's own `daemon.log` — listed, or
/// one printed (its last lines, then what it gains with `--follow`). The files live on
/// their nodes; each is read through its node's NodeManager, with the cluster token.
struct Logs: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List the cluster's log files, or print one: by name, or a worker's by --pid, --actor-id or --task-id (Ray's `ray logs`).")
  @Argument(help: "A file name or glob (e.g. 'worker-*.err'); none: list the files.")
  var glob: String?
  @Option(name: .customLong("node-id"), help: "Only this node (hex id, as `swiftray list nodes` shows).")
  var nodeID: String?
  @Option(name: .customLong("actor-id"), help: "The output of the worker that hosts (or hosted) this actor.")
  var actorID: String?
  @Option(name: .customLong("task-id"), help: "The output of the worker that ran this task (its latest attempt).")
  var taskID: String?
  @Option(help: "The output of the worker with this process id (with --node-id when several nodes have one).")
  var pid: Int32?
  @Flag(help: "A worker's standard error (.err) rather than its standard output (.out).")
  var err = false
  @Flag(name: [.short, .long], help: "Keep printing what the file gains until interrupted.")
  var follow = false
  @Option(help: "Lines from the end to print first (0: the whole file, up to 16 MiB).")
  var tail: Int = 1000
  @Option(help: "The cluster: HOST:PORT of its head, or a session directory (default: the newest on this machine).")
  var address: String?

  func validate() throws {
    guard (0...1_000_000).contains(tail) else { throw ValidationError("--tail must be 0 ... 1000000") }
    guard [actorID, taskID, pid.map(String.init)].compactMap({ $0 }).count <= 1 else {
      throw ValidationError("give one of --actor-id, --task-id and --pid")
    }
    if let pid, pid <= 0 { throw ValidationError("--pid must be a process id (> 0)") }
    if glob != nil && (actorID != nil || taskID != nil || pid != nil) {
      throw ValidationError("give a file name or one of --actor-id, --task-id, --pid, not both")
    }
  }

  func run() throws {
    let target = try ClusterTarget(address)
    let auth = try ClusterAuth.required(for: "read the logs of the cluster at \(target.control)", session: target.session)
    let clients = ControlClients(group: .singletonMultiThreadedEventLoopGroup, auth: auth)
    defer { clients.shutdown() }
    var nodes = try allNodes(target, auth: auth).filter(\.alive)
    if let nodeID {
      nodes = nodes.filter { Hex.encode($0.nodeID).hasPrefix(nodeID.lowercased()) }
      guard !nodes.isEmpty else { throw ValidationError("no live node with id \(nodeID) (`swiftray list nodes` shows them)") }
    }
    // A worker's process first: by task or actor (from the head's tables), or as given.
    var wanted: (pid: Int32, node: String?)?
    if let taskID { wanted = try workerOf(target, table: "tasks", key: "task_id", id: taskID) }
    if let actorID { wanted = try workerOf(target, table: "actors", key: "actor_id", id: actorID) }
    if let pid { wanted = (pid, nil) }
    if let node = wanted?.node {
      nodes = nodes.filter { Hex.encode($0.nodeID) == node }
      guard !nodes.isEmpty else { throw ValidationError("the worker ran on node \(node), which is no longer alive: its logs are in that machine's session folder") }
    }
    let listings = try nodes.map { n in (n, try list(n, clients)) }
    let matches: [(Swiftray_NodeInfo, String)] = listings.flatMap { n, files in
      files.map(\.name).filter { name in
        if let wanted {
          guard let p = LogFileName.parse(name) else { return false }
          return p.pid == wanted.pid && p.isErr == err && p.rotation == 0
        }
        return glob.map { fnmatch($0, name, 0) == 0 } ?? true
      }.map { (n, $0) }
    }
    if glob == nil && wanted == nil {
      printListing(listings)
      return
    }
    guard !matches.isEmpty else {
      let what = wanted.map { "worker pid \($0.pid)" + (err ? " (.err)" : " (.out)") } ?? "'\(glob ?? "")'"
      throw ValidationError("no log file of \(what) on \(nodes.count) node(s); `swiftray logs` lists them")
    }
    guard matches.count == 1 else {
      print("\(matches.count) files match; name one (with --node-id when several nodes have it):")
      for (n, name) in matches { print("  \(Hex.encode(n.nodeID).prefix(12))  \(name)") }
      throw ExitCode(1)
    }
    try stream(matches[0].0, matches[0].1, clients)
  }

  func allNodes(_ target: ClusterTarget, auth: ClusterAuth) throws -> [Swiftray_NodeInfo] {
    let c = try ControlPlane.connect(target.control, group: .singletonMultiThreadedEventLoopGroup, auth: auth)
    defer { c.shutdown() }
    let control = target.control
    do {
      return try blockingAwait(timeout: .seconds(30)) {
        try await Swiftray_ControlService.Client(wrapping: c.client).getAllNodes(.init()).nodes
      }
    } catch {
      throw ValidationError(ControlPlane.error(error, calling: "GetAllNodes", at: control).message)
    }
  }

  /// The process (and node) of a task's latest attempt or an actor's worker, from the
  /// head's tables; an actor no longer alive is found through its creation task.
  func workerOf(_ target: ClusterTarget, table: String, key: String, id: String) throws -> (pid: Int32, node: String?) {
    func rows(_ table: String, _ filters: [String]) throws -> [[(String, StateValue)]] {
      var req = Swiftray_ListStateRequest()
      req.kind = table
      req.filters = try stateFilters(filters)
      req.limit = 1000
      req.detail = true
      guard case .array(let rows)? = StateJSON.parse(try target.query(req).json) else { return [] }
      return rows.compactMap { if case .object(let kv) = $0 { return kv }; return nil }
    }
    func pidAndNode(_ r: [(String, StateValue)], pidKey: String) -> (Int32, String)? {
      let get = { (k: String) in r.first { $0.0 == k }?.1 ?? .null }
      guard case .int(let p) = get(pidKey), let pid = Int32(exactly: p), pid > 0, case .string(let node) = get("node_id") else { return nil }
      return (pid, node)
    }
    if table == "actors", let r = try rows("actors", ["actor_id=\(id)"]).first, let found = pidAndNode(r, pidKey: "pid") {
      return found
    }
    let filters = table == "actors" ? ["actor_id=\(id)", "type=ACTOR_CREATION_TASK"] : ["task_id=\(id)"]
    // Newest attempt first (the table answers newest first).
    for r in try rows("tasks", filters) {
      if let found = pidAndNode(r, pidKey: "worker_pid") { return found }
    }
    throw ValidationError("no worker known for \(table == "actors" ? "actor" : "task") \(id): it has not run yet, "
      + "or the head no longer keeps it (task_events_max_num_task_in_gcs)")
  }

  func list(_ n: Swiftray_NodeInfo, _ clients: ControlClients) throws -> [Swiftray_LogFileInfo] {
    let address = NodeTable.address(of: n)
    guard let c = clients.client(address) else { throw ValidationError("cannot reach node \(Hex.encode(n.nodeID)) at \(address)") }
    do {
      return try blockingAwait(timeout: .seconds(30)) {
        try await Swiftray_NodeManagerService.Client(wrapping: c.client).listLogs(.init()).files
      }
    } catch {
      throw ValidationError("node \(Hex.encode(n.nodeID).prefix(12)) at \(address) did not list its logs: \(error)")
    }
  }

  func printListing(_ listings: [(Swiftray_NodeInfo, [Swiftray_LogFileInfo])]) {
    for (n, files) in listings {
      print("Node \(Hex.encode(n.nodeID)) (\(n.ipAddress)): \(files.count) file(s)")
      for f in files { print("  \(f.name)  \(f.size) B") }
    }
    print("\nPrint one: swiftray logs NAME [--node-id ID] [--tail N] [--follow]; a worker's: --pid, --actor-id or --task-id.")
  }

  /// The file's tail, then (with --follow) what it gains, written as it comes.
  func stream(_ n: Swiftray_NodeInfo, _ name: String, _ clients: ControlClients) throws {
    let address = NodeTable.address(of: n)
    guard let c = clients.client(address) else { throw ValidationError("cannot reach node \(Hex.encode(n.nodeID)) at \(address)") }
    var req = Swiftray_GetLogRequest()
    req.name = name
    req.tailLines = Int32(tail)
    req.follow = follow
    let request = req
    if follow { FileHandle.standardError.write(Data("(following \(name) on node \(Hex.encode(n.nodeID).prefix(12)); Ctrl-C stops)\n".utf8)) }
    do {
      // A followed file has no end; its tail alone is bounded like any call.
      try blockingAwait(timeout: follow ? nil : .seconds(120)) {
        try await Swiftray_NodeManagerService.Client(wrapping: c.client).getLog(request) { response in
          for try await chunk in response.messages { FileHandle.standardOutput.write(chunk.data) }
        }
      }
    } catch let e as RPCError where e.code == .notFound || e.code == .invalidArgument {
      throw ValidationError(e.message)
    } catch {
      throw ValidationError("node \(Hex.encode(n.nodeID).prefix(12)): \(error)")
    }
  }
}
