import Foundation
import Runtime
import RuntimeProto
import Testing

private let a = Data([0xA]), b = Data([0xB]), c = Data([0xC])
private let g1 = Data([1]), g2 = Data([2])
private let cpu = ResourceSet(units: ["CPU": 1])

@Suite struct BundleReservationTests {
  @Test func aGroupOnOneNodeCommitsWithItsPrepare() {
    var r = BundleReservation([.init(group: g1, bundles: [cpu, cpu], nodes: [a, a], already: [nil, nil])])
    #expect(r.prepares.keys.sorted { $0.lexicographicallyPrecedes($1) } == [a])
    #expect(r.prepares[a]?.groups.first?.commit == true)
    #expect(r.prepares[a]?.groups.first?.indices == [0, 1])
    r.prepared(node: a, answers: [true])
    #expect(r.placed == [true])
    #expect(r.secondPhase.commits.isEmpty && r.secondPhase.undo.isEmpty, "nothing left to do")
  }

  @Test func aSpreadGroupCommitsOnlyOnceEveryNodePrepared() {
    var r = BundleReservation([.init(group: g1, bundles: [cpu, cpu], nodes: [a, b], already: [nil, nil])])
    #expect(r.prepares[a]?.groups.first?.commit == false)
    r.prepared(node: a, answers: [true])
    #expect(r.placed == [false], "b has not answered")
    r.prepared(node: b, answers: [true])
    #expect(r.placed == [true])
    #expect(r.secondPhase.commits == [a: [g1], b: [g1]])
  }

  @Test func aRefusalOrSilenceUndoesWhatOtherNodesPreparedSoNoGroupIsHalfReserved() {
    // g1 over a and b (b refuses); g2 over a and c (c never answers); both share a's prepare.
    var r = BundleReservation([
      .init(group: g1, bundles: [cpu, cpu], nodes: [a, b], already: [nil, nil]),
      .init(group: g2, bundles: [cpu, cpu], nodes: [a, c], already: [nil, nil]),
    ])
    #expect(r.prepares[a]?.groups.count == 2, "one prepare per node for every group")
    r.prepared(node: a, answers: [true, true])
    r.prepared(node: b, answers: [false])
    r.prepared(node: c, answers: [])
    #expect(r.placed == [false, false])
    let (commits, undo) = r.secondPhase
    #expect(commits.isEmpty)
    #expect(Set(undo.map(\.group)) == [g1, g2] && undo.allSatisfy { $0.node == a })
  }

  @Test func bundlesPlacedBeforeAreNotReservedAgain() {
    var r = BundleReservation([.init(group: g1, bundles: [cpu, cpu, cpu], nodes: [a, b, b], already: [a, nil, nil])])
    #expect(r.prepares[a] == nil)
    #expect(r.prepares[b]?.groups.first?.indices == [1, 2])
    r.prepared(node: b, answers: [true])
    #expect(r.placed == [true])
    #expect(r.reserved(0).map(\.node) == [b])
  }
}

@Suite struct LongPollsTests {
  @Test func pollsAreAnsweredTogetherWhenReadyOrAloneAtTheirTimeout() {
    var p = LongPolls<String, Int>()
    let t1 = p.add("actor", 1), t2 = p.add("actor", 5)
    _ = p.add("other", 9)
    #expect(t1 != nil && t2 != nil && t1 != t2)
    let ready = p.take("actor") { $0 < 3 }
    #expect(ready == [1], "only those waiting for an older version")
    #expect(p.timedOut("actor", token: t1!) == nil, "already answered")
    #expect(p.timedOut("actor", token: t2!) == 5)
    #expect(p.count == 1)
    #expect(p.takeAll() == [9] && p.count == 0)
  }

  @Test func pollsPerKeyAreBounded() {
    var p = LongPolls<Int, Int>()
    for i in 0..<LongPolls<Int, Int>.maxPerKey { _ = p.add(0, i) }
    let over = p.add(0, -1)
    #expect(over == nil, "answered at once by the caller instead")
    let other = p.add(1, 0)
    #expect(other != nil)
  }
}

private func nodeInfo(_ i: UInt8, start: Int64 = 0) -> Swiftray_NodeInfo {
  var n = Swiftray_NodeInfo()
  n.nodeID = Data([i])
  n.nodeManagerEndpoint = "unix:/n\(i).sock"
  n.nodeManagerAddress = "10.0.0.\(i):6380"
  n.total = ResourceSet(units: ["CPU": 4]).proto
  n.available = n.total
  n.startTimeMs = start
  return n
}

@Suite struct NodeTableTests {
  @Test func aDeadNodeStaysDeadAndItsReportsAreFencedWithWhy() {
    var t = NodeTable(health: NodeHealth(failureThreshold: 1))
    _ = t.registered(nodeInfo(1))
    let free = ResourceSet(units: ["CPU": 1]).proto
    let registerAgain = t.reported(Data([1]), available: free, total: nil, demand: [])
    #expect(registerAgain == .taken)
    #expect(t[Data([1])]?.available == free)
    let dead = t.died(Data([1]), detail: "missed 3 health checks")
    #expect(dead?.alive == false && dead?.deathDetail == "missed 3 health checks")
    let deadAsked = t.reported(Data([1]), available: free, total: nil, demand: [])
    #expect(deadAsked == .fenced(detail: "missed 3 health checks"), "declared dead: fenced, not asked to register")
    let unknownAsked = t.reported(Data([9]), available: free, total: nil, demand: [])
    #expect(unknownAsked == .register, "unknown: asked to register")
    #expect(t.health.watched == 0)
  }

  /// The SPREAD test's flake: a group removed, the head credits its bundles back at
  /// once, then a report the node took before it returned them arrives and puts them
  /// back as held, so the next placement sees a full node for a report period.
  @Test func aReportTakenBeforeABundleChangeTheHeadSawDoesNotUndoIt() {
    var t = NodeTable(health: NodeHealth(failureThreshold: 1))
    let id = Data([1])
    _ = t.registered(nodeInfo(1))
    let four = ResourceSet(units: ["CPU": 4]).proto, one = ResourceSet(units: ["CPU": 1]).proto
    let demand = [ResourceSet(units: ["GPU": 1]).proto]
    // A node's report is taken while nothing is in flight.
    #expect(t.reported(id, available: one, total: nil, demand: [], bundleEpoch: 3) == .taken)
    #expect(t[id]?.available == one)
    // The head returns a bundle there and credits it in its view.
    t.bundleChangeStarted(id)
    t.resourcesChanged(id, total: four, available: four)
    #expect(t.bundleChangesInFlight(id) == 1)
    // A report in flight meanwhile: its resources are not taken, its demand is.
    #expect(t.reported(id, available: one, total: four, demand: demand, bundleEpoch: 3) == .taken)
    #expect(t[id]?.available == four)
    #expect(t[id]?.pendingDemand == demand)
    // The node answers the return at epoch 4; a report from before it (3) is stale.
    t.bundleChangeEnded(id, epoch: 4)
    #expect(t.bundleChangesInFlight(id) == 0)
    #expect(t.reported(id, available: one, total: nil, demand: [], bundleEpoch: 3) == .taken)
    #expect(t[id]?.available == four)
    // One taken after it is the truth again (whatever it says).
    let two = ResourceSet(units: ["CPU": 2]).proto
    #expect(t.reported(id, available: two, total: nil, demand: [], bundleEpoch: 4) == .taken)
    #expect(t[id]?.available == two)
    // A change that failed (no answer: epoch 0) leaves the next report to be taken.
    t.bundleChangeStarted(id)
    t.bundleChangeEnded(id, epoch: 0)
    #expect(t.reported(id, available: one, total: nil, demand: [], bundleEpoch: 4) == .taken)
    #expect(t[id]?.available == one)
    // An end without a start (a start for a node not in the table) counts nothing.
    t.bundleChangeEnded(id, epoch: 0)
    t.bundleChangeStarted(Data([9]))
    #expect(t.bundleChangesInFlight(id) == 0 && t.bundleChangesInFlight(Data([9])) == 0)
    // A node that registers again counts its epochs from zero.
    _ = t.registered(nodeInfo(1))
    #expect(t.reported(id, available: two, total: nil, demand: [], bundleEpoch: 0) == .taken)
    #expect(t[id]?.available == two)
  }

  @Test func nodesKnownBeforeAHeadRestartRegisterAgain() {
    var t = NodeTable(health: NodeHealth(failureThreshold: 1))
    var known = nodeInfo(2)
    known.alive = true
    t.restored(known)
    #expect(t[Data([2])]?.alive == false)
    let asked = t.reported(Data([2]), available: known.total, total: nil, demand: [])
    #expect(asked == .register, "asked to register again")
    let back = t.registered(known)
    #expect(back.alive && t[Data([2])]?.alive == true)
    #expect(NodeTable.durable(t[Data([2])]!).pendingDemand.isEmpty)
  }

  /// Found by swiftray-sim: a node that died while the head was down was never declared
  /// dead by the new head (no health check runs for a node that has not registered), so
  /// its actors stayed ALIVE and its objects were never rebuilt; and a node merely not
  /// registered yet was published to drivers as dead.
  @Test func aRestoredNodeIsNotDeadButHealthCheckedAtOnce() {
    var t = NodeTable(health: NodeHealth(failureThreshold: 1))
    var a = nodeInfo(3)
    a.alive = true
    t.restored(a)
    #expect(!NodeTable.isDead(t[Data([3])]!) && t[Data([3])]?.alive == false, "awaiting registration: neither alive nor dead")
    #expect(t.health.watched == 1, "checked from the start: if it died while the head was down, it is found out")
    _ = t.registered(a)
    #expect(t[Data([3])]?.alive == true && t.health.watched == 1)
    var gone = nodeInfo(5)
    gone.alive = false
    gone.deathDetail = "missed 5 health checks"
    t.restored(gone)
    #expect(t[Data([5])].map(NodeTable.isDead) == true, "dead before the restart: still listed dead, for nodes yet to hear")
  }

  /// Found by a CI run: after a head restart, a node pulling from a live node that had
  /// not registered again yet dropped its store from the allowed sources and refused the
  /// pull once its patience ran out.
  @Test func aNodeAwaitingRegistrationStillServesPullsButADeadOneDoesNot() {
    var t = NodeTable(health: NodeHealth(failureThreshold: 1))
    var waiting = nodeInfo(3), gone = nodeInfo(5), alive = nodeInfo(6), storeless = nodeInfo(7)
    waiting.storeAddress = "tcp:10.0.0.3:1"; gone.storeAddress = "tcp:10.0.0.5:1"
    alive.storeAddress = "tcp:10.0.0.6:1"
    waiting.alive = true; gone.alive = false; gone.deathDetail = "missed 5 health checks"
    t.restored(waiting)
    t.restored(gone)
    _ = t.registered(alive)
    _ = t.registered(storeless)
    #expect(NodeTable.pullableStores(t.all) == ["tcp:10.0.0.3:1", "tcp:10.0.0.6:1"])
    _ = t.died(Data([3]), detail: "missed 5 health checks")
    #expect(NodeTable.pullableStores(t.all) == ["tcp:10.0.0.6:1"], "declared dead: no longer a source")
  }

  @Test func deadNodesKeptAreBoundedAndTheTableIsInStartOrder() {
    var t = NodeTable(health: NodeHealth(failureThreshold: 1))
    for i in 0..<(NodeTable.deadNodesKept + 5) {
      var n = nodeInfo(0, start: Int64(i))
      n.nodeID = withUnsafeBytes(of: UInt32(i).bigEndian) { Data($0) }
      _ = t.registered(n)
      _ = t.died(n.nodeID, detail: "gone")
    }
    #expect(t.all.count == NodeTable.deadNodesKept)
    #expect(t.all.first?.startTimeMs == 5, "the oldest dead left first")
    let demand = Array(repeating: ResourceSet(units: ["CPU": 1]).proto, count: 500)
    _ = t.registered(nodeInfo(7))
    _ = t.reported(Data([7]), available: nodeInfo(7).available, total: nil, demand: demand)
    #expect(t[Data([7])]?.pendingDemand.count == NodeTable.demandKept)
  }
}

@Suite struct WorkerDeathLogTests {
  private func w(_ i: Int) -> Data { Data(WorkerID(a: UInt64(i), b: 1, c: 2, d: 3).binary) }

  @Test func aNodeGetsEachExitOnceInOrderAndCatchesUpInBoundedAnswers() {
    var log = WorkerDeathLog(id: 5)
    for i in 0..<(WorkerDeathLog.maxPerAnswer + 10) { log.died(w(i)) }
    let first = log.since(log: 0, next: 0)  // never asked: from the start
    #expect(first.workers.count == WorkerDeathLog.maxPerAnswer && first.workers.first == w(0))
    let rest = log.since(log: 5, next: first.next)
    #expect(rest.workers == (WorkerDeathLog.maxPerAnswer..<(WorkerDeathLog.maxPerAnswer + 10)).map(w))
    #expect(log.since(log: 5, next: rest.next).workers.isEmpty, "nothing new")
  }

  @Test func aPeersNumbersAreTakenAsTheyComeAndOldEntriesGo() {
    var log = WorkerDeathLog(id: 5)
    for i in 0..<(WorkerDeathLog.kept + 3) { log.died(w(i)) }
    #expect(log.since(log: 5, next: 0).workers.first == w(3), "fell behind: from the oldest kept")
    let past = log.since(log: 5, next: .max)
    #expect(past.workers.isEmpty && past.next == log.end, "past the end: nothing")
    #expect(log.since(log: 9, next: .max).workers.first == w(3), "another log (the head restarted): from its start")
    log.died(Data())
    log.died(Data(count: 1 << 20))
    #expect(log.end == UInt64(WorkerDeathLog.kept + 3), "what is not a worker id is no exit")
  }
}
