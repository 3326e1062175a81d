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

  public enum Route: Sendable, Equatable {
    case local
    case spillback(String)
    case reject(String)
  }

  /// Where a lease request that arrived at node `me` goes, by its strategy: DEFAULT stays
  /// when this node can ever fit it, else the best node that can; SPREAD takes the
  /// feasible nodes in turn (`turn` counts this node's SPREAD requests); NODE_AFFINITY
  /// goes to its node, or (soft) falls back to DEFAULT when that node is dead or too small.
  public static func route(_ key: SchedulingKey, needs: ResourceSet, me: NodeView, others: [NodeView], turn: Int) -> Route {
    let others = others.filter { $0.id != me.id }
    func byDefault() -> Route {
      if me.total.contains(needs) { return .local }
      return pick(needs, among: others).map { .spillback($0.address) } ?? .local
    }
    switch key.strategy {
    case .default:
      return byDefault()
    case .spread:
      let feasible = ([me] + others).filter { $0.alive && $0.total.contains(needs) }.sorted { ($0.startTimeMs, $0.address) < ($1.startTimeMs, $1.address) }
      guard !feasible.isEmpty else { return byDefault() }
      let target = feasible[turn % feasible.count]
      return target.id == me.id ? .local : .spillback(target.address)
    case .nodeAffinity(let node, let soft):
      let nodeData = Data(node.binary)
      if nodeData == me.id { return soft && !me.total.contains(needs) ? byDefault() : .local }
      if let target = others.first(where: { $0.id == nodeData && $0.alive }), target.total.contains(needs) {
        return .spillback(target.address)
      }
      if soft { return byDefault() }
      let known = others.contains { $0.id == nodeData }
      return .reject("the task must run on node \(node.hex.prefix(12)) (NodeAffinitySchedulingStrategy, soft=False), which "
        + (known ? "is dead or cannot fit \(needs)" : "is not in the cluster") + "; use soft=True to run it elsewhere then")
    }
  }
}
