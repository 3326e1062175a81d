import Foundation

/// `scheduling_strategy="SPREAD"` as a pure function: the nodes that can ever fit the
/// request, in registration order, taken in turn (`turn` counts this node's SPREAD
/// requests). nil when no node can fit it (the caller falls back to the default).
public enum SpreadPolicy {
  public static func route(needs: ResourceSet, me: NodePicker.NodeView, others: [NodePicker.NodeView], turn: Int) -> NodePicker.Route? {
    pick(needs: needs, among: [me] + others, turn: turn).map { NodePicker.to($0, me: me) }
  }

  /// The node whose turn it is among those that could ever fit `needs`, in a fixed
  /// order (oldest first): one turn counter spreads, wherever it is kept — a node's for
  /// the tasks it routes, the head's for the actors it places.
  public static func pick(needs: ResourceSet, among nodes: [NodePicker.NodeView], turn: Int) -> NodePicker.NodeView? {
    let feasible = nodes.filter { $0.canEverFit(needs) }
      .sorted { ($0.startTimeMs, $0.address) < ($1.startTimeMs, $1.address) }
    guard !feasible.isEmpty else { return nil }
    return feasible[turn % feasible.count]
  }
}
