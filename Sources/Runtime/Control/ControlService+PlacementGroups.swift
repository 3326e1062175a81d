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
    performGroups(actions, freedInView: true)
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
    let info: Swiftray_PlacementGroupInfo? = await longPoll(timeoutMs: Int64(request.timeoutMs)) { s, c in
      guard let info = s.groups.info(id) else { return .answer(nil) }
      if Self.settled(info) || s.closed { return .answer(info) }
      return s.groupPolls.add(id, c).map { .wait($0) } ?? .full(info)
    } expire: { s, token in
      (s.groupPolls.timedOut(id, token: token), s.groups.info(id))
    }
    if let info { r.found = true; r.group = info }
    return r
  }

  static func settled(_ i: Swiftray_PlacementGroupInfo) -> Bool {
    i.state == .created || i.state == .removed || i.infeasible
  }

  // MARK: actions

  /// `freedInView`: the returns are already in the view here and their bundle changes
  /// counted in flight (`bundlesFreedInView` did both); otherwise they are counted here
  /// and the view is taken from the nodes' answers.
  func performGroups(_ actions: [PlacementGroupTable.Action], freedInView: Bool = false) {
    for a in actions {
      switch a {
      case .placeWaiting:
        placementKicks.yield()
      case .returnBundles(let group, let nodes):
        if !freedInView { state.withLock { s in for node in nodes { s.nodes.bundleChangeStarted(node) } } }
        Task { [self] in
          for node in nodes { await returnBundles(group, on: node, takeView: !freedInView) }
          placementKicks.yield()  // resources freed: a waiting group may fit now
        }
      case .published(let id):
        let (info, ready) = state.withLock { s -> (Swiftray_PlacementGroupInfo?, [CheckedContinuation<Swiftray_PlacementGroupInfo?, Never>]) in
          guard let info = s.groups.info(id) else { return (nil, []) }
          if let bytes: Data = try? info.serializedBytes() {
            writer.write(ControlTable.placementGroups, id, bytes)  // lock-ok: an enqueue, in the order of the changes
          }
          return (info, Self.settled(info) ? s.groupPolls.take(id) : [])
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
    // Most passes (a kick per removal, per report) find nothing waiting: no view then,
    // which costs every node's resources, renamed bundle resources included.
    let waiting = state.withLock { $0.groups.waiting }
    guard !waiting.isEmpty else { return }
    var view = state.withLock { s in Dictionary(s.nodes.views.map { ($0.id, $0) }) { a, _ in a } }
    var rounds: [Round] = []
    for id in waiting {
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
    clock.schedule(after: .milliseconds(max(10, config.resourceReportPeriodMs))) { [self] in
      placementKicks.yield()
    }
  }

  typealias Round = (id: Data, bundles: [ResourceSet], nodes: [Data], already: [Data?])

  /// Reserves the bundles of a pass's groups (`BundleReservation` decides): prepares in
  /// parallel, then commits or gives back. On success the nodes' totals and free
  /// resources here change at once (their next reports agree), so tasks routed right
  /// after see the bundles. Returns, per round, whether it is placed.
  func reserve(_ rounds: [Round]) async -> [Bool] {
    var reservation = BundleReservation(rounds.map { .init(group: $0.id, bundles: $0.bundles, nodes: $0.nodes, already: $0.already) })
    let options = nodeCallOptions
    var clients: [Data: ControlPlane.Connection] = [:]
    let touched = Array(reservation.prepares.keys)
    // Until the view here takes the outcome (below), reports of these nodes are not taken.
    state.withLock { s in for node in touched { s.nodes.bundleChangeStarted(node) } }
    for node in touched {
      if let a = state.withLock({ $0.nodes[node].map(Self.address) }), !a.isEmpty, let c = nodeClient(a) { clients[node] = c }
    }
    // Each node's bundle epoch in its answers (the highest).
    var epochs: [Data: UInt64] = [:]
    let prepares = reservation.prepares
    await withTaskGroup(of: (Data, Swiftray_PrepareBundlesReply?).self) { g in
      for (node, req) in prepares {
        guard let c = clients[node] else { continue }
        g.addTask { (node, try? await c.nodeManagerService.prepareBundles(req, options: options)) }
      }
      for await (node, reply) in g {
        reservation.prepared(node: node, answers: reply?.prepared ?? [])
        if let reply { epochs[node] = max(epochs[node] ?? 0, reply.bundleEpoch) }
      }
    }
    let (commits, undo) = reservation.secondPhase
    await withTaskGroup(of: (Data, UInt64).self) { g in
      for (node, groups) in commits {
        guard let c = clients[node] else { continue }
        var req = Swiftray_CommitBundlesRequest()
        req.placementGroupIds = groups
        g.addTask { (node, (try? await c.nodeManagerService.commitBundles(req, options: options))?.bundleEpoch ?? 0) }
      }
      for u in undo {
        guard let c = clients[u.node] else { continue }
        var req = Swiftray_ReturnBundlesRequest()
        req.placementGroupID = u.group
        req.indices = u.indices.map(Int32.init)
        g.addTask { (u.node, (try? await c.nodeManagerService.returnBundles(req, options: options))?.bundleEpoch ?? 0) }
      }
      for await (node, epoch) in g { epochs[node] = max(epochs[node] ?? 0, epoch) }
    }
    var ok = reservation.placed
    let done = reservation
    let answered = epochs
    state.withLock { s in
      for k in rounds.indices where ok[k] {
        guard let hex = PlacementGroupID(binary: rounds[k].id)?.hex else { ok[k] = false; continue }
        for (node, bundles) in done.reserved(k) { Self.bundlesInView(&s, node: node, group: hex, bundles, committed: true) }
      }
      for node in touched { s.nodes.bundleChangeEnded(node, epoch: answered[node] ?? 0) }
    }
    return ok
  }

  /// What the group's committed bundles on `nodes` held goes back to those nodes' free
  /// resources in the view here, before the nodes confirm.
  func bundlesFreedInView(_ group: Data, on nodes: [Data]) {
    guard let hex = PlacementGroupID(binary: group)?.hex else { return }
    state.withLock { s in
      // The returns that follow (`performGroups`) end these.
      for node in nodes { s.nodes.bundleChangeStarted(node) }
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
    // In place, touching the bundles' names only: the node's shapes hold every live
    // group's renamed resources.
    s.nodes.changeResources(node) { total, available in
      for (i, shape) in bundles {
        let added = BundleResources.committed(shape, group: group, index: i)
        if committed {
          ResourceSet.add(added, to: &total.quantities)
          ResourceSet.add(shape, to: &available.quantities, negated: true)
          ResourceSet.add(added, to: &available.quantities)
        } else {
          ResourceSet.add(added, to: &total.quantities, negated: true)
          // What tasks still held of the bundle goes with it (never below nothing).
          ResourceSet.add(added, to: &available.quantities, negated: true, droppingNonPositive: true)
          ResourceSet.add(shape, to: &available.quantities)
        }
      }
    }
  }

  /// Gives a removed group's bundles back on `node` (its workers there are killed) and,
  /// with `takeView`, takes the node's resources after that into the view here (without,
  /// the view already has the return: `bundlesFreedInView`, and the node's next report
  /// after this change corrects any drift, as after a commit).
  /// Ends the bundle change counted for it (`bundleChangeStarted`), answered or not.
  func returnBundles(_ group: Data, on node: Data, takeView: Bool) async {
    guard let address = state.withLock({ $0.nodes[node].map(Self.address) }), let c = nodeClient(address) else {
      state.withLock { $0.nodes.bundleChangeEnded(node, epoch: 0) }
      return
    }
    var req = Swiftray_ReturnBundlesRequest()
    req.placementGroupID = group
    req.resourcesWanted = takeView
    guard let r = try? await c.nodeManagerService.returnBundles(req, options: nodeCallOptions) else {
      state.withLock { $0.nodes.bundleChangeEnded(node, epoch: 0) }
      return
    }
    state.withLock { s in
      if takeView { s.nodes.resourcesChanged(node, total: r.total, available: r.available) }
      s.nodes.bundleChangeEnded(node, epoch: r.bundleEpoch)
    }
  }
}
