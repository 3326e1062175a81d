import Foundation
import Runtime
import RuntimeProto

/// Network partitions in the simulation, each for a while before the links heal: a node
/// cut off from every other host, or from the head alone (drivers and other nodes still
/// reach it); the cluster split in two (a set of nodes that reach each other but none
/// on the other side); node 0 — where the drivers and the head live — cut off from all
/// the others (which still reach each other). The far side is always the one without
/// node 0. While a node is cut, every message across the cut — its workers', its own, the head's calls to
/// it — is held, as TCP holds them, and delivered in order once it heals; its reports
/// do not reach the head and the head's health checks of it fail. A cut that
/// outlives the health-check time gets the node declared dead (its actors restart
/// elsewhere, its objects are rebuilt, its bundles move) while it still runs; when it
/// heals, what it held in the meantime reaches drivers and the head (late replies, late
/// grants, late constructions), and its first report is answered by the real
/// `NodeTable` with `.fenced`: it stops its workers and is gone (as NodeManager does);
/// its host starts a new node (a new id) a little later.
extension SimCluster {
  /// The host of one end of a channel ("d0", "n3", "w1a2b3c", "head"): drivers and the
  /// head are on node 0.
  func host(_ end: Substring) -> Int? {
    switch end.first {
    case "d": return 0
    case "n": return Int(end.dropFirst())
    case "w": return workerHost[String(end)]
    default: return end == "head" ? 0 : nil
    }
  }

  /// When the cut holding `channel` ("a->b") heals, if it crosses one now.
  func heldUntil(_ channel: String) -> UInt64? {
    let ends = channel.split(separator: ">").map { $0.hasSuffix("-") ? $0.dropLast() : $0 }
    guard ends.count == 2 else { return nil }
    func across(_ end: Substring, _ other: Substring) -> UInt64? {
      guard let h = host(end), let cut = cuts[h], !cut.fromHeadOnly || other == "head" else { return nil }
      // Both ends on the far side of the same cut: they still reach each other.
      if other != "head", let o = host(other), cuts[o]?.start == cut.start { return nil }
      return cut.end
    }
    return [across(ends[0], ends[1]), across(ends[1], ends[0])].compactMap { $0 }.max()
  }

  /// A message on `channel` (see `VirtualTime.send`): held while an end is cut off.
  func send(on channel: String, delay: UInt64, _ label: String, _ run: @escaping () -> Void) {
    guard let end = heldUntil(channel) else { return time.send(on: channel, delay: delay, label, run) }
    activity["message held by a partition", default: 0] += 1
    time.send(on: channel, delay: end - time.now + delay, label + " (held by a partition)", run)
  }

  /// True when `a` and `b` can reach each other now.
  func reachable(_ a: Int, _ b: Int) -> Bool {
    if a == b { return true }
    switch (cuts[a], cuts[b]) {
    case (nil, nil): return true
    case let (x?, y?) where x.start == y.start: return true  // same far side
    case let (x, y): return (x?.fromHeadOnly ?? true) && (y?.fromHeadOnly ?? true)
    }
  }

  /// The kinds of partition a run draws from (the last two cut many nodes at once, so
  /// they are rarer: each leaves fewer nodes for the rest of the run).
  enum PartitionKind { case node, nodeFromHead, split, nodeZero }

  func drawPartition() -> PartitionKind {
    let r = rng.between(0, 11)
    return r < 5 ? .node : r < 10 ? .nodeFromHead : r < 11 ? .split : .nodeZero
  }

  /// Cuts `far` (nodes other than 0, not cut already) off from the rest for `length`.
  func cutOff(_ far: [Int], for length: UInt64, kind: PartitionKind) {
    guard !far.isEmpty else { return }
    let start = time.now
    for n in far { cuts[n] = .init(start: start, end: start + length, fromHeadOnly: kind == .nodeFromHead) }
    faultsInjected["partition: \(kind)", default: 0] += 1
    for n in far {
      time.after(settings.healthTimeout, "health checks of cut-off n\(n)") { [self] in partitionHealthCheck(n, cutAt: start) }
      time.after(length, "n\(n) heals") { [self] in
        guard cuts[n]?.start == start else { return }
        cuts[n] = nil
      }
    }
  }

  /// A partition at a random moment of the fault window: one busy node if there is one
  /// (cutting off an idle one tests little), half the nodes, or all but node 0.
  func injectPartition() {
    let s = settings
    let candidates = nodes.dropFirst().filter { $0.alive && cuts[$0.index] == nil }.map(\.index)
    guard !candidates.isEmpty else { return }
    let kind = drawPartition()
    let length = rng.between(s.healthTimeout / 4, s.healthTimeout * 3)
    switch kind {
    case .node, .nodeFromHead:
      let busy = candidates.filter { !nodes[$0].queue.leases.isEmpty }
      cutOff([(busy.isEmpty ? candidates : busy).randomElement(using: &rng)!], for: length, kind: kind)
    case .split:
      cutOff(candidates.filter { _ in rng.chance(0.5) }, for: length, kind: kind)
    case .nodeZero:
      cutOff(candidates, for: length, kind: kind)
    }
  }

  /// The head's health checks of a node cut off since `start`: it is declared dead if
  /// the cut lasts (checked again later while the head is down).
  func partitionHealthCheck(_ n: Int, cutAt start: UInt64) {
    guard cuts[n]?.start == start, nodes[n].alive else { return }
    guard headUp else {
      return time.after(settings.healthTimeout, "health checks of cut-off n\(n) (head down)") { [self] in
        partitionHealthCheck(n, cutAt: start)
      }
    }
    guard let known = nodeTable[Data(nodes[n].id.binary)], !NodeTable.isDead(known) else { return }
    activity["cut-off node declared dead", default: 0] += 1
    headDeclaresDead(n, detail: "node \(n) missed its health checks (cut off by a simulated partition)")
  }

  /// The head answered a healed node's report with `.fenced`: it stops its workers and
  /// exits (NodeManager's `controlLost`). Its host's supervisor (systemd, KubeRay's pod
  /// restart) starts the daemon again a little later: a new node with a new id, which
  /// registers with its first report, so a fenced far side comes back empty rather than
  /// shrinking the cluster for good.
  func fence(_ n: Int) {
    activity["node fenced", default: 0] += 1
    killNode(n, why: "fenced")
    time.after(rng.between(100 * ms, 1_000 * ms), "the host of fenced n\(n) starts a new node") { [self] in
      newNode()
      activity["node rejoined with a new id", default: 0] += 1
    }
  }
}
