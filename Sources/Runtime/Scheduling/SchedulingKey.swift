import Foundation
import RuntimeProto

/// What tasks share a lease by: their resource shape and scheduling strategy (a SPREAD
/// task must not ride a lease granted for the default policy).
public struct SchedulingKey: Hashable, Sendable, CustomStringConvertible {
  public enum Strategy: Hashable, Sendable {
    case `default`
    case spread
    case nodeAffinity(NodeID, soft: Bool)
    /// Inside a placement group's bundle (`index` -1: any). The shape is already renamed
    /// to the bundle's resources (`BundleResources.inside`), so it routes as DEFAULT.
    case placementGroup(PlacementGroupID, index: Int, captureChildTasks: Bool)
  }
  public let shape: ResourceSet
  public let strategy: Strategy
  /// The runtime environment's canonical JSON ("" none): a lease's worker has one
  /// environment, so tasks of different ones never share a lease.
  public let runtimeEnv: String
  /// The fields' hash, worked out once: an owner looks a key up at each event of its
  /// tasks (submitted, pushed, replied), and hashing a shape hashes every resource's
  /// name. Of this process only (`Hasher` is seeded per process), never stored.
  private let fieldsHash: Int

  public init(_ shape: ResourceSet, strategy: Strategy = .default, runtimeEnv: String = "") {
    self.shape = shape; self.strategy = strategy; self.runtimeEnv = runtimeEnv
    fieldsHash = Self.hash(shape, strategy, runtimeEnv)
  }

  public init(shape: ResourceSet, proto: Swiftray_SchedulingStrategy, runtimeEnv: String = "") {
    let strategy: Strategy
    switch proto.kind {
    case .spread: strategy = .spread
    case .nodeAffinity: strategy = NodeID(binary: proto.nodeID).map { .nodeAffinity($0, soft: proto.soft) } ?? .default
    case .placementGroup:
      strategy = PlacementGroupID(binary: proto.placementGroupID).map {
        .placementGroup($0, index: Int(proto.bundleIndex), captureChildTasks: proto.captureChildTasks)
      } ?? .default
    default: strategy = .default
    }
    self.init(shape, strategy: strategy, runtimeEnv: runtimeEnv)
  }

  private static func hash(_ shape: ResourceSet, _ strategy: Strategy, _ runtimeEnv: String) -> Int {
    var h = Hasher()
    h.combine(shape)
    h.combine(strategy)
    h.combine(runtimeEnv)
    return h.finalize()
  }

  public static func == (a: SchedulingKey, b: SchedulingKey) -> Bool {
    a.fieldsHash == b.fieldsHash && a.shape == b.shape && a.strategy == b.strategy && a.runtimeEnv == b.runtimeEnv
  }

  public func hash(into hasher: inout Hasher) { hasher.combine(fieldsHash) }

  public var strategyProto: Swiftray_SchedulingStrategy {
    var p = Swiftray_SchedulingStrategy()
    switch strategy {
    case .default: p.kind = .default
    case .spread: p.kind = .spread
    case .nodeAffinity(let n, let soft):
      p.kind = .nodeAffinity
      p.nodeID = Data(n.binary)
      p.soft = soft
    case .placementGroup(let g, let index, let capture):
      p.kind = .placementGroup
      p.placementGroupID = Data(g.binary)
      p.bundleIndex = Int32(index)
      p.captureChildTasks = capture
    }
    return p
  }

  /// The shape a task of `shape` asks for under `strategy`: renamed to its placement
  /// group's bundle resources when it runs inside one.
  public static func shape(_ shape: ResourceSet, under strategy: Strategy) -> ResourceSet {
    guard case .placementGroup(let g, let index, _) = strategy else { return shape }
    return BundleResources.inside(shape, group: g.hex, index: index)
  }

  public var description: String {
    switch strategy {
    case .default: return shape.description
    case .spread: return "\(shape) (SPREAD)"
    case .nodeAffinity(let n, let soft): return "\(shape) (on node \(n.hex.prefix(12))\(soft ? ", soft" : ""))"
    case .placementGroup(let g, let index, _):
      return "\(BundleResources.plain(shape)) (in placement group \(g.hex.prefix(16)), bundle \(index < 0 ? "any" : String(index)))"
    }
  }
}
