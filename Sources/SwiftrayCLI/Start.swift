import ArgumentParser
import Foundation
import NIOPosix
import Runtime
import RuntimeProto

/// `swiftray start --head | --address=HOST:PORT`: a node daemon (no Python in it) hosting
/// a NodeManager and, on the head, the ControlService; drivers join with
/// `init(address=...)`. Without `--block` it starts the daemon in the background and
/// returns once the node is registered.
struct Start: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Start a node daemon (the head of a cluster on this machine).")
  @Flag(help: "Start the head node (ControlService and NodeManager).")
  var head = false
  @Option(help: "Join the cluster whose head listens at HOST:PORT.")
  var address: String?
  @Option(help: "TCP port of the head's ControlService (default 6379; 0 picks a free one).")
  var port: Int = 6379
  @Option(name: .customLong("node-ip-address"), help: "The IP address other nodes reach this node at (default: the address of the interface that routes to the head; on the head, of its default route, else 127.0.0.1).")
  var nodeIPAddress: String?
  @Option(name: .customLong("num-cpus"), help: "CPUs of this node (default: all).")
  var numCPUs: Double?
  @Option(name: .customLong("num-gpus"), help: "GPUs of this node (default: 0).")
  var numGPUs: Double?
  @Option(help: "Custom resources of this node as JSON, e.g. '{\"disk\": 2}'.")
  var resources: String?
  @Option(name: .customLong("object-store-memory"), help: "Bytes of the node's shared-memory object store (default 30% of the memory the node may use: its container's limit, else RAM).")
  var objectStoreMemory: Int?
  @Option(name: .customLong("temp-dir"), help: "Root of session directories (default: this user's $TMPDIR/swiftray-<uid>, 0700).")
  var tempDir: String?
  @Option(name: .customLong("redis-password"), help: "Password of the Redis in SWIFTRAY_REDIS_ADDRESS (head only; better: SWIFTRAY_REDIS_PASSWORD or --redis-password-file).")
  var redisPassword: String?
  @Option(name: .customLong("redis-password-file"), help: "A file holding the Redis password (head only).")
  var redisPasswordFile: String?
  @Option(name: .customLong("metrics-export-port"), help: "Port of this node's Prometheus endpoint, http://NODE-IP:PORT/metrics (default 0: a free one, shown by `start` and in `ray.nodes()` as MetricsExportPort).")
  var metricsExportPort: Int = 0
  @Option(name: .customLong("include-dashboard"), help: "Serve the web dashboard on the head (true or false; default true).")
  var includeDashboard: Bool = true
  @Option(name: .customLong("dashboard-host"), help: "Address the dashboard listens on (default 127.0.0.1; 0.0.0.0 for every interface).")
  var dashboardHost: String = "127.0.0.1"
  @Option(name: .customLong("dashboard-port"), help: "Port of the dashboard (default 8265, or a free one when 8265 is taken; 0: a free one).")
  var dashboardPort: Int?
  @Flag(help: "Stay in the foreground until stopped (SIGTERM/SIGINT).")
  var block = false
  @Option(name: .customLong("dashboard-agent-listen-port"), help: "Serve this node's health endpoints (/api/healthz, /api/local_raylet_healthz; no token needed, nothing else shown) on this port of every interface, as Ray's dashboard agent (KubeRay probes 52365). Default: none.")
  var dashboardAgentListenPort: Int?
  @Option(help: "Bytes of memory this node offers to tasks and actors that ask for `memory` (default: all it may use: its container's limit, else RAM).")
  var memory: Int?
  @Option(help: "This node's labels, KEY=VALUE pairs separated by commas (shown by `list nodes` and `nodes()`).")
  var labels: String?
  @Flag(name: .customLong("no-monitor"), help: "Accepted for Ray's command line: swiftray runs no autoscaler monitor.")
  var noMonitor = false
  /// Options of Ray's `ray start` that swiftray does not use, accepted only when run as
  /// `ray` (KubeRay passes its own and users' `rayStartParams`: an unknown one must not
  /// fail the pod); as `swiftray start`, a typo is an error.
  @Argument(parsing: .allUnrecognized, help: .hidden)
  var otherOptions: [String] = []

  func validate() throws {
    if head == (address != nil) { throw ValidationError("give either --head (start a cluster) or --address=HOST:PORT (join one)") }
    if let a = address, Self.endpoint(a) == nil { throw ValidationError("--address must be HOST:PORT, got \(a)") }
    if port < 0 || port > 65535 { throw ValidationError("--port must be 0-65535") }
    if metricsExportPort < 0 || metricsExportPort > 65535 { throw ValidationError("--metrics-export-port must be 0-65535") }
    if let p = dashboardPort, p < 0 || p > 65535 { throw ValidationError("--dashboard-port must be 0-65535") }
    if let p = dashboardAgentListenPort, p < 0 || p > 65535 { throw ValidationError("--dashboard-agent-listen-port must be 0-65535") }
    if let m = memory, !(m >= 0 && Double(m) <= ResourceSet.maxUnits) {
      throw ValidationError("--memory must be a number of bytes, 0 ... \(Int64(ResourceSet.maxUnits))")
    }
    do { _ = try NodeLabels.parse(labels ?? "") } catch { throw ValidationError(error.message) }
    if !otherOptions.isEmpty {
      guard RayCommandLine.invokedAsRay else {
        throw ValidationError("unknown option(s) \(otherOptions.joined(separator: " ")) (see `swiftray start --help`)")
      }
      // Once, by the command the user ran (the daemon it starts runs with the same words).
      if !block || ProcessInfo.processInfo.environment["SWIFTRAY_START_READY_FILE"] == nil {
        for note in RayCommandLine.ignoredNotes(otherOptions) { CoreWorker.writeStderr(note + "\n") }
      }
    }
    if !NodeAddress.isIPAddress(dashboardHost) {
      throw ValidationError("--dashboard-host must be an IP address (127.0.0.1, 0.0.0.0, …), got \(dashboardHost)")
    }
    if let ip = nodeIPAddress, !NodeAddress.isIPAddress(ip) {
      throw ValidationError("--node-ip-address must be an IPv4 or IPv6 address of this machine, got \(ip)")
    }
    let most = Int64(ResourceSet.maxUnits)
    if let n = numCPUs, !(n >= 0 && n <= ResourceSet.maxUnits) { throw ValidationError("--num-cpus must be 0 ... \(most)") }
    if let n = numGPUs, !(n >= 0 && n <= ResourceSet.maxUnits) { throw ValidationError("--num-gpus must be 0 ... \(most)") }
    if let m = objectStoreMemory, m < (1 << 20) { throw ValidationError("--object-store-memory must be at least 1 MiB") }
    _ = try customResources()
  }

  func customResources() throws -> [String: Double] {
    guard let resources else { return [:] }
    guard let data = resources.data(using: .utf8),
      let obj = try? JSONDecoder().decode([String: Double].self, from: data)
    else { throw ValidationError("--resources must be a JSON object of name to number, e.g. '{\"disk\": 2}', got \(resources)") }
    var out: [String: Double] = [:]
    for (k, n) in obj {
      guard n.isFinite, n >= 0, n <= ResourceSet.maxUnits else {
        throw ValidationError("--resources: '\(k)' must be a number in 0 ... \(Int64(ResourceSet.maxUnits))")
      }
      if k == "CPU" || k == "GPU" { throw ValidationError("use --num-cpus/--num-gpus instead of CPU/GPU in --resources") }
      out[k] = n
    }
    return out
  }

  static func endpoint(_ address: String) -> Endpoint? {
    guard let colon = address.lastIndex(of: ":"), let p = Int(address[address.index(after: colon)...]), p > 0 else { return nil }
    return .tcp(host: String(address[..<colon]), port: p)
  }

  var root: String { SessionPaths.sessionsRoot(tempDir: tempDir) }

  /// The token this node uses: the one found (`ClusterAuth.resolve`); a head makes one
  /// in ~/.swiftray/auth_token when there is none; a joining node must have the head's.
  func clusterAuth(announce: Bool) throws -> ClusterAuth {
    if let auth = try ClusterAuth.resolve() {
      if !auth.isEnabled && announce {
        CoreWorker.writeStderr("(swiftray) WARNING: authentication is disabled (SWIFTRAY_AUTH_MODE=disabled): anyone "
          + "who can reach this node's ports can run code as \(NSUserName()).\n")
      }
      return auth
    }
    guard head else {
      throw ValidationError("No cluster token was found to join the cluster at \(address ?? ""). "
        + ClusterAuth.whereToLook())
    }
    let path = ClusterAuth.defaultPath()
    if try ClusterAuth.writeTokenFile(ClusterAuth.generate(), to: path), announce {
      print("Generated this cluster's token in \(path) (copy it to the other machines: `swiftray get-auth-token`).")
    }
    guard let auth = try ClusterAuth.resolve() else { throw ValidationError("cannot read the cluster token at \(path)") }
    return auth
  }

  /// The Redis password: `--redis-password-file`, `SWIFTRAY_REDIS_PASSWORD` (Ray's
  /// `REDIS_PASSWORD` too), or `--redis-password`.
  func redisPasswordGiven() throws -> String? {
    if let path = redisPasswordFile {
      guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw ValidationError("cannot read the Redis password file \(path)")
      }
      return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    let env = ProcessInfo.processInfo.environment
    return env["SWIFTRAY_REDIS_PASSWORD"].flatMap { $0.isEmpty ? nil : $0 }
      ?? env["REDIS_PASSWORD"].flatMap { $0.isEmpty ? nil : $0 } ?? redisPassword
  }

  func run() throws {
    if block { return try serve() }
    // Found (or made) before the daemon starts, so a missing token fails here, clearly.
    _ = try clusterAuth(announce: true)
    // The daemon is this same command with --block, in its own session, writing where
    // it lives to a file we wait for.
    // Its start-up files live in this user's private folder, under names no one else can
    // guess or plant a link at (created with O_EXCL|O_NOFOLLOW).
    let dir = try SessionPaths.privateRoot()
    let tag = "start-\(getpid())-\(String(UInt64.random(in: 0 ... .max), radix: 16))"
    let ready = "\(dir)/\(tag).ready", logPath = "\(dir)/\(tag).log"
    defer { unlink(ready) }
    var args = Array(CommandLine.arguments.dropFirst()) + ["--block"]
    if let i = args.firstIndex(of: "start") { args.remove(at: i) }
    var env = ProcessInfo.processInfo.environment
    env["SWIFTRAY_START_READY_FILE"] = ready
    // A password never rides on the daemon's command line (visible in /proc to everyone).
    if let i = args.firstIndex(of: "--redis-password"), i + 1 < args.count {
      env["SWIFTRAY_REDIS_PASSWORD"] = args[i + 1]
      args.removeSubrange(i...(i + 1))
    }
    args.removeAll { $0.hasPrefix("--redis-password=") }
    if let p = redisPassword, !args.contains("--redis-password") { env["SWIFTRAY_REDIS_PASSWORD"] = p }
    try SessionPaths.makePrivate(root)
    let log = open(logPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard log >= 0 else { throw ValidationError("cannot create \(logPath): \(String(cString: strerror(errno)))") }
    close(log)
    let pid = try spawnDaemon(executable: selfExecutable(), arguments: ["start"] + args, environment: env, log: logPath)
    let deadline = Date().addingTimeInterval(60)
    while Date() < deadline {
      if let text = try? String(contentsOfFile: ready, encoding: .utf8), !text.isEmpty {
        let session = text.trimmingCharacters(in: .whitespacesAndNewlines)
        unlink(logPath)
        let parts = session.split(separator: "\n", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
        let cluster = parts.count > 1 ? parts[1] : ""
        let dashboard = parts.count > 3 && !parts[3].isEmpty ? "\nDashboard (login link, keep it private): \(parts[3])" : ""
        let metrics = (parts.count > 2 && !parts[2].isEmpty ? "\nMetrics (Prometheus): \(parts[2])" : "") + dashboard
        if head {
          print("""
            swiftray head node started (pid \(pid)).
            Session: \(parts[0])
            Address: \(cluster)\(metrics)
            To connect from Python on this machine:
              import swiftray
              swiftray.init(address="auto")
            To add a node (on this or another machine): swiftray start --address=\(cluster)
            To stop it: swiftray stop
            """)
        } else {
          print("""
            swiftray node started (pid \(pid)) and joined the cluster at \(cluster).
            Session: \(parts[0])\(metrics)
            To stop it: swiftray stop
            """)
        }
        return
      }
      if !LocalCluster.processAlive(pid) {
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        throw ValidationError("the node daemon exited during start-up:\n\(log.suffix(2000))")
      }
      usleep(20_000)
    }
    throw ValidationError("the node daemon did not come up within 60 s (log: \(logPath))")
  }

  /// `--node-ip-address`, or the address of the interface that routes to the head.
  func advertisedAddress() -> String {
    if let nodeIPAddress { return nodeIPAddress }
    guard let a = address, case .tcp(let host, let port)? = Self.endpoint(a) else { return NodeAddress.detect(head: nil) }
    return NodeAddress.detect(head: (host, port))
  }

  /// Runs the node in this process until SIGTERM/SIGINT.
  func serve() throws {
    TasksOnEventLoops.install()
    // Blocked before any thread starts (threads inherit the mask; workers get a clean
    // one from the spawn), then taken synchronously below: a clean stop on TERM/INT.
    var stopSignals = sigset_t()
    sigemptyset(&stopSignals)
    sigaddset(&stopSignals, SIGTERM)
    sigaddset(&stopSignals, SIGINT)
    pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
    var units = try customResources()
    units["CPU"] = numCPUs ?? Double(ProcessInfo.processInfo.activeProcessorCount)
    if let g = numGPUs, g > 0 { units["GPU"] = g }
    units["memory"] = memory.map(Double.init) ?? Double(MachineMemory.current)
    let config = try Config.resolve()
    let auth = try clusterAuth(announce: false)
    let group = MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup
    // A head with SWIFTRAY_REDIS_ADDRESS keeps the ControlService's tables in that Redis
    // (and finds them there after a restart); without it they live in memory, as Ray's.
    var storage: (any ControlStorage)? = nil
    // (KubeRay's GCS fault tolerance sets Ray's name for it, RAY_REDIS_ADDRESS.)
    let env = ProcessInfo.processInfo.environment
    if head, let redis = [env["SWIFTRAY_REDIS_ADDRESS"], env["RAY_REDIS_ADDRESS"]].compactMap({ $0 }).first(where: { !$0.isEmpty }) {
      let r = try RedisControlStorage(address: redis, password: try redisPasswordGiven(), group: group,
                                        commandTimeoutMs: config.redisCommandTimeoutMs)
      try blockingAwait(timeout: .seconds(10)) { try await r.check() }
      storage = r
    }
    let cluster = try LocalCluster.start(
      resources: ResourceSet(units: units.filter { $0.value > 0 }), config: config,
      workerExecutable: selfExecutable(), workerEnvironment: ProcessInfo.processInfo.environment,
      prestartWorkers: Int(units["CPU"] ?? 0), objectStoreMemory: objectStoreMemory, group: group,
      root: root, role: address.flatMap(Self.endpoint).map { .worker(control: $0) } ?? .head(port: port),
      nodeIP: advertisedAddress(), controlStorage: storage, auth: auth, metricsExportPort: metricsExportPort,
      dashboard: head && includeDashboard
        ? Dashboard.Options(host: dashboardHost, port: dashboardPort ?? 8265,
                            assets: Dashboard.Options.assets(besideExecutable: selfExecutable()), fallBack: dashboardPort == nil)
        : nil,
      agentPort: dashboardAgentListenPort, labels: try NodeLabels.parse(labels ?? ""))
    let clusterAddress = address ?? cluster.controlAddress ?? ""
    try? "\(getpid())\n".write(toFile: cluster.sessionDir + "/daemon.pid", atomically: true, encoding: .utf8)
    DaemonIdentity.record(in: cluster.sessionDir)
    // From here on the daemon's own output goes to its session.
    let log = open(cluster.sessionDir + "/daemon.log", O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
    if log >= 0, ProcessInfo.processInfo.environment["SWIFTRAY_START_READY_FILE"] != nil { dup2(log, 1); dup2(log, 2) }
    if let ready = ProcessInfo.processInfo.environment["SWIFTRAY_START_READY_FILE"] {
      let metrics = cluster.metricsServer.map { "http://\(NodeAddress.hostForURL($0.host)):\($0.port)/metrics" } ?? ""
      let dashboard = cluster.dashboardServer.map { Dashboard.loginURL(host: $0.host, port: $0.port, auth: auth) } ?? ""
      try? [cluster.sessionDir, clusterAddress, metrics, dashboard].joined(separator: "\n")
        .write(toFile: ready, atomically: true, encoding: .utf8)
    } else {
      print("swiftray node running; session \(cluster.sessionDir), cluster address \(clusterAddress). "
        + "Connect with swiftray.init(address=\"auto\").")
    }
    // A joined node whose head is gone stops as Ray's raylet does, rather than keep
    // workers for a cluster that no longer exists.
    cluster.nodeManager.controlLost.withLock { h in
      h = { reason in
        CoreWorker.writeStderr("swiftray node stopping: \(reason).\n")
        kill(getpid(), SIGTERM)
      }
    }
    var received: Int32 = 0
    sigwait(&stopSignals, &received)
    cluster.shutdown()
  }
}

/// `swiftray stop`: stops the node daemons started on this machine (and their workers).
struct Stop: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Stop the node daemons started on this machine.")
  @Flag(help: "Kill them at once (SIGKILL) instead of a clean stop.")
  var force = false
  @Option(name: .customLong("grace-period"), help: "Seconds to wait for a clean stop before killing.")
  var gracePeriod: Double = 16
  @Option(name: .customLong("temp-dir"), help: "Root of session directories (default: this user's $TMPDIR/swiftray-<uid>, 0700).")
  var tempDir: String?

  func run() throws {
    let root = SessionPaths.sessionsRoot(tempDir: tempDir)
    var pids: [Int32] = []
    for (name, alive) in LocalCluster.sessions(root: root) where alive {
      // A node daemon's session (a driver's local cluster has none to stop), and only
      // while its daemon is still the process the session recorded.
      guard FileManager.default.fileExists(atPath: "\(root)/\(name)/daemon.pid") else { continue }
      let (pid, why) = DaemonIdentity.verifiedPid(session: "\(root)/\(name)")
      if let pid { pids.append(pid) } else if let why { print("Skipping session \(name): \(why).") }
    }
    guard !pids.isEmpty else {
      print("No swiftray node daemon is running on this machine.")
      return
    }
    for p in pids { kill(p, force ? SIGKILL : SIGTERM) }
    let deadline = Date().addingTimeInterval(force ? 5 : gracePeriod)
    while Date() < deadline && pids.contains(where: LocalCluster.processAlive) { usleep(50_000) }
    let left = pids.filter(LocalCluster.processAlive)
    for p in left { kill(p, SIGKILL) }
    print("Stopped \(pids.count) swiftray node daemon(s)\(left.isEmpty ? "" : " (\(left.count) killed after the grace period)").")
  }
}

func selfExecutable() -> String {
  (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
}

/// Starts `executable` detached from this terminal (its own session), output to `log`.
func spawnDaemon(executable: String, arguments: [String], environment: [String: String], log: String) throws -> Int32 {
  var fileActions: posix_spawn_file_actions_t = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&fileActions)
  defer { posix_spawn_file_actions_destroy(&fileActions) }
  posix_spawn_file_actions_addopen(&fileActions, 0, "/dev/null", O_RDONLY, 0)
  posix_spawn_file_actions_addopen(&fileActions, 1, log, O_WRONLY | O_APPEND | O_NOFOLLOW, 0)
  posix_spawn_file_actions_adddup2(&fileActions, 1, 2)
  var attr: posix_spawnattr_t = posix_spawnattr_t()
  posix_spawnattr_init(&attr)
  defer { posix_spawnattr_destroy(&attr) }
  // POSIX_SPAWN_SETSID (glibc 0x80) is not imported into Swift.
  posix_spawnattr_setflags(&attr, Int16(0x80))
  let argv = ([executable] + arguments).map { strdup($0) } + [nil]
  let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
  defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
  var pid: pid_t = 0
  let rc = posix_spawn(&pid, executable, &fileActions, &attr, argv, envp)
  guard rc == 0 else { throw ValidationError("cannot start the node daemon: \(String(cString: strerror(rc)))") }
  return pid
}

/// `swiftray status`: every node of the cluster with its resources used/total, and the
/// demand waiting for resources.
struct Status: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Print the cluster's nodes, resources and pending demand.")
  @Option(help: "The cluster: HOST:PORT of its head, or a session directory (default: the newest on this machine).")
  var address: String?

  func run() throws {
    let target = try ClusterTarget(address)
    let control = target.control
    let auth = try ClusterAuth.required(for: "ask the cluster at \(control) for its status", session: target.session)
    let state = try LocalCluster.clusterState(control: control, group: .singletonMultiThreadedEventLoopGroup, groups: true, auth: auth)
    print(StatusReport.format(state.nodes, groups: state.groups))
  }
}

enum StatusReport {
  static func amount(_ v: Double, _ k: String) -> String {
    if k == ResourceSet.memory { return String(format: "%.1f GiB", v / 1_073_741_824) }
    return v == v.rounded() ? String(Int(v)) : String(format: "%.2f", v)
  }

  /// Nodes with what is used of their resources (bundles reserved for placement groups
  /// count as used, and are listed per group below), pending demand, and each group.
  static func format(_ nodes: [Swiftray_NodeInfo], groups: [Swiftray_PlacementGroupInfo] = []) -> String {
    var out = ["======== Cluster status ========"]
    let alive = nodes.filter(\.alive), dead = nodes.filter { !$0.alive }
    out.append("Nodes: \(alive.count) alive, \(dead.count) dead")
    var demand: [String: Int] = [:]
    for n in nodes {
      let id = NodeID(binary: n.nodeID)?.hex.prefix(12) ?? "?"
      out.append("")
      out.append("Node \(id) at \(n.ipAddress) — \(n.alive ? "ALIVE" : "DEAD: \(n.deathDetail)")")
      let total = ResourceSet(proto: n.total), free = ResourceSet(proto: n.available)
      for k in total.quantities.keys.sorted() where BundleResources.group(of: k) == nil {
        let t = total.units(k), used = t - free.units(k)
        out.append("  \(amount(used, k))/\(amount(t, k)) \(k)")
      }
      for d in n.pendingDemand { demand[ResourceSet(proto: d).description, default: 0] += 1 }
    }
    out.append("")
    out.append("Pending demand:")
    if demand.isEmpty { out.append("  (none)") }
    for (shape, count) in demand.sorted(by: { $0.key < $1.key }) { out.append("  \(shape): \(count) request(s) waiting") }
    out += placementGroups(groups.filter { $0.state != .removed }, nodes: nodes)
    return out.joined(separator: "\n")
  }

  /// Each live group: its state and, per bundle, its node and what its tasks use of it.
  static func placementGroups(_ groups: [Swiftray_PlacementGroupInfo], nodes: [Swiftray_NodeInfo]) -> [String] {
    var out = ["", "Placement groups: \(groups.isEmpty ? "(none)" : String(groups.count))"]
    let byID = Dictionary(nodes.map { ($0.nodeID, $0) }) { a, _ in a }
    for g in groups {
      let hex = PlacementGroupID(binary: g.placementGroupID)?.hex ?? "?"
      let name = g.name.isEmpty ? "" : " '\(g.name)'"
      let state: String
      switch g.state {
      case .created: state = "CREATED"
      case .rescheduling: state = "RESCHEDULING"
      case .removed: state = "REMOVED"
      default: state = g.infeasible ? "PENDING (infeasible)" : "PENDING"
      }
      out.append("  \(hex)\(name) \(g.strategy) \(state)\(g.detail.isEmpty ? "" : ": \(g.detail)")")
      for (i, b) in g.bundles.enumerated() {
        let shape = ResourceSet(proto: b)
        let node = i < g.bundleNodes.count ? g.bundleNodes[i] : Data()
        guard let n = byID[node] else {
          out.append("    bundle \(i) \(shape): not placed")
          continue
        }
        let free = ResourceSet(proto: n.available)
        let used = shape.quantities.keys.sorted().map { k in
          let t = shape.units(k)
          return "\(amount(t - free.units("\(k)_group_\(i)_\(hex)"), k))/\(amount(t, k)) \(k)"
        }
        out.append("    bundle \(i) on node \(NodeID(binary: node)?.hex.prefix(12) ?? "?"): \(used.joined(separator: ", ")) used")
      }
    }
    return out
  }
}
