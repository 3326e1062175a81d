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
  public init(units: [String: Double]) {
    var q: [String: Int64] = [:]
    for (k, v) in units { q[k] = Int64((v * Double(Self.unit)).rounded()) }
    self.init(fixedPoint: q)
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
  public static func + (l: ResourceSet, r: ResourceSet) -> ResourceSet {
    var q = l.quantities
    for (k, v) in r.quantities { q[k, default: 0] += v }
    return ResourceSet(fixedPoint: q)
  }
  public static func - (l: ResourceSet, r: ResourceSet) -> ResourceSet {
    var q = l.quantities
    for (k, v) in r.quantities { q[k, default: 0] -= v }
    return ResourceSet(fixedPoint: q)
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
