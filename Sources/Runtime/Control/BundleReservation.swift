import Foundation
import RuntimeProto

/// One pass's reservation of placement-group bundles on their nodes, as a two-phase
/// commit (DESIGN §3, placement groups): one prepare per node carrying every group's
/// bundles there; a group whose bundles all went to one node commits with its prepare;
/// a group spread over several nodes commits (one request per node) only once every one
/// of its nodes prepared, and otherwise gives back what was prepared. A node that does
/// not answer counts as refusing. No group is ever left half-reserved.
///
/// Threading: a value type, used by one ControlService task at a time.
public struct BundleReservation: Sendable {
  /// A group to place: its bundles, the node chosen for each, and those placed before.
  public struct Round: Sendable {
    public var group: Data
    public var bundles: [ResourceSet]
    public var nodes: [Data]
    public var already: [Data?]
    public init(group: Data, bundles: [ResourceSet], nodes: [Data], already: [Data?]) {
      self.group = group; self.bundles = bundles; self.nodes = nodes; self.already = already
    }
  }

  /// What to undo on a node: the group's bundles prepared there.
  public struct Undo: Sendable, Equatable {
    public var node: Data
    public var group: Data
    public var indices: [Int]
  }

  public let rounds: [Round]
  /// Per round: node -> the indices of its bundles to place there.
  let perRound: [[Data: [Int]]]
  /// Per node: its prepare request, and which round each of its entries belongs to.
  public private(set) var prepares: [Data: Swiftray_PrepareBundlesRequest] = [:]
  var entries: [Data: [Int]] = [:]
  /// prepared[round][node]
  var prepared: [[Data: Bool]]

  public init(_ rounds: [Round]) {
    self.rounds = rounds
    perRound = rounds.map { r in
      var m: [Data: [Int]] = [:]
      for i in r.bundles.indices where i < r.nodes.count && (i >= r.already.count || r.already[i] == nil) {
        m[r.nodes[i], default: []].append(i)
      }
      return m
    }
    prepared = Array(repeating: [:], count: rounds.count)
    for (k, m) in perRound.enumerated() {
      for (node, indices) in m.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
        var g = Swiftray_BundleReservation()
        g.placementGroupID = rounds[k].group
        g.indices = indices.map(Int32.init)
        g.bundles = indices.map { rounds[k].bundles[$0].proto }
        g.commit = m.count == 1
        prepares[node, default: Swiftray_PrepareBundlesRequest()].groups.append(g)
        entries[node, default: []].append(k)
      }
    }
  }

  /// A node answered its prepare, one verdict per entry (fewer, or none: it did not
  /// answer; the missing count as refusals).
  public mutating func prepared(node: Data, answers: [Bool]) {
    for (j, k) in (entries[node] ?? []).enumerated() { prepared[k][node] = j < answers.count && answers[j] }
  }

  /// Per round: whether every node of it prepared.
  public var placed: [Bool] {
    perRound.indices.map { k in perRound[k].keys.allSatisfy { prepared[k][$0] == true } }
  }

  /// The second phase: groups to commit per node (multi-node rounds every node of which
  /// prepared), and the bundles to give back where a round failed.
  public var secondPhase: (commits: [Data: [Data]], undo: [Undo]) {
    let ok = placed
    var commits: [Data: [Data]] = [:]
    var undo: [Undo] = []
    for k in perRound.indices where perRound[k].count > 1 {
      for (node, indices) in perRound[k].sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
        if ok[k] { commits[node, default: []].append(rounds[k].group) }
        else if prepared[k][node] == true { undo.append(Undo(node: node, group: rounds[k].group, indices: indices)) }
      }
    }
    return (commits, undo)
  }

  /// The bundles a placed round now holds, by node (to take into the cluster view).
  public func reserved(_ k: Int) -> [(node: Data, bundles: [(index: Int, shape: ResourceSet)])] {
    perRound[k].sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }).map { node, indices in
      (node, indices.map { ($0, rounds[k].bundles[$0]) })
    }
  }
}
