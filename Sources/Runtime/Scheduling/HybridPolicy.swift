import Foundation

/// Ray's default ("hybrid") policy as a pure function: pack work onto this node while it
/// is less than half used, then spread it: a random pick among the other nodes under
/// half use that can take it now, else among the best few (least used) that can, else
/// wait here if this node can ever fit it, else go to the least used node that can.
/// Randomness keeps owners that decide at the same moment from piling onto one node.
public enum HybridPolicy {
  /// Below this utilization a node counts as idle (Ray's `scheduler_spread_threshold`).
  public static let spreadThreshold = 0.5
  /// The best few: this fraction of the candidates, at least one (Ray's
  /// `scheduler_top_k_fraction`).
  public static let topKFraction = 0.2

  public static func route(needs: ResourceSet, me: NodePicker.NodeView, others: [NodePicker.NodeView],
                           using rng: inout some RandomNumberGenerator) -> NodePicker.Route {
    if me.canTakeNow(needs) && me.utilization < spreadThreshold { return .local }
    let free = ([me] + others).filter { $0.canTakeNow(needs) }
    let idle = free.filter { $0.utilization < spreadThreshold }
    if let n = idle.randomElement(using: &rng) { return NodePicker.to(n, me: me) }
    if !free.isEmpty { return NodePicker.to(bestFew(free).randomElement(using: &rng)!, me: me) }
    // Nobody can take it now: queue where it will fit once resources free up.
    if me.canEverFit(needs) { return .local }
    let feasible = others.filter { $0.canEverFit(needs) }
    guard !feasible.isEmpty else { return .local }  // fits nowhere: the local queue warns and waits
    return NodePicker.to(bestFew(feasible).randomElement(using: &rng)!, me: me)
  }

  /// The least used `topKFraction` of `nodes` (at least one; ties at the cut included).
  static func bestFew(_ nodes: [NodePicker.NodeView]) -> [NodePicker.NodeView] {
    let sorted = nodes.sorted { $0.utilization < $1.utilization }
    let k = max(1, Int((Double(sorted.count) * topKFraction).rounded(.up)))
    let cut = sorted[k - 1].utilization
    return sorted.filter { $0.utilization <= cut }
  }
}
