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
    // The bundles are back on their nodes (and in the view here) before this returns:
    // a group created right after sees the freed resources.
    await withTaskGroup(of: Void.self) { g in
      for case .returnBundles(let group, let nodes) in actions {
        for node in nodes { g.addTask { await self.returnBundles(group, on: node) } }
      }
    }
    performGroups(actions.filter { if case .returnBundles = $0 { return false } else { return true } })
    placementKicks.yield()
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
      group.next().scheduleTask(in: .milliseconds(ms)) { [self] in
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
          guard Self.settled(info), let ws = s.groupWatchers.removeValue(forKey: id) else { return (info, []) }
          return (info, Array(ws.values))
        }
        if let info, let bytes: Data = try? info.serializedBytes() { writer.write(ControlTable.placementGroups, id, bytes) }
        for w in ready { w.resume(returning: info) }
      case .removed(let id):
        perform(state.withLock { $0.actors.placementGroupRemoved(id) })
      case .warn(let message):
        log.warning("placement-group/infeasible", metadata: ["detail": "\(message)"])
      }
    }
    state.withLock { $0.groups.trimRemoved(keep: 10_000) }
  }

  /// One pass over the waiting groups, oldest first: choose nodes from the current view,
  /// then reserve there. Later groups see what earlier ones took.
  func placeWaitingGroups() async {
    for id in state.withLock({ $0.groups.waiting }) {
      guard let info = state.withLock({ $0.groups.placementStarted(id) }) else { continue }
      guard let strategy = BundlePlacement.Strategy(rawValue: info.strategy) else { continue }
      let bundles = info.bundles.map { ResourceSet(proto: $0) }
      let already: [Data?] = info.bundleNodes.map { $0.isEmpty ? nil : $0 }
      let view = state.withLock { s in
        s.nodes.values.map { n in
          NodePicker.NodeView(id: n.nodeID, address: Self.address(of: n), total: ResourceSet(proto: n.total),
                              available: ResourceSet(proto: n.available), alive: n.alive, startTimeMs: n.startTimeMs)
        }
      }
      switch BundlePlacement.place(bundles, strategy, placed: already, nodes: view) {
      case .placed(let nodes):
        let ok = await reserve(id, bundles, on: nodes, already: already)
        performGroups(state.withLock { s in
          ok ? s.groups.placed(id, nodes: nodes)
            : s.groups.placementFailed(id, detail: "a node refused or did not answer while its bundles were reserved; trying again",
                                       infeasible: false)
        })
        if !ok { retryPlacementSoon() }
      case .notNow(let detail):
        performGroups(state.withLock { $0.groups.placementFailed(id, detail: detail, infeasible: false) })
      case .infeasible(let detail):
        performGroups(state.withLock { $0.groups.placementFailed(id, detail: detail, infeasible: true) })
      }
    }
  }

  /// A refused prepare (the node's view was stale) is tried again after a pause.
  func retryPlacementSoon() {
    group.next().scheduleTask(in: .milliseconds(Int64(max(10, config.resourceReportPeriodMs)))) { [self] in
      placementKicks.yield()
    }
  }

  /// Prepares the bundles to place on their nodes (in parallel), then commits them all;
  /// undoes the prepared ones if any node refuses or cannot be reached. On success the
  /// nodes' totals and free resources here change at once (their next reports agree),
  /// so tasks routed right after see the bundles.
  func reserve(_ id: Data, _ bundles: [ResourceSet], on nodes: [Data], already: [Data?]) async -> Bool {
    var perNode: [Data: [Int]] = [:]
    for i in bundles.indices where already[i] == nil { perNode[nodes[i], default: []].append(i) }
    let clients = state.withLock { s in
      perNode.keys.map { node in (node, s.nodes[node].map(Self.address).flatMap { a in a.isEmpty ? nil : a }) }
    }
    var connections: [Data: ControlPlane.Connection] = [:]
    for (node, address) in clients { if let address, let c = nodeClient(address) { connections[node] = c } }
    guard connections.count == perNode.count else { return false }
    let prepared: [Data: Bool] = await withTaskGroup(of: (Data, Bool).self) { g in
      for (node, indices) in perNode {
        let client = Swiftray_NodeManagerService.Client(wrapping: connections[node]!.client)
        var req = Swiftray_PrepareBundlesRequest()
        req.placementGroupID = id
        req.indices = indices.map(Int32.init)
        req.bundles = indices.map { bundles[$0].proto }
        g.addTask { (node, (try? await client.prepareBundles(req).prepared) ?? false) }
      }
      var out: [Data: Bool] = [:]
      for await (n, ok) in g { out[n] = ok }
      return out
    }
    guard prepared.values.allSatisfy({ $0 }) else {
      // Undo only what this round prepared: bundles kept from before stay.
      for (node, ok) in prepared where ok {
        var req = Swiftray_ReturnBundlesRequest()
        req.placementGroupID = id
        req.indices = perNode[node, default: []].map(Int32.init)
        _ = try? await Swiftray_NodeManagerService.Client(wrapping: connections[node]!.client).returnBundles(req)
      }
      return false
    }
    await withTaskGroup(of: Void.self) { g in
      for node in perNode.keys {
        let client = Swiftray_NodeManagerService.Client(wrapping: connections[node]!.client)
        var req = Swiftray_CommitBundlesRequest()
        req.placementGroupID = id
        g.addTask { _ = try? await client.commitBundles(req) }
      }
    }
    guard let hex = PlacementGroupID(binary: id)?.hex else { return true }
    state.withLock { s in
      for (node, indices) in perNode {
        guard var n = s.nodes[node] else { continue }
        var total = ResourceSet(proto: n.total), available = ResourceSet(proto: n.available)
        for i in indices {
          let added = BundleResources.committed(bundles[i], group: hex, index: i)
          total = total + added
          available = available - bundles[i] + added
        }
        n.total = total.proto
        n.available = available.proto
        s.nodes[node] = n
      }
    }
    return true
  }

  /// Gives a removed group's bundles back on `node` (its workers there are killed) and
  /// takes the node's resources after that into the view here.
  func returnBundles(_ group: Data, on node: Data) async {
    guard let address = state.withLock({ $0.nodes[node].map(Self.address) }), let c = nodeClient(address) else { return }
    var req = Swiftray_ReturnBundlesRequest()
    req.placementGroupID = group
    guard let r = try? await Swiftray_NodeManagerService.Client(wrapping: c.client).returnBundles(req) else { return }
    state.withLock { s in
      s.nodes[node]?.total = r.total
      s.nodes[node]?.available = r.available
    }
  }
}
