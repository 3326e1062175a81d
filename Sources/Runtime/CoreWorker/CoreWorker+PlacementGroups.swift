import Foundation
import GRPCNIOTransportHTTP2
import RuntimeProto

/// Placement groups from an owner's side: create, look up, remove, wait. The
/// ControlService reserves the bundles; tasks and actors in a group ask for its renamed
/// resources (`SchedulingKey.shape(_:under:)`), so nothing else here changes.
///
/// Threading: any thread; the calls block on one control-plane round trip (release the
/// GIL first), except `placementGroupReady`, which returns at once.
extension CoreWorker {
  public typealias PlacementGroupInfo = Swiftray_PlacementGroupInfo

  /// Registers a group; the ControlService places it in the background. A named group
  /// is registered before this returns (throws `invalidArgument` for a name taken in
  /// the namespace); an unnamed one, which nothing can refuse, in the background: what
  /// this process does with it next (ready, wait, remove, its tasks' and actors' leases)
  /// waits for that first, so it costs no round trip here.
  public func createPlacementGroup(bundles: [ResourceSet], strategy: String, name: String, namespace: String,
                                   detached: Bool) throws -> PlacementGroupID {
    let id = PlacementGroupID.random()
    var info = PlacementGroupInfo()
    info.placementGroupID = Data(id.binary)
    info.bundles = bundles.map(\.proto)
    info.strategy = strategy
    info.name = name
    info.namespace = namespace
    info.detached = detached
    info.creatorJobID = Data(currentJobID.binary)
    // A driver's non-detached groups go when it exits (a worker's, with its job).
    if options.isDriver { info.creatorID = Data(options.workerID.binary) }
    var req = Swiftray_CreatePlacementGroupRequest()
    req.group = info
    if name.isEmpty {
      let request = req
      groupCall(id, "registered with the head", method: "CreatePlacementGroup") { _ = try await $0.createPlacementGroup(request) }
      return id
    }
    let error = try callControl("CreatePlacementGroup") { [req] in try await $0.createPlacementGroup(req).error }
    if !error.isEmpty { throw SwiftrayError(.invalidArgument, error) }
    return id
  }

  /// Returns once the head has this process's registration of `id` (at once when it
  /// was not made here or is done).
  func placementGroupRegistered(_ id: PlacementGroupID) async {
    guard let done = registrations.withLock({ $0.groups[id]?.done }) else { return }
    await done.wait()
  }

  /// Removes the group: returns once the head has it removed (after this process's
  /// registration of it landed), so what the return promises holds for every process
  /// at once — its name is free, its resources are being given back, its tasks and
  /// actors fail. One round trip; call with the GIL released.
  public func removePlacementGroup(_ id: PlacementGroupID) throws {
    var req = Swiftray_RemovePlacementGroupRequest()
    req.placementGroupID = Data(id.binary)
    _ = try callControl("RemovePlacementGroup") { [self, req] c in
      await placementGroupRegistered(id)
      return try await c.removePlacementGroup(req)
    }
  }

  /// Returns once every registration this process sent in the background has landed.
  func placementGroupsSettled() async {
    let pending = registrations.withLock { r in r.groups.values.map(\.done) }
    for done in pending { await done.wait() }
  }

  /// Blocks (bounded) until the head has this process's registration of `id`: before the
  /// group's id leaves this process (pickled), so no other process can meet a group the
  /// head does not know. At once when there is none in flight. Call with the GIL released.
  public func awaitPlacementGroupRegistered(_ id: PlacementGroupID) {
    guard registrations.withLock({ $0.groups[id] != nil }) else { return }
    _ = try? blockingAwait(timeout: .seconds(30) + controlPatience) { [self] in await placementGroupRegistered(id) }
  }

  /// `afterGroupOps` with one ControlService call, tried again while the head is
  /// unreachable (it may be restarting); a failure in the end is warned about.
  func groupCall(_ id: PlacementGroupID, _ what: String, method: String,
                 _ call: @escaping @Sendable (any Swiftray_ControlService.ClientProtocol) async throws -> Void) {
    let c = control
    let patience = controlPatience
    let log = warn
    afterGroupOps(id) {
      do {
        try await ControlPlane.whileUnavailable(patience: patience) { try await call(c.controlService) }
      } catch {
        log("Placement group \(id.hex) could not be \(what): \(ControlPlane.error(error, calling: method, at: c.endpoint).message)")
      }
    }
  }

  /// Runs `body` (a call to the head about group `id`) in the background, after what
  /// this process sent about the group before; what concerns the group afterwards waits
  /// for it (`placementGroupRegistered`).
  func afterGroupOps(_ id: PlacementGroupID, _ body: @escaping @Sendable () async -> Void) {
    // Chained under the lock (each op waits for the one before), started after it.
    let done = AsyncLatch()
    let (op, before) = registrations.withLock { r in
      let before = r.groups[id]?.done
      r.nextGroupOp += 1
      r.groups[id] = (r.nextGroupOp, done)
      return (r.nextGroupOp, before)
    }
    Task { [self] in
      await before?.wait()
      await body()
      registrations.withLock { r in if r.groups[id]?.op == op { r.groups[id] = nil } }
      done.open()
    }
  }

  /// A group by id, or by name in `namespace` (a removed group is not found by name).
  public func placementGroup(id: PlacementGroupID?, name: String = "", namespace: String = "") throws -> PlacementGroupInfo? {
    var req = Swiftray_GetPlacementGroupRequest()
    if let id { req.placementGroupID = Data(id.binary) }
    req.name = name
    req.namespace = namespace
    return try callControl("GetPlacementGroup") { [self, req] c in
      if let id { await placementGroupRegistered(id) } else { await placementGroupsSettled() }
      let r = try await c.getPlacementGroup(req)
      return r.found ? r.group : nil
    }
  }

  /// Every group the head knows, after this process's own registrations landed.
  public func allPlacementGroups() throws -> [PlacementGroupInfo] {
    try callControl("GetAllPlacementGroups") { [self] c in
      await placementGroupsSettled()
      return try await c.getAllPlacementGroups(.init()).groups
    }
  }

  /// Waits (bounded by `timeoutNanos`) until the group is created or removed, or is
  /// known not to fit the nodes there are. Returns its info then (nil: unknown group).
  public func waitPlacementGroup(_ id: PlacementGroupID, timeoutNanos: UInt64) throws -> PlacementGroupInfo? {
    let deadline = self.now() &+ min(timeoutNanos, UInt64(Int64.max) / 2)
    while true {
      let now = self.now()
      let left = deadline > now ? deadline - now : 0
      var req = Swiftray_WaitPlacementGroupRequest()
      req.placementGroupID = Data(id.binary)
      req.timeoutMs = Int32(max(10, min(left / 1_000_000, 10_000)))
      let reply = try callControl("WaitPlacementGroup", timeout: .seconds(15)) { [self, req] c in
        await placementGroupRegistered(id)
        return try await c.waitPlacementGroup(req)
      }
      guard reply.found else { return nil }
      let g = reply.group
      if g.state == .created || g.state == .removed || self.now() >= deadline { return g }
      if g.infeasible { return g }
    }
  }

  /// `PlacementGroup.ready()`: an object owned here that becomes `value` once the group
  /// is created, or a `TaskPlacementGroupRemoved` error if it is removed first. Its id
  /// holds one local reference (the caller's ObjectRef). Warns once if the group cannot
  /// be placed on the nodes there are. Never blocks.
  public func placementGroupReady(_ id: PlacementGroupID, value: Swiftray_RayObject) -> ObjectID {
    let oid = nextPutID()
    state.withLock { $0.futureObjectCreated(oid) }
    let c = control
    let patience = controlPatience
    Task { [self] in
      await placementGroupRegistered(id)
      var warned = false, warnedWaiting = false
      var unknown = 0
      while state.withLock({ !$0.shuttingDown && $0.refs.isInScope(oid) }) {
        var req = Swiftray_WaitPlacementGroupRequest()
        req.placementGroupID = Data(id.binary)
        req.timeoutMs = 10_000
        guard let r = try? await ControlPlane.whileUnavailable(patience: patience, { [req] in
          try await c.controlService.waitPlacementGroup(req)
        }) else {
          await clock.sleep(for: .milliseconds(200))
          continue
        }
        let g = r.group
        if !r.found && unknown < 50 {
          // Made by another process whose registration may still be on its way.
          unknown += 1
          await clock.sleep(for: .milliseconds(100))
          continue
        }
        if !r.found || g.state == .removed {
          let why = r.found ? g.detail : "the cluster does not know it"
          objectsArrived([(oid, Self.errorObject(.taskPlacementGroupRemoved,
            "Placement group \(id.hex) was removed before it was ready: \(why)."))])
          return
        }
        if g.state == .created { objectsArrived([(oid, value)]); return }
        let which = g.name.isEmpty ? id.hex : "'\(g.name)' (\(id.hex))"
        if g.infeasible && !warned {
          warned = true
          warn("Placement group \(which) cannot be placed on the nodes of this cluster: "
            + "\(g.detail). ready() waits until nodes that fit it join.")
        } else if !g.infeasible && !warnedWaiting {
          // The long poll came back unsettled: it has waited 10 s for resources.
          warnedWaiting = true
          warn("Placement group \(which) has waited 10 s to be placed: \(g.detail.isEmpty ? "no room yet" : g.detail). "
            + "ready() waits until resources free up or nodes join.")
        }
        if g.infeasible { await clock.sleep(for: .milliseconds(500)) }
      }
    }
    return oid
  }
}
