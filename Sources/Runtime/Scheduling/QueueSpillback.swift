import Foundation

/// Requests waiting in a node's lease queue that the node cannot run now but another
/// node can: they go there (spillback from the queue), as Ray's raylet spills queued
/// work when its view shows room elsewhere. Without this, a request routed here on a
/// stale view (another node looked busy, or had not reported yet) waits behind this
/// node's running tasks while another node sits idle. Pure function of the view.
///
/// Threading: pure; the NodeManager calls it under its lock with each fresh view.
public enum QueueSpillback {
  public struct Move: Sendable, Equatable {
    public var requestID: UInt64
    public var address: String
    public init(requestID: UInt64, address: String) { self.requestID = requestID; self.address = address }
  }

  /// `queued`: the movable waiting requests, oldest first, with what each needs free.
  /// `free`: what this node has free now; the oldest requests that fit it stay (they are
  /// granted here as soon as a worker is ready). `others`: the other nodes (their free
  /// resources are debited as requests are sent to them).
  public static func moves(_ queued: [(id: UInt64, needs: ResourceSet)], free: ResourceSet,
                           others: inout [NodePicker.NodeView], using rng: inout some RandomNumberGenerator) -> [Move] {
    var free = free
    var out: [Move] = []
    for q in queued {
      if free.contains(q.needs) {
        free = free - q.needs
        continue
      }
      let candidates = others.indices.filter { others[$0].canTakeNow(q.needs) }
      guard !candidates.isEmpty else { continue }
      // As the hybrid policy: a random idle node, else one of the least used few.
      let idle = candidates.filter { others[$0].utilization < HybridPolicy.spreadThreshold }
      let pick: Int
      if let i = idle.randomElement(using: &rng) {
        pick = i
      } else {
        let best = HybridPolicy.bestFew(candidates.map { others[$0] }).map(\.id)
        pick = candidates.filter { best.contains(others[$0].id) }.randomElement(using: &rng)!
      }
      others[pick].available = others[pick].available - q.needs
      out.append(Move(requestID: q.id, address: others[pick].address))
    }
    return out
  }
}
