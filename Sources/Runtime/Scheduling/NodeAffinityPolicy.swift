import Foundation

/// `NodeAffinitySchedulingStrategy(node_id, soft)` as a pure function: to that node when
/// it is alive and can ever fit the request; otherwise rejected with the reason, or with
/// `soft` nil (the caller falls back to the default policy).
public enum NodeAffinityPolicy {
  public static func route(node: NodeID, soft: Bool, needs: ResourceSet, me: NodePicker.NodeView,
                           others: [NodePicker.NodeView]) -> NodePicker.Route? {
    let id = Data(node.binary)
    if let target = ([me] + others).first(where: { $0.id == id }), target.canEverFit(needs) {
      return NodePicker.to(target, me: me)
    }
    if soft { return nil }
    let known = id == me.id || others.contains { $0.id == id }
    return .reject("the task must run on node \(node.hex.prefix(12)) (NodeAffinitySchedulingStrategy, soft=False), which "
      + (known ? "is dead or cannot fit \(needs)" : "is not in the cluster") + "; use soft=True to run it elsewhere then")
  }
}
