import Foundation

/// Where a placement group's bundles go, as a pure function of the cluster view (the
/// ControlService then reserves them with a prepare/commit round on those nodes).
/// PACK prefers one node, SPREAD prefers distinct nodes, STRICT_PACK requires one node,
/// STRICT_SPREAD requires distinct nodes. Among the nodes that fit, the least used goes
/// first (ties: the earliest registered), so groups spread load as tasks do.
public enum BundlePlacement {
  public enum Strategy: String, Sendable, CaseIterable {
    case pack = "PACK", spread = "SPREAD", strictPack = "STRICT_PACK", strictSpread = "STRICT_SPREAD"
  }

  public enum Outcome: Sendable, Equatable {
    /// The node of every bundle (the ones already placed keep theirs).
    case placed([Data])
    /// Not with the resources free now; waits for some to free up.
    case notNow(String)
    /// Not with the nodes that exist, however much frees up; waits for a node to join.
    case infeasible(String)
  }

  /// `placed[i]`: the node bundle `i` already holds (rescheduling after a node died
  /// keeps the survivors); nil for the ones to place. `nodes` carry what is free now.
  public static func place(_ bundles: [ResourceSet], _ strategy: Strategy, placed: [Data?],
                           nodes: [NodePicker.NodeView]) -> Outcome {
    var view = Dictionary(nodes.filter(\.alive).map { ($0.id, $0) }) { a, _ in a }
    let todo = bundles.indices.filter { placed[$0] == nil }
    var out = placed
    for i in todo where !view.values.contains(where: { $0.total.contains(bundles[i]) }) {
      return .infeasible("bundle \(i) \(bundles[i]) is larger than any node can hold (\(largest(view.values, for: bundles[i])))")
    }
    let used = Set(placed.compactMap { $0 })
    switch strategy {
    case .strictPack, .pack:
      let need = todo.reduce(ResourceSet()) { $0 + bundles[$1] }
      let home = used.first
      if let one = ordered(view.values, fitting: need, preferring: home.map { [$0] } ?? []).first,
         home == nil || one.id == home {
        for i in todo { out[i] = one.id }
        return .placed(out.map { $0! })
      }
      if strategy == .strictPack {
        let whole = bundles.reduce(ResourceSet()) { $0 + $1 }
        if !view.values.contains(where: { $0.total.contains(whole) && (home == nil || $0.id == home) }) {
          return .infeasible("STRICT_PACK needs \(whole) on one node, and no node is that large")
        }
        return .notNow("no node has \(need) free for all the bundles together (STRICT_PACK)")
      }
      // PACK: as few nodes as it takes, filling the ones already chosen first.
      for i in todo {
        let chosen = Set(out.compactMap { $0 })
        guard let n = ordered(view.values, fitting: bundles[i], preferring: chosen).first else {
          return .notNow("no node has \(bundles[i]) free for bundle \(i)")
        }
        out[i] = n.id
        view[n.id]?.available = n.available - bundles[i]
      }
      return .placed(out.map { $0! })
    case .spread:
      for i in todo {
        let chosen = Set(out.compactMap { $0 })
        let fit = ordered(view.values, fitting: bundles[i], preferring: [])
        guard let n = fit.first(where: { !chosen.contains($0.id) }) ?? fit.first else {
          return .notNow("no node has \(bundles[i]) free for bundle \(i)")
        }
        out[i] = n.id
        view[n.id]?.available = n.available - bundles[i]
      }
      return .placed(out.map { $0! })
    case .strictSpread:
      let free = view.values.filter { !used.contains($0.id) }
      if free.count < todo.count {
        return .infeasible("STRICT_SPREAD needs \(bundles.count) distinct nodes and the cluster has \(view.count) alive")
      }
      if let assignment = distinct(todo, bundles, free, byTotal: false) {
        for (i, n) in assignment { out[i] = n }
        return .placed(out.map { $0! })
      }
      if distinct(todo, bundles, free, byTotal: true) == nil {
        return .infeasible("no \(todo.count) distinct nodes can each hold one of the bundles (STRICT_SPREAD)")
      }
      return .notNow("no \(todo.count) distinct nodes have the bundles free now (STRICT_SPREAD)")
    }
  }

  /// Nodes that have `shape` free, the preferred ones first, then the least used.
  static func ordered(_ nodes: some Sequence<NodePicker.NodeView>, fitting shape: ResourceSet,
                      preferring: Set<Data>) -> [NodePicker.NodeView] {
    nodes.filter { $0.available.contains(shape) }.sorted { a, b in
      let pa = preferring.contains(a.id), pb = preferring.contains(b.id)
      if pa != pb { return pa }
      if a.utilization != b.utilization { return a.utilization < b.utilization }
      if a.startTimeMs != b.startTimeMs { return a.startTimeMs < b.startTimeMs }
      return a.id.lexicographicallyPrecedes(b.id)
    }
  }

  /// One distinct node per bundle (backtracking; groups are small), by free resources
  /// or, `byTotal`, by what the nodes could ever hold.
  static func distinct(_ todo: [Int], _ bundles: [ResourceSet], _ nodes: [NodePicker.NodeView],
                       byTotal: Bool) -> [Int: Data]? {
    let sorted = nodes.sorted { $0.utilization < $1.utilization }
    var taken = Set<Data>()
    var result: [Int: Data] = [:]
    var steps = 0
    func go(_ k: Int) -> Bool {
      if k == todo.count { return true }
      steps += 1
      if steps > 100_000 { return false }  // bounded: give up rather than stall the head
      let i = todo[k]
      for n in sorted where !taken.contains(n.id) && (byTotal ? n.total : n.available).contains(bundles[i]) {
        taken.insert(n.id); result[i] = n.id
        if go(k + 1) { return true }
        taken.remove(n.id); result[i] = nil
      }
      return false
    }
    return go(0) ? result : nil
  }

  static func largest(_ nodes: some Sequence<NodePicker.NodeView>, for shape: ResourceSet) -> String {
    let parts = shape.quantities.keys.sorted().map { k in
      "the largest node has \(nodes.map { $0.total.units(k) }.max() ?? 0) \(k)"
    }
    return parts.joined(separator: ", ")
  }
}
