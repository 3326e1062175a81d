/// Which GPUs of a node (or of a placement group bundle) each lease holds, as Ray
/// assigns unit-instance resources: a whole-GPU request gets that many GPUs, each to
/// itself, lowest ids first; a fractional one shares a GPU with other fractions, packed
/// onto the fullest GPU that still has room (best fit), so whole GPUs stay free for
/// whole-GPU requests. The worker then sees its ids in `CUDA_VISIBLE_DEVICES`.
/// Pure value type; amounts in `ResourceSet` fixed point.
///
/// Threading: a value type inside `LeaseQueue`, under the NodeManager's lock.
public struct GPUInstances: Sendable, Equatable {
  /// A part of one GPU: its id and how much of it.
  public struct Share: Sendable, Hashable {
    public var id: Int
    public var amount: Int64
    public init(id: Int, amount: Int64) { self.id = id; self.amount = amount }
  }

  /// Free capacity of each GPU by id, in id order.
  public private(set) var free: [Share]

  /// `count` GPUs with ids 0..<count, all free.
  public init(count: Int) {
    free = (0..<max(0, count)).map { Share(id: $0, amount: ResourceSet.unit) }
  }

  /// The GPUs a bundle reserved (its shares become its own pool).
  public init(shares: [Share]) {
    var byID: [Int: Int64] = [:]
    for s in shares { byID[s.id, default: 0] += s.amount }
    free = byID.keys.sorted().map { Share(id: $0, amount: byID[$0]!) }
  }

  public var isEmpty: Bool { free.isEmpty }

  /// True when `amount` can be assigned now.
  public func canTake(_ amount: Int64) -> Bool {
    var copy = self
    return copy.take(amount) != nil
  }

  /// Assigns `amount` (its whole GPUs, then its fraction); nil, and nothing taken,
  /// when the free GPUs cannot hold it the way it must be held.
  public mutating func take(_ amount: Int64) -> [Share]? {
    guard amount > 0 else { return [] }
    let unit = ResourceSet.unit
    let whole = Int(amount / unit), fraction = amount % unit
    var chosen: [Share] = []
    var used = Set<Int>()
    for s in free where s.amount == unit && chosen.count < whole {
      chosen.append(Share(id: s.id, amount: unit))
      used.insert(s.id)
    }
    guard chosen.count == whole else { return nil }
    if fraction > 0 {
      let fits = free.filter { !used.contains($0.id) && $0.amount >= fraction }
      guard let best = fits.min(by: { ($0.amount, $0.id) < ($1.amount, $1.id) }) else { return nil }
      chosen.append(Share(id: best.id, amount: fraction))
    }
    for c in chosen { adjust(c.id, by: -c.amount) }
    return chosen
  }

  /// Takes back what `take` gave.
  public mutating func give(_ shares: [Share]) {
    for s in shares { adjust(s.id, by: s.amount) }
  }

  private mutating func adjust(_ id: Int, by delta: Int64) {
    if let i = free.firstIndex(where: { $0.id == id }) {
      free[i].amount += delta
    } else {
      free.append(Share(id: id, amount: delta))
      free.sort { $0.id < $1.id }
    }
  }
}
