import Foundation

/// `scheduling_strategy="SPREAD"` as a pure function: the nodes that can ever fit the
/// request, in registration order, taken in turn (`turn` counts this node's SPREAD
/// requests). nil when no node can fit it (the caller falls back to the default).
public enum SpreadPolicy {
  public static func route(needs: ResourceSet, me: NodePicker.NodeView, others: [NodePicker.NodeView], turn: Int) -> NodePicker.Route? {
    let feasible = ([me] + others).filter { $0.canEverFit(needs) }
      .sorted { ($0.startTimeMs, $0.address) < ($1.startTimeMs, $1.address) }
    guard !feasible.isEmpty else { return nil }
    return NodePicker.to(feasible[turn % feasible.count], me: me)
  }
}
