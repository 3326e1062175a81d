import Foundation
import RuntimeProto

/// What tasks share a lease by: their resource shape and scheduling strategy (a SPREAD
/// task must not ride a lease granted for the default policy).
public struct SchedulingKey: Hashable, Sendable, CustomStringConvertible {
  public enum Strategy: Hashable, Sendable {
    case `default`
    case spread
    case nodeAffinity(NodeID, soft: Bool)
  }
  public var shape: ResourceSet
  public var strategy: Strategy

  public init(_ shape: ResourceSet, strategy: Strategy = .default) {
    self.shape = shape; self.strategy = strategy
  }

  public init(shape: ResourceSet, proto: Swiftray_SchedulingStrategy) {
    self.shape = shape
    switch proto.kind {
    case .spread: strategy = .spread
    case .nodeAffinity: strategy = NodeID(binary: proto.nodeID).map { .nodeAffinity($0, soft: proto.soft) } ?? .default
    default: strategy = .default
    }
  }

  public var strategyProto: Swiftray_SchedulingStrategy {
    var p = Swiftray_SchedulingStrategy()
    switch strategy {
    case .default: p.kind = .default
    case .spread: p.kind = .spread
    case .nodeAffinity(let n, let soft):
      p.kind = .nodeAffinity
      p.nodeID = Data(n.binary)
      p.soft = soft
    }
    return p
  }

  public var description: String {
    switch strategy {
    case .default: return shape.description
    case .spread: return "\(shape) (SPREAD)"
    case .nodeAffinity(let n, let soft): return "\(shape) (on node \(n.hex.prefix(12))\(soft ? ", soft" : ""))"
    }
  }
}
