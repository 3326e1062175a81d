import Foundation
import Runtime
import RuntimeProto

/// Placement groups in the simulation: the head's side is the ControlService's —
/// `PlacementGroupTable` decides, `BundlePlacement` chooses nodes from the head's view,
/// `BundleReservation` runs the two-phase commit (prepares, then commits or undoes,
/// each call with a deadline) — and each node's bundles are its `LeaseQueue`'s. In the
/// fault window a call or its answer may be lost; nodes die (their groups are placed
/// again). Every report the head answers with the node's bundles, and the node settles
/// its own with them (`bundlesReconciled`), as the NodeManager does.
///
/// Checked at the end: every group not removed is created, each bundle committed on
/// exactly the node the head says and nowhere else (no group half-reserved, nothing
/// reserved for a group that does not hold it); once all are removed, every node has
/// all its resources back.
extension SimCluster {
  /// One pass's reservation, out on the network.
  final class Reservation {
    var plan: BundleReservation
    var preparing: Set<Data>
    var open = true
    var finishing = 0
    init(_ plan: BundleReservation) { self.plan = plan; preparing = Set(plan.prepares.keys) }
  }

  // MARK: - the drivers

  /// A driver creates a group of 1–3 one-CPU bundles with a random strategy; it may
  /// remove it later in the run.
  func createGroup(_ d: Int) {
    var info = Swiftray_PlacementGroupInfo()
    info.placementGroupID = Data((0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) })
    let strategy = BundlePlacement.Strategy.allCases.randomElement(using: &rng)!
    info.strategy = strategy.rawValue
    // STRICT_PACK fits a node only up to its CPUs.
    let count = strategy == .strictPack ? Int(rng.between(1, UInt64(settings.cpusPerNode))) : Int(rng.between(1, 3))
    info.bundles = (0..<count).map { _ in Self.cpu1.proto }
    info.creatorJobID = Data([UInt8(d)])
    let id = info.placementGroupID
    activity["placement group", default: 0] += 1
    drivers[d].groups.append(id)
    let made = info
    toHead(on: "d\(d)->head", delay: latency(0), "d\(d) creates group \(Self.short(id))") { [self] in
      registeredGroups.insert(id)
      switch groups.created(made) {
      case .success(let actions): headGroups(actions)
      case .failure(let e): fail("group \(Self.short(id)) refused: \(e)")
      }
    }
    if rng.chance(0.5) {
      time.after(rng.between(10 * ms, settings.faultWindow), "d\(d) removes group \(Self.short(id))") { [self] in removeGroup(d, id) }
    }
  }

  /// As `CoreWorker.removePlacementGroup`: sent once the head has the group's
  /// registration (which may have been retried while the head was down).
  func removeGroup(_ d: Int, _ id: Data) {
    guard registeredGroups.contains(id) else {
      return time.after(50 * ms, "d\(d) waits for group \(Self.short(id)) to be registered") { [self] in removeGroup(d, id) }
    }
    guard let k = drivers[d].groups.firstIndex(of: id) else { return }
    drivers[d].groups.remove(at: k)
    toHead(on: "d\(d)->head", delay: latency(0), "d\(d) removes group \(Self.short(id))") { [self] in
      headGroups(groups.removeRequested(id).actions)
    }
  }

  static func short(_ id: Data) -> String { id.prefix(3).map { String(format: "%02x", $0) }.joined() }

  // MARK: - the head

  func headGroups(_ actions: [PlacementGroupTable.Action]) {
    for a in actions {
      switch a {
      case .placeWaiting: kickPlacement()
      case .returnBundles(let group, let on):
        guard let hex = PlacementGroupID(binary: group)?.hex else { continue }
        for node in on {
          guard let n = nodes.firstIndex(where: { Data($0.id.binary) == node }) else { continue }
          nodeCall(n, "return group \(Self.short(group))") { [self] node in perform(node: n, node.queue.bundlesReturned(group: hex)) } answered: { [self] in kickPlacement() }
        }
      case .warn: activity["placement warning", default: 0] += 1
      case .published(let id):
        if let info = groups.info(id) { storedGroups[id] = info }  // as the head writes it
      case .removed: break
      }
    }
  }

  /// As `placementKicks`: one pass soon, however many asked.
  func kickPlacement() {
    guard !placementKicked else { return }
    placementKicked = true
    let epoch = headEpoch
    time.after(1 * ms, "head places waiting groups") { [self] in
      sameHead(epoch) {
        placementKicked = false
        placeWaitingGroups()
      }
    }
  }

  /// As `ControlService.placeWaitingGroups`: nodes for each waiting group from the
  /// head's view (later groups see what earlier ones took), then one reservation.
  func placeWaitingGroups() {
    var view = Dictionary(headView().map { ($0.id, $0) }) { a, _ in a }
    var rounds: [BundleReservation.Round] = []
    for id in groups.waiting {
      guard let info = groups.placementStarted(id), let strategy = BundlePlacement.Strategy(rawValue: info.strategy) else { continue }
      let bundles = info.bundles.map { ResourceSet(proto: $0) }
      let already: [Data?] = info.bundleNodes.map { $0.isEmpty ? nil : $0 }
      let candidates = view.values.sorted { $0.startTimeMs < $1.startTimeMs }
      switch BundlePlacement.place(bundles, strategy, placed: already, nodes: candidates) {
      case .placed(let chosen):
        for i in bundles.indices where already[i] == nil {
          if let free = view[chosen[i]]?.available { view[chosen[i]]?.available = free - bundles[i] }
        }
        rounds.append(.init(group: id, bundles: bundles, nodes: chosen, already: already))
      case .notNow(let detail): headGroups(groups.placementFailed(id, detail: detail, infeasible: false))
      case .infeasible(let detail): headGroups(groups.placementFailed(id, detail: detail, infeasible: true))
      }
    }
    guard !rounds.isEmpty else { return }
    activity["placement round", default: 0] += 1
    let r = Reservation(BundleReservation(rounds))
    for (nodeID, req) in r.plan.prepares.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
      guard let n = nodes.firstIndex(where: { Data($0.id.binary) == nodeID }) else { continue }
      nodeCall(n, "prepare \(req.groups.count) groups") { [self] node in
        req.groups.map { g -> Bool in
          guard let hex = PlacementGroupID(binary: g.placementGroupID)?.hex else { return false }
          var wanted: [Int: ResourceSet] = [:]
          for (i, b) in zip(g.indices, g.bundles) { wanted[Int(i)] = ResourceSet(proto: b) }
          let ok = node.queue.bundlesPrepared(group: hex, wanted, now: time.now)
          if ok && g.commit { perform(node: n, node.queue.bundlesCommitted(group: hex, now: time.now)) }
          return ok
        }
      } answered: { [self] answers in
        guard r.open else { return }
        r.plan.prepared(node: nodeID, answers: answers)
        r.preparing.remove(nodeID)
        if r.preparing.isEmpty { secondPhase(r) }
      }
    }
    // The calls' deadline: a node that did not answer by then refused.
    let epoch = headEpoch
    time.after(settings.nodeCallTimeout, "prepare deadline") { [self] in sameHead(epoch) { if r.open { secondPhase(r) } } }
  }

  /// Commits where every node of a group prepared, undoes the rest; the groups' fates
  /// are decided once those calls answered or timed out.
  func secondPhase(_ r: Reservation) {
    r.open = false
    let epoch = headEpoch
    let (commits, undo) = r.plan.secondPhase
    let done = { [self] in
      r.finishing -= 1
      if r.finishing == 0 { reservationEnded(r) }
    }
    r.finishing = 1
    for (node, ids) in commits.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
      guard let n = nodes.firstIndex(where: { Data($0.id.binary) == node }) else { continue }
      r.finishing += 1
      var answered = false
      nodeCall(n, "commit \(ids.count) groups") { [self] node in
        for id in ids { if let hex = PlacementGroupID(binary: id)?.hex { perform(node: n, node.queue.bundlesCommitted(group: hex, now: time.now)) } }
      } answered: { if !answered { answered = true; done() } }
      time.after(settings.nodeCallTimeout, "commit deadline") { [self] in sameHead(epoch) { if !answered { answered = true; done() } } }
    }
    for u in undo {
      guard let n = nodes.firstIndex(where: { Data($0.id.binary) == u.node }), let hex = PlacementGroupID(binary: u.group)?.hex else { continue }
      r.finishing += 1
      var answered = false
      nodeCall(n, "undo group \(Self.short(u.group))") { [self] node in
        perform(node: n, node.queue.bundlesReturned(group: hex, only: Set(u.indices)))
      } answered: { if !answered { answered = true; done() } }
      time.after(settings.nodeCallTimeout, "undo deadline") { [self] in sameHead(epoch) { if !answered { answered = true; done() } } }
    }
    done()
  }

  func reservationEnded(_ r: Reservation) {
    let placed = r.plan.placed
    var failed = false
    for (k, round) in r.plan.rounds.enumerated() {
      if placed[k] {
        headGroups(groups.placed(round.group, nodes: round.nodes))
      } else {
        failed = true
        headGroups(groups.placementFailed(round.group, detail: "a node refused or did not answer", infeasible: false))
      }
    }
    let epoch = headEpoch
    if failed { time.after(100 * ms, "placement retry") { [self] in sameHead(epoch) { kickPlacement() } } }
  }

  /// A call from the head to node `n` with no retry: in the fault window the request or
  /// its answer may be lost; a dead node never answers.
  func nodeCall<T>(_ n: Int, _ label: String, _ handle: @escaping (Node) -> T, answered: @escaping (T) -> Void) {
    let epoch = headEpoch
    if time.now < settings.faultWindow && rng.chance(settings.bundleMessageLoss) {
      faultsInjected["bundle call lost", default: 0] += 1
      return
    }
    send(on: "head->n\(n)", delay: latency(n), "\(label) -> n\(n)") { [self] in
      guard nodes[n].alive else { return }
      let out = handle(nodes[n])
      if time.now < settings.faultWindow && rng.chance(settings.bundleMessageLoss) {
        faultsInjected["bundle answer lost", default: 0] += 1
        return
      }
      // The answer reaches only the head that asked.
      send(on: "n\(n)->head", delay: latency(n), "\(label): n\(n) answered") { [self] in sameHead(epoch) { answered(out) } }
    }
  }

  /// How long a node keeps a bundle or a head's lease the head leaves out: as
  /// `NodeManager.holdingsGraceNanos` (3 call deadlines plus 2 report periods).
  var holdingsGrace: UInt64 { 3 * settings.nodeCallTimeout + 2 * 100 * ms }

  /// The bundles the head counts on `node`, by group hex (as a node parses its list).
  func listedBundles(on node: Node) -> [String: Set<Int>] {
    var listed: [String: Set<Int>] = [:]
    for (id, indices) in groups.bundles(on: Data(node.id.binary)) {
      if let hex = PlacementGroupID(binary: id)?.hex { listed[hex] = Set(indices) }
    }
    return listed
  }

  /// The head's answer to a node's report carries the bundles and the actor leases it
  /// counts there; the node settles its own with them (`NodeManager.holdingsListed`).
  func reconcileHoldings(_ node: Node) {
    guard !headCountsDead(node) else { return }
    perform(node: node.index, node.queue.controlLeasesReconciled(listed: actorDirectory.leases(on: [node.address]),
                                                                 now: time.now, grace: holdingsGrace))
    guard settings.reconcileBundles else { return }
    perform(node: node.index, node.queue.bundlesReconciled(listed: listedBundles(on: node), now: time.now, grace: holdingsGrace))
  }

  // MARK: - checks

  /// Every group still held is created, each bundle committed on the node the head
  /// names; no node holds a bundle the head does not count there.
  func checkGroups() {
    for drv in drivers {
      for id in drv.groups {
        guard let info = groups.info(id) else { fail("group \(Self.short(id)) unknown at the head"); continue }
        if info.state != .created {
          fail("group \(Self.short(id)) (\(info.strategy), \(info.bundles.count) bundles) is \(info.state) once faults stopped: \(info.detail)")
        }
      }
    }
    for n in nodes where n.alive && !headCountsDead(n) {
      let expected = listedBundles(on: n)
      for (hex, bundles) in n.queue.bundles.sorted(by: { $0.key < $1.key }) {
        for (i, b) in bundles.sorted(by: { $0.key < $1.key }) {
          if expected[hex]?.contains(i) != true {
            fail("node \(n.index) holds bundle \(i) of group \(hex.prefix(6)) (\(b.added == nil ? "prepared" : "committed")), "
              + "which the head does not count there: reserved for nobody")
          } else if b.added == nil {
            fail("node \(n.index) holds bundle \(i) of group \(hex.prefix(6)) prepared but never committed: the group is half-reserved")
          }
        }
      }
      for (hex, indices) in expected.sorted(by: { $0.key < $1.key }) where !indices.isSubset(of: Set(n.queue.bundles[hex].map { Array($0.keys) } ?? [])) {
        fail("the head counts bundles \(indices.sorted()) of group \(hex.prefix(6)) on node \(n.index), which does not hold them")
      }
    }
  }

  /// Drivers remove what they still hold.
  func removeAllGroups() {
    for d in drivers.indices {
      for id in drivers[d].groups { removeGroup(d, id) }
    }
  }
}
