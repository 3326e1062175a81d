import Foundation

/// A node's view of the cluster, as the head last reported it, and the routing
/// decisions made from it: where a lease request goes (here, another node by
/// spillback, or nowhere: infeasible), whose turn it is under SPREAD, and which queued
/// requests move to nodes that freed up first (`QueueSpillback`). What is sent to a
/// node counts against it until its next report, so a burst does not all pile onto
/// one node. The random source is injected (seeded in simulations).
///
/// Threading: a value type, owned by the NodeManager under its lock.
public struct ClusterView<RNG: RandomNumberGenerator & Sendable>: Sendable {
  public private(set) var nodes: [NodePicker.NodeView] = []
  public private(set) var spreadTurn = 0
  var rng: RNG

  public init(rng: RNG) { self.rng = rng }

  /// The head's fresh view of every node.
  public mutating func refreshed(_ nodes: [NodePicker.NodeView]) { self.nodes = nodes }

  /// Where a lease request that `needs` resources goes; `me` is this node as it is now.
  public mutating func route(_ key: SchedulingKey, needs: ResourceSet, me: NodePicker.NodeView,
                             preferred: Data?) -> NodePicker.Route {
    if key.strategy == .spread { spreadTurn += 1 }
    let route = NodePicker.route(key, needs: needs, me: me, others: nodes, turn: spreadTurn, preferred: preferred, using: &rng)
    if case .spillback(let address) = route, let i = nodes.firstIndex(where: { $0.address == address }) {
      nodes[i].available = nodes[i].available - needs
    }
    return route
  }

  /// Which of the requests waiting here (`queued`, with what each needs free) go to
  /// other nodes now; `free`: what this node has free; `me`: this node's id.
  public mutating func spill(_ queued: [(id: UInt64, needs: ResourceSet)], free: ResourceSet, me: Data) -> [QueueSpillback.Move] {
    guard !queued.isEmpty else { return [] }
    var others = nodes.filter { $0.id != me }
    let moves = QueueSpillback.moves(queued, free: free, others: &others, using: &rng)
    for o in others { if let i = nodes.firstIndex(where: { $0.id == o.id }) { nodes[i].available = o.available } }
    return moves
  }
}
