import Foundation

/// Where a lease request goes and where an actor is placed, as pure functions of the
/// cluster view. Each policy lives in its own file (`HybridPolicy`, `SpreadPolicy`,
/// `NodeAffinityPolicy`, `LocalityPolicy`); `route` picks one by the request's strategy.
public enum NodePicker {
  public struct NodeView: Sendable, Equatable {
    public var id: Data
    public var address: String
    public var total: ResourceSet
    public var available: ResourceSet
    public var alive: Bool
    public var startTimeMs: Int64
    public init(id: Data, address: String, total: ResourceSet, available: ResourceSet, alive: Bool, startTimeMs: Int64) {
      self.id = id; self.address = address; self.total = total; self.available = available
      self.alive = alive; self.startTimeMs = startTimeMs
    }

    /// The busiest resource of the node: 0 (idle) ... 1 (full).
    public var utilization: Double {
      total.quantities.map { k, t in t > 0 ? Double(t - available[k]) / Double(t) : 0 }.max() ?? 0
    }
    public func canEverFit(_ shape: ResourceSet) -> Bool { alive && total.contains(shape) }
    public func canTakeNow(_ shape: ResourceSet) -> Bool { alive && available.contains(shape) }
  }

  public enum Route: Sendable, Hashable {
    case local
    case spillback(String)
    case reject(String)
  }

  /// The best node for `shape` (actor placement): nodes that can never fit it are out;
  /// among the rest, those with the shape free now first, then the least used (ties:
  /// the earliest registered). nil when no live node can ever fit it.
  public static func pick(_ shape: ResourceSet, among nodes: [NodeView], excluding: Data? = nil) -> NodeView? {
    nodes.filter { $0.id != excluding && $0.canEverFit(shape) }.min { a, b in
      let fa = a.available.contains(shape), fb = b.available.contains(shape)
      if fa != fb { return fa }
      let ua = a.utilization, ub = b.utilization
      if ua != ub { return ua < ub }
      return a.startTimeMs < b.startTimeMs
    }
  }

  /// Where a lease request that arrived at node `me` goes, by its strategy. DEFAULT:
  /// to the node holding most of its arguments' bytes when that node can take it now
  /// (`preferred`, see `LocalityPolicy`), else the hybrid policy. `turn` counts this
  /// node's SPREAD requests.
  public static func route(_ key: SchedulingKey, needs: ResourceSet, me: NodeView, others: [NodeView], turn: Int,
                           preferred: Data? = nil, using rng: inout some RandomNumberGenerator) -> Route {
    let others = others.filter { $0.id != me.id }
    switch key.strategy {
    case .default, .placementGroup:
      if let r = LocalityPolicy.route(preferred: preferred, needs: needs, me: me, others: others) { return r }
      return HybridPolicy.route(needs: needs, me: me, others: others, using: &rng)
    case .spread:
      return SpreadPolicy.route(needs: needs, me: me, others: others, turn: turn)
        ?? HybridPolicy.route(needs: needs, me: me, others: others, using: &rng)
    case .nodeAffinity(let node, let soft):
      return NodeAffinityPolicy.route(node: node, soft: soft, needs: needs, me: me, others: others)
        ?? HybridPolicy.route(needs: needs, me: me, others: others, using: &rng)
    }
  }

  static func to(_ n: NodeView, me: NodeView) -> Route { n.id == me.id ? .local : .spillback(n.address) }
}
