import Foundation
import Runtime
import RuntimeProto

/// The head's membership and its restarts in the simulation. The head's node table is
/// the ControlService's `NodeTable`: nodes register, report (a node the head does not
/// know registers again), die by health check. A restart (in the fault window, down
/// 100–600 ms) loses everything in memory: its connections break (nodes withdraw its
/// queued lease requests, drivers' long polls fail and are sent again), answers to the
/// old incarnation are lost, its timers void; what storage kept (nodes, actors,
/// placement groups, written as the real head writes them: on each change) is taken up
/// again by the new one, which has a new lease-owner id, as a new process would.
extension SimCluster {
  func info(of n: Node) -> Swiftray_NodeInfo {
    var i = Swiftray_NodeInfo()
    i.nodeID = Data(n.id.binary)
    i.nodeManagerAddress = n.address
    i.total = n.queue.total.proto
    i.available = n.queue.available.proto
    i.alive = true
    i.startTimeMs = Int64(n.index)
    return i
  }

  /// The head does not count `n` as a live node (dead, unknown, or not registered again
  /// since it restarted).
  func headCountsDead(_ n: Node) -> Bool { nodeTable[Data(n.id.binary)]?.alive != true }

  /// A node's report reaches the head: taken, answered with "register again", or
  /// with "you were declared dead" (the node is fenced: it stops).
  func nodeReported(_ n: Node) {
    let id = Data(n.id.binary)
    switch nodeTable.reported(id, available: n.queue.available.proto, total: n.queue.total.proto, demand: []) {
    case .taken: break
    case .register:
      storedNodes[id] = nodeTable.registered(info(of: n))
      for w in n.recentExits { workerDeaths.died(w) }
      activity["node registered again", default: 0] += 1
    case .fenced: return fence(n.index)
    }
    guard !headCountsDead(n) else { return }
    n.lastReported = n.queue.available
    reconcileHoldings(n)
    // Resources may have freed up for a group that waits (as ControlService.reportResources).
    if !groups.waiting.isEmpty { kickPlacement() }
  }

  /// The head's health checks of a node that died: the head up then declares it dead
  /// once it has been silent `healthTimeout`; a head that is down checks again when back.
  func healthCheck(_ n: Int) {
    time.after(settings.healthTimeout, "health check of n\(n)") { [self] in
      guard headUp else { return healthCheck(n) }
      // Checked while registered, or restored and not back yet (ControlService checks both).
      guard let known = nodeTable[Data(nodes[n].id.binary)], !NodeTable.isDead(known) else { return }
      headDeclaresDead(n, detail: "its node \(n) died (simulated)")
    }
  }

  /// As the ControlService on a node's death: the table, the actors, the groups.
  /// Drivers learn it from their node's next view of the cluster (`driversLearnDeaths`).
  func headDeclaresDead(_ n: Int, detail: String) {
    let node = nodes[n]
    let id = Data(node.id.binary)
    if let dead = nodeTable.died(id, detail: detail) { storedNodes[id] = dead }
    headPerform(actorDirectory.nodeDied([node.address], detail: detail))
    headGroups(groups.nodeDied(id))
  }

  /// As NodeManager.publishDeaths: the drivers' node (node 0) takes the head's list of
  /// nodes and tells its drivers of each newly dead one (`NodeTable.isDead`).
  func driversLearnDeaths() {
    for info in nodeTable.all where NodeTable.isDead(info) && !toldDead.contains(info.nodeID) {
      toldDead.insert(info.nodeID)
      guard let node = nodes.first(where: { Data($0.id.binary) == info.nodeID }) else { continue }
      for d in drivers.indices {
        driverEvent(d) { $0.nodeDied(info.nodeID, nodeManagers: [node.address], why: info.deathDetail,
                                      here: (Data(nodes[0].id.binary), "node-0:store"), now: time.now) }
      }
    }
  }

  /// A call to the head on `channel`: run there while the head is up; while it is down
  /// the caller tries again every 200 ms (`ControlPlane.whileUnavailable`: the head's
  /// calls are idempotent), keeping the channel's order.
  func toHead(on channel: String, delay: UInt64, _ label: String, _ run: @escaping () -> Void) {
    send(on: channel, delay: delay, label) { [self] in
      guard headUp else {
        return time.after(200 * ms, "\(label) (head down: again)") { [self] in toHead(on: channel, delay: 0, label, run) }
      }
      run()
    }
  }

  /// Runs `body` only if the head incarnation that armed it is still the one running.
  func sameHead(_ epoch: Int, _ body: () -> Void) {
    if headUp && epoch == headEpoch { body() }
  }

  func restartHead() {
    guard headUp else { return }
    faultsInjected["head restart", default: 0] += 1
    headUp = false
    headEpoch += 1
    // Its connections break: each node withdraws the lease requests it had queued.
    for n in nodes where n.alive {
      for (local, r) in n.requests.sorted(by: { $0.key < $1.key }) where r.owner == Self.head {
        n.requests[local] = nil
        perform(node: n.index, n.queue.leaseRequestCanceled(local))
      }
    }
    // Drivers' long polls fail; they ask again (and wait while it is down).
    let watches = actorWatches.keys.sorted { $0.hex < $1.hex }.flatMap { a in (actorWatches[a] ?? []).map { (a, $0) } }
    actorWatches = [:]
    for (actor, w) in watches { headWatch(w.driver, actor, after: w.after) }
    actorDirectory = ActorDirectory(leaseRetryNanos: 200 * ms)
    groups = PlacementGroupTable()
    nodeTable = NodeTable(health: NodeHealth(failureThreshold: 3))
    workerDeaths = WorkerDeathLog(id: rng.next())
    headRequests = [:]
    headPlacement = [:]
    headTickArmed = false
    placementKicked = false
    headID = WorkerID(a: rng.next(), b: rng.next(), c: 0x4EAD, d: UInt32(headEpoch))
    time.after(rng.between(100 * ms, 600 * ms), "head is back (storage: \(headStorage))") { [self] in headBack() }
  }

  /// The new head takes up what storage kept (`ControlService.restore`), or nothing.
  func headBack() {
    headUp = true
    guard headStorage else {
      storedActors = [:]
      storedGroups = [:]
      storedNodes = [:]
      // Groups registered with the old head are unknown to the new one: nothing to
      // check of them (creations still being retried land at the new head).
      for d in drivers.indices { drivers[d].groups.removeAll { registeredGroups.contains($0) } }
      return
    }
    for id in storedNodes.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }) { nodeTable.restored(storedNodes[id]!) }
    let infos = storedGroups.keys.sorted(by: { $0.lexicographicallyPrecedes($1) }).map { storedGroups[$0]! }
    headGroups(groups.restore(infos))
    let records = storedActors.keys.sorted { $0.hex < $1.hex }.map { storedActors[$0]! }
    headPerform(actorDirectory.restore(records, now: time.now))
  }

  /// A driver's long poll of an actor's state at the head.
  func headWatch(_ d: Int, _ actor: ActorID, after: UInt64) {
    toHead(on: "d\(d)->head", delay: latency(0), "d\(d) watches actor \(actor.counter) after v\(after)") { [self] in
      guard let info = actorDirectory.info(actor) else { return answerWatchUnknown(d, actor) }
      if info.version > after { return answerWatch(d, info) }
      // A long poll: answered when the state changes, or at its timeout (10 s, as
      // the ControlService's) with the state as it is then.
      let token = nextWatch
      nextWatch += 1
      actorWatches[actor, default: []].append((d, after, token))
      time.after(10_000 * ms, "actor \(actor.counter) watch of d\(d) times out") { [self] in
        guard let i = actorWatches[actor]?.firstIndex(where: { $0.token == token }) else { return }
        actorWatches[actor]?.remove(at: i)
        if let info = actorDirectory.info(actor) { answerWatch(d, info) } else { answerWatchUnknown(d, actor) }
      }
    }
  }
}
