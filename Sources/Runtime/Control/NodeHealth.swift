import Foundation

/// The ControlService's health checks of nodes as a pure state machine (Ray's GCS health
/// check manager): every period each live node is asked once; a node that fails
/// `failureThreshold` checks in a row is dead. One check in flight per node.
///
/// Threading: a value type, owned by the ControlService under its lock.
public struct NodeHealth: Sendable {
  public enum Action: Sendable, Hashable {
    case check(Data)
    /// The node failed too many checks: mark it dead; `detail` says how.
    case died(Data, detail: String)
  }

  struct Node: Sendable {
    var failures = 0
    var checking = false
    var lastError = ""
  }

  public let failureThreshold: Int
  private var nodes: [Data: Node] = [:]

  public init(failureThreshold: Int) { self.failureThreshold = max(1, failureThreshold) }

  public var watched: Int { nodes.count }

  public mutating func nodeRegistered(_ id: Data) { nodes[id] = Node() }

  /// The node left (its daemon stopped cleanly) or is already known dead.
  public mutating func nodeRemoved(_ id: Data) { nodes[id] = nil }

  /// A period passed: check every node that has no check in flight.
  public mutating func tick() -> [Action] {
    var out: [Action] = []
    for (id, var n) in nodes where !n.checking {
      n.checking = true
      nodes[id] = n
      out.append(.check(id))
    }
    return out
  }

  public mutating func checkSucceeded(_ id: Data) {
    guard var n = nodes[id] else { return }
    n.checking = false
    n.failures = 0
    nodes[id] = n
  }

  public mutating func checkFailed(_ id: Data, error: String, periodMs: Int) -> [Action] {
    guard var n = nodes[id] else { return [] }
    n.checking = false
    n.failures += 1
    n.lastError = error
    guard n.failures >= failureThreshold else {
      nodes[id] = n
      return []
    }
    nodes[id] = nil
    return [.died(id, detail: "it failed \(n.failures) health checks in a row (every \(periodMs) ms); the last: \(error)")]
  }
}
