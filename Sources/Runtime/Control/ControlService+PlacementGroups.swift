import Foundation
import GRPCCore
import RuntimeProto

/// Placement groups in the ControlService: the RPCs, and the loop that places waiting
/// groups. `PlacementGroupTable` decides what happens to a group, `BundlePlacement`
/// where its bundles go; this shell reserves them on the nodes in two phases (prepare
/// everywhere, then commit everywhere; a refusal or an unreachable node undoes the
/// prepared ones), so a group is reserved whole or not at all.
///
/// Threading: RPC handlers run concurrently; the placement loop runs one pass at a time
/// (`placementKicks`); state is under the service's lock, RPCs to nodes outside it.
extension ControlService {
  public func createPlacementGroup(request: Swiftray_CreatePlacementGroupRequest, context: ServerContext) async throws -> Swiftray_CreatePlacementGroupReply {
    var r = Swiftray_CreatePlacementGroupReply()
    var info = request.group
    for (i, b) in info.bundles.enumerated() { _ = try ResourceSet.checked(b, field: "bundle \(i)") }
    info.createdMs = Int64(Date().timeIntervalSince1970 * 1000)
    let result = state.withLock { $0.groups.created(info) }
    switch result {
    case .success(let actions): performGroups(actions)
    case .failure(.nameTaken(let name)):
      r.error = "The placement group name '\(name)' is already taken in namespace '\(info.namespace)'. "
        + "Use get_placement_group(name) to reach it, or pick another name."
    case .failure(.invalid(let why)): r.error = why
    }
    return r
  }

  public func removePlacementGroup(request: Swiftray_RemovePlacementGroupRequest, context: ServerContext) async throws -> Swiftray_RemovePlacementGroupReply {
    var r = Swiftray_RemovePlacementGroupReply()
    let (found, actions) = state.withLock { $0.groups.removeRequested(request.placementGroupID) }
    r.found = found
    // The view here frees the bundles at once, so a group created right after sees the
    // resources (the nodes' own return follows on the same connections).
    for case .returnBundles(let group, let nodes) in actions { bundlesFreedInView(group, on: nodes) }
    performGroups(actions)
    return r
  }

  public func getPlacementGroup(request: Swiftray_GetPlacementGroupRequest, context: ServerContext) async throws -> Swiftray_GetPlacementGroupReply {
    var r = Swiftray_GetPlacementGroupReply()
    let info = state.withLock { s in
      request.name.isEmpty ? s.groups.info(request.placementGroupID) : s.groups.named(request.name, namespace: request.namespace)
    }
    if let info { r.found = true; r.group = info }
    return r
  }

  public func getAllPlacementGroups(request: Swiftray_GetAllPlacementGroupsRequest, context: ServerContext) async throws -> Swiftray_GetAllPlacementGroupsReply {
    var r = Swiftray_GetAllPlacementGroupsReply()
    r.groups = state.withLock { $0.groups.all }
    return r
  }

  /// Answers once the group is created or removed, or cannot be placed on the nodes
  /// there are (the caller warns), or at the timeout with its state then.
  public func waitPlacementGroup(request: Swiftray_WaitPlacementGroupRequest, context: ServerContext) async throws -> Swiftray_WaitPlacementGroupReply {
    var r = Swiftray_WaitPlacementGroupReply()
    let id = request.placementGroupID
    let key = state.withLock { s -> UInt64 in let k = s.nextWatcher; s.nextWatcher += 1; return k }
    let ms = Int64(max(10, min(request.timeoutMs > 0 ? request.timeoutMs : 10_000, 60_000)))
    let info: Swiftray_PlacementGroupInfo? = await withCheckedContinuation { c in
      enum Now { case answer(Swiftray_PlacementGroupInfo?), wait }
      let now: Now = state.withLock { s in
        guard let info = s.groups.info(id) else { return .answer(nil) }
        if Self.settled(info) || s.closed { return .answer(info) }
        s.groupWatchers[id, default: [:]][key] = c
        return .wait
      }
      guard case .wait = now else {
        if case .answer(let i) = now { c.resume(returning: i) }
        return
      }
      Clocks.current.schedule(after: .milliseconds(ms)) { [self] in
        let (w, info) = state.withLock { s in
          let w = s.groupWatchers[id]?.removeValue(forKey: key)
          if s.groupWatchers[id]?.isEmpty == true { s.groupWatchers[id] = nil }
          return (w, s.groups.info(id))
        }
        w?.resume(returning: info)
      }
    }
    if let info { r.found = true; r.group = info }
    return r
  }

  static func settled(_ i: Swiftray_PlacementGroupInfo) -> Bool {
    i.state == .created || i.state == .removed || i.infeasible
  }

  // MARK: actions

  func performGroups(_ actions: [PlacementGroupTable.Action]) {
    for a in actions {
      switch a {
      case .placeWaiting:
        placementKicks.yield()
      case .returnBundles(let group, let nodes):
        Task { [self] in
          for node in nodes { await returnBundles(group, on: node) }
          placementKicks.yield()  // resources freed: a waiting group may fit now
        }
      case .published(let id):
        let (info, ready) = state.withLock { s -> (Swiftray_PlacementGroupInfo?, [CheckedContinuation<Swiftray_PlacementGroupInfo?, Never>]) in
          guard let info = s.groups.info(id) else { return (nil, []) }
          if let bytes: Data = try? info.serializedBytes() {
            writer.write(ControlTable.placementGroups, id, bytes)  // lock-ok: an enqueue, in the order of the changes
          }
          guard Self.settled(info), let ws = s.groupWatchers.removeValue(forKey: id) else { return (info, []) }
          return (info, Array(ws.values))
        }
        for w in ready { w.resume(returning: info) }
      case .removed(let id):
        perform(state.withLock { $0.actors.placementGroupRemoved(id) })
      case .warn(let message):
        log.warning("placement-group/pending", metadata: ["detail": "\(message)"])
      }
    }
    state.withLock { $0.groups.trimRemoved(keep: 1_000) }
  }

  /// One pass over the waiting groups, oldest first: choose nodes for each from the
  /// current view (later groups see what earlier ones took), then reserve them all at
  /// once (each group's prepare/commit round runs concurrently with the others'). The
  /// reservation runs on its own, so the next pass need not wait for it: a node that
  /// hangs holds up only the groups with bundles on it (until `node_manager_rpc_timeout_ms`),
  /// never those placed elsewhere. (Groups being reserved are not waiting: no pass takes
  /// them twice; a node a concurrent pass already filled refuses, and the group retries.)
  func placeWaitingGroups() {
    var view = state.withLock { s in
      Dictionary(s.nodes.values.map { n in
        (n.nodeID, NodePicker.NodeView(id: n.nodeID, address: Self.address(of: n), total: ResourceSet(proto: n.total),
                                       available: ResourceSet(proto: n.available), alive: n.alive, startTimeMs: n.startTimeMs))
      }) { a, _ in a }
    }
    var rounds: [Round] = []
    for id in state.withLock({ $0.groups.waiting }) {
      guard let info = state.withLock({ $0.groups.placementStarted(id) }) else { continue }
      guard let strategy = BundlePlacement.Strategy(rawValue: info.strategy) else { continue }
      let bundles = info.bundles.map { ResourceSet(proto: $0) }
      let already: [Data?] = info.bundleNodes.map { $0.isEmpty ? nil : $0 }
      switch BundlePlacement.place(bundles, strategy, placed: already, nodes: Array(view.values)) {
      case .placed(let nodes):
        for i in bundles.indices where already[i] == nil {
          if let free = view[nodes[i]]?.available { view[nodes[i]]?.available = free - bundles[i] }
        }
        rounds.append((id, bundles, nodes, already))
      case .notNow(let detail):
        performGroups(state.withLock { $0.groups.placementFailed(id, detail: detail, infeasible: false) })
      case .infeasible(let detail):
        performGroups(state.withLock { $0.groups.placementFailed(id, detail: detail, infeasible: true) })
      }
    }
    guard !rounds.isEmpty else { return }
    Task { [self] in
      let placed = await reserve(rounds)
      for (k, r) in rounds.enumerated() {
        performGroups(state.withLock { s in
          placed[k] ? s.groups.placed(r.id, nodes: r.nodes)
            : s.groups.placementFailed(r.id, detail: "a node refused or did not answer while its bundles were reserved; trying again",
                                       infeasible: false)
        })
      }
      if placed.contains(false) { retryPlacementSoon() }
    }
  }

  /// Deadline of each call to a NodeManager (prepare, commit, return).
  var nodeCallOptions: CallOptions {
    ControlPlane.deadline(milliseconds: config.nodeManagerRpcTimeoutMs)
  }

  /// A refused prepare (the node's view was stale) is tried again after a pause.
  func retryPlacementSoon() {
    Clocks.current.schedule(after: .milliseconds(max(10, config.resourceReportPeriodMs))) { [self] in
      placementKicks.yield()
    }
  }

  typealias Round = (id: Data, bundles: [ResourceSet], nodes: [Data], already: [Data?])

  /// Reserves the bundles of a pass's groups: one prepare request per node carrying
  /// every group's bundles there (in parallel); a group whose bundles all went to one
  /// node commits with its prepare, the others commit (one request per node) once
  /// every node prepared theirs, or give back what was prepared if any node refused or
  /// could not be reached. On success the nodes' totals and free resources here change
  /// at once (their next reports agree), so tasks routed right after see the bundles.
  /// Returns, per round, whether it is placed.
  func reserve(_ rounds: [Round]) async -> [Bool] {
    // Per round: node -> bundle indices to place there.
    let perRound: [[Data: [Int]]] = rounds.map { r in
      var m: [Data: [Int]] = [:]
      for i in r.bundles.indices where r.already[i] == nil { m[r.nodes[i], default: []].append(i) }
      return m
    }
    var requests: [Data: (req: Swiftray_PrepareBundlesRequest, rounds: [Int])] = [:]
    for (k, m) in perRound.enumerated() {
      for (node, indices) in m {
        var g = Swiftray_BundleReservation()
        g.placementGroupID = rounds[k].id
        g.indices = indices.map(Int32.init)
        g.bundles = indices.map { rounds[k].bundles[$0].proto }
        g.commit = m.count == 1
        requests[node, default: (Swiftray_PrepareBundlesRequest(), [])].req.groups.append(g)
        requests[node, default: (Swiftray_PrepareBundlesRequest(), [])].rounds.append(k)
      }
    }
    let options = nodeCallOptions
    var clients: [Data: ControlPlane.Connection] = [:]
    for node in requests.keys {
      if let a = state.withLock({ $0.nodes[node].map(Self.address) }), !a.isEmpty, let c = nodeClient(a) { clients[node] = c }
    }
    // prepared[k][node]
    var prepared: [[Data: Bool]] = Array(repeating: [:], count: rounds.count)
    await withTaskGroup(of: (Data, [Bool]).self) { g in
      for (node, entry) in requests {
        guard let c = clients[node] else { continue }
        let req = entry.req
        g.addTask { (node, (try? await Swiftray_NodeManagerService.Client(wrapping: c.client).prepareBundles(req, options: options).prepared) ?? []) }
      }
      for await (node, answers) in g {
        for (j, k) in requests[node]!.rounds.enumerated() { prepared[k][node] = j < answers.count && answers[j] }
      }
    }
    var ok = perRound.indices.map { k in perRound[k].keys.allSatisfy { prepared[k][$0] == true } }
    // Multi-node rounds: commit where all prepared, undo where some did not.
    var commits: [Data: [Data]] = [:]
    var undo: [(node: Data, group: Data, indices: [Int])] = []
    for k in perRound.indices where perRound[k].count > 1 {
      for (node, indices) in perRound[k] {
        if ok[k] { commits[node, default: []].append(rounds[k].id) }
        else if prepared[k][node] == true { undo.append((node, rounds[k].id, indices)) }
      }
    }
    await withTaskGroup(of: Void.self) { g in
      for (node, groups) in commits {
        guard let c = clients[node] else { continue }
        var req = Swiftray_CommitBundlesRequest()
        req.placementGroupIds = groups
        g.addTask { _ = try? await Swiftray_NodeManagerService.Client(wrapping: c.client).commitBundles(req, options: options) }
      }
      for u in undo {
        guard let c = clients[u.node] else { continue }
        var req = Swiftray_ReturnBundlesRequest()
        req.placementGroupID = u.group
        req.indices = u.indices.map(Int32.init)
        g.addTask { _ = try? await Swiftray_NodeManagerService.Client(wrapping: c.client).returnBundles(req, options: options) }
      }
    }
    state.withLock { s in
      for k in perRound.indices where ok[k] {
        guard let hex = PlacementGroupID(binary: rounds[k].id)?.hex else { ok[k] = false; continue }
        for (node, indices) in perRound[k] {
          Self.bundlesInView(&s, node: node, group: hex, indices.map { ($0, rounds[k].bundles[$0]) }, committed: true)
        }
      }
    }
    return ok
  }

  /// What the group's committed bundles on `nodes` held goes back to those nodes' free
  /// resources in the view here, before the nodes confirm.
  func bundlesFreedInView(_ group: Data, on nodes: [Data]) {
    guard let hex = PlacementGroupID(binary: group)?.hex else { return }
    state.withLock { s in
      guard let info = s.groups.info(group) else { return }
      for node in Set(nodes) {
        let held = info.bundles.indices.filter { $0 < info.bundleNodes.count && info.bundleNodes[$0] == node }
        Self.bundlesInView(&s, node: node, group: hex, held.map { ($0, ResourceSet(proto: info.bundles[$0])) }, committed: false)
      }
    }
  }

  /// `node` in the view here as its NodeManager has it once `bundles` of `group` are
  /// committed there (their shapes become the renamed resources) or given back (the
  /// reverse; what tasks still hold of them is dropped with them).
  static func bundlesInView(_ s: inout State, node: Data, group: String, _ bundles: [(index: Int, shape: ResourceSet)],
                            committed: Bool) {
    guard var n = s.nodes[node] else { return }
    var total = ResourceSet(proto: n.total), available = ResourceSet(proto: n.available)
    for (i, shape) in bundles {
      let added = BundleResources.committed(shape, group: group, index: i)
      if committed {
        total = total + added
        available = available - shape + added
      } else {
        total = total - added
        available = ResourceSet(fixedPoint: (available - added).quantities.filter { $0.value > 0 }) + shape
      }
    }
    n.total = total.proto
    n.available = available.proto
    s.nodes[node] = n
  }

  /// Gives a removed group's bundles back on `node` (its workers there are killed) and
  /// takes the node's resources after that into the view here.
  func returnBundles(_ group: Data, on node: Data) async {
    guard let address = state.withLock({ $0.nodes[node].map(Self.address) }), let c = nodeClient(address) else { return }
    var req = Swiftray_ReturnBundlesRequest()
    req.placementGroupID = group
    guard let r = try? await Swiftray_NodeManagerService.Client(wrapping: c.client).returnBundles(req, options: nodeCallOptions) else { return }
    state.withLock { s in
      s.nodes[node]?.total = r.total
      s.nodes[node]?.available = r.available
    }
  }
}
