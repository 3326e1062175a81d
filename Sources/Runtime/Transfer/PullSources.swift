/// Which stores this node pulls objects from: only those of nodes alive in its cluster
/// view (least exposure: a ref naming any other address, from a confused or hostile
/// owner, never makes this node connect there). A source not in the view yet (a node
/// that joined since the last refresh) waits for up to `patience` refreshes, then is
/// refused. Bounded: past `maxParked` waiting requests, new unknown ones are refused.
///
/// Threading: a value; its owner serializes access (the store's lock).
public struct PullSources<Item> {
  public enum Verdict: Equatable { case allowed, parked, refused }

  public let patience: UInt64
  public let maxParked: Int
  public private(set) var known: Set<String> = []
  private var generation: UInt64 = 0
  private var parked: [(source: String, since: UInt64, item: Item)] = []

  public init(patience: UInt64 = 2, maxParked: Int = 10_000) {
    self.patience = patience; self.maxParked = maxParked
  }

  public var numParked: Int { parked.count }

  /// May `item` pull from `source` now? `.parked` keeps it until a view decides.
  public mutating func check(_ source: String, _ item: Item) -> Verdict {
    if known.contains(source) { return .allowed }
    guard parked.count < maxParked else { return .refused }
    parked.append((source, generation, item))
    return .parked
  }

  /// A fresh view's stores: the parked items it allows, and those that waited `patience`
  /// views in vain.
  public mutating func viewChanged(_ sources: Set<String>) -> (allowed: [Item], refused: [Item]) {
    generation += 1
    known = sources
    var allowed: [Item] = [], refused: [Item] = []
    var keep: [(source: String, since: UInt64, item: Item)] = []
    for p in parked {
      if known.contains(p.source) { allowed.append(p.item) }
      else if generation - p.since >= patience { refused.append(p.item) }
      else { keep.append(p) }
    }
    parked = keep
    return (allowed, refused)
  }
}
