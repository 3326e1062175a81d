import Foundation

/// Data locality as pure functions: a task should run where most of its arguments'
/// bytes already are (in that node's object store), saving their transfer, when that
/// node can take it now.
public enum LocalityPolicy {
  /// The node holding the most argument bytes in its store; nil when no argument is
  /// stored (small values travel inside the task spec).
  public static func preferredNode(_ args: [(node: Data, bytes: UInt64)]) -> Data? {
    var byNode: [Data: UInt64] = [:]
    for a in args where a.bytes > 0 && !a.node.isEmpty { byNode[a.node, default: 0] += a.bytes }
    // Ties go to the smallest node id, so every owner decides alike.
    return byNode.max { a, b in a.value != b.value ? a.value < b.value : b.key.lexicographicallyPrecedes(a.key) }?.key
  }

  /// To the preferred node when it can take the request now; nil (no opinion) otherwise.
  public static func route(preferred: Data?, needs: ResourceSet, me: NodePicker.NodeView,
                           others: [NodePicker.NodeView]) -> NodePicker.Route? {
    guard let preferred, let n = ([me] + others).first(where: { $0.id == preferred }), n.canTakeNow(needs) else { return nil }
    return NodePicker.to(n, me: me)
  }
}
