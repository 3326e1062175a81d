/// A bag of resource quantities in fixed point (1/10000 of a unit, as Ray), so that
/// fractional CPUs add and subtract exactly. Value type; thread-safe to copy.
public struct ResourceSet: Hashable, Sendable, CustomStringConvertible {
  public static let unit: Int64 = 10_000
  public static let cpu = "CPU"
  public static let gpu = "GPU"
  public static let memory = "memory"

  /// Quantities in fixed point; never holds zero entries.
  public private(set) var quantities: [String: Int64]

  public init(fixedPoint: [String: Int64] = [:]) {
    quantities = fixedPoint.filter { $0.value != 0 }
  }
  /// Quantities given in units (callers validate first: `maxUnits`); a value beyond
  /// ±`maxUnits` (or infinite) is clamped and NaN is 0, never trapped on.
  public init(units: [String: Double]) {
    var q: [String: Int64] = [:]
    for (k, v) in units { q[k] = Self.fixedPoint(units: v) }
    self.init(fixedPoint: q)
  }

  /// The most of one resource a node or a request may name, in fixed point: ~1.15e14
  /// units (memory is in bytes: 115 TB), beyond any machine, and small enough that a
  /// difference of two never overflows (sums of many saturate, see `+`).
  public static let maxQuantity: Int64 = 1 << 60
  public static var maxUnits: Double { Double(maxQuantity) / Double(unit) }

  static func fixedPoint(units v: Double) -> Int64 {
    guard !v.isNaN else { return 0 }
    let x = (v * Double(unit)).rounded()  // ±infinity clamps below
    return Int64(min(max(x, -Double(maxQuantity)), Double(maxQuantity)))
  }

  /// Quantities from a peer, checked before any arithmetic: each 0 ... `maxQuantity`, at
  /// most 1,024 names of at most 256 bytes. The error names `field` and the resource.
  public static func checked(fixedPoint q: [String: Int64], field: String) throws(SwiftrayError) -> ResourceSet {
    guard q.count <= 1024 else { throw SwiftrayError(.invalidArgument, "\(field): \(q.count) resources (at most 1024)") }
    for (k, v) in q {
      guard !k.isEmpty, k.utf8.count <= 256 else {
        throw SwiftrayError(.invalidArgument, "\(field): a resource name must be 1-256 bytes")
      }
      guard v >= 0, v <= maxQuantity else {
        throw SwiftrayError(.invalidArgument, "\(field): \(k) = \(Double(v) / Double(unit)) is out of range "
          + "(0 ... \(Int64(maxUnits)))")
      }
    }
    return ResourceSet(fixedPoint: q)
  }
  public static let empty = ResourceSet()

  public subscript(name: String) -> Int64 { quantities[name] ?? 0 }
  public func units(_ name: String) -> Double { Double(self[name]) / Double(Self.unit) }
  public var asUnits: [String: Double] { quantities.mapValues { Double($0) / Double(Self.unit) } }
  public var isEmpty: Bool { quantities.isEmpty }

  /// True when every quantity asked for is available here.
  public func contains(_ other: ResourceSet) -> Bool {
    other.quantities.allSatisfy { self[$0.key] >= $0.value }
  }
  /// The names (with amounts in units) that `other` asks for beyond what is here.
  public func shortfall(for other: ResourceSet) -> [String: Double] {
    var out: [String: Double] = [:]
    for (k, v) in other.quantities where self[k] < v {
      out[k] = Double(v - self[k]) / Double(Self.unit)
    }
    return out
  }
  /// Sums and differences saturate at Int64's ends: quantities are checked where they
  /// enter (`checked`), and an accounting slip must not trap a node.
  public static func + (l: ResourceSet, r: ResourceSet) -> ResourceSet {
    var x = l
    x += r
    return x
  }
  public static func - (l: ResourceSet, r: ResourceSet) -> ResourceSet {
    var x = l
    x -= r
    return x
  }
  /// In place, touching only `r`'s names: O(|r|) however many names `l` holds (a node's
  /// view holds every placement group's renamed resources; a whole pass per lease or
  /// bundle would grow with the groups alive).
  public static func += (l: inout ResourceSet, r: ResourceSet) { add(r, to: &l.quantities) }
  public static func -= (l: inout ResourceSet, r: ResourceSet) { add(r, to: &l.quantities, negated: true) }

  /// `q` plus (or, `negated`, minus) `r`, saturating, changing only `r`'s names: a name
  /// that ends at 0 (or, `droppingNonPositive`, at or below 0) leaves `q`. The one
  /// piece of arithmetic for sets and for shapes kept as protos (`NodeTable`).
  static func add(_ r: ResourceSet, to q: inout [String: Int64], negated: Bool = false, droppingNonPositive: Bool = false) {
    for (k, v) in r.quantities {
      let old = q[k] ?? 0
      let new = saturated(negated ? old.subtractingReportingOverflow(v) : old.addingReportingOverflow(v))
      if new == 0 || (droppingNonPositive && new < 0) { q.removeValue(forKey: k) } else { q[k] = new }
    }
  }
  /// An overflowed result wrapped past one end: pin it to that end instead.
  private static func saturated(_ r: (partialValue: Int64, overflow: Bool)) -> Int64 {
    guard r.overflow else { return r.partialValue }
    return r.partialValue < 0 ? .max : .min
  }
  /// The larger quantity of each name: what must be free to satisfy both.
  public func union(_ other: ResourceSet) -> ResourceSet {
    var q = quantities
    for (k, v) in other.quantities { q[k] = max(q[k] ?? 0, v) }
    return ResourceSet(fixedPoint: q)
  }
  public func restricted(to names: Set<String>) -> ResourceSet {
    ResourceSet(fixedPoint: quantities.filter { names.contains($0.key) })
  }
  public var description: String {
    let parts = quantities.keys.sorted().map { k -> String in
      let u = units(k)
      return u == u.rounded() ? "\(k): \(Int(u))" : "\(k): \(u)"
    }
    return "{" + parts.joined(separator: ", ") + "}"
  }
}
