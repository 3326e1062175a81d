import Foundation

/// Where a request that this node cannot serve should go (spillback), and where an actor
/// should be placed: a pure function of the cluster view. Nodes whose total resources
/// can never fit the shape are out; among the rest, those with the shape free now come
/// first, and the least used of those is picked (ties: the earliest registered).
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
  }

  /// The best node for `shape`, or nil when no live node can ever fit it.
  public static func pick(_ shape: ResourceSet, among nodes: [NodeView], excluding: Data? = nil) -> NodeView? {
    let feasible = nodes.filter { $0.alive && $0.id != excluding && $0.total.contains(shape) }
    func use(_ n: NodeView) -> Double {
      // The busiest resource of the node, 0 (idle) ... 1 (full).
      let used = n.total.quantities.map { k, t in t > 0 ? Double(t - n.available[k]) / Double(t) : 0 }
      return used.max() ?? 0
    }
    return feasible.min { a, b in
      let fa = a.available.contains(shape), fb = b.available.contains(shape)
      if fa != fb { return fa }
      let ua = use(a), ub = use(b)
      if ua != ub { return ua < ub }
      return a.startTimeMs < b.startTimeMs
    }
  }
}
