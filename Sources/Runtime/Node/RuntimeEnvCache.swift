/// What a node's runtime-environment cache holds (unpacked packages, pip virtualenvs),
/// how big each is and when it was last used, and which to delete: those no live
/// environment uses, when they have not been used for `ttl` or while the cache is over
/// its size, least recently used first.
///
/// Threading: a value type, owned by `RuntimeEnvAgent` (an actor). Time is passed in.
public struct RuntimeEnvCache: Sendable {
  public enum Resource: Hashable, Sendable, CustomStringConvertible {
    case package(RuntimeEnv.Package)
    /// A virtualenv, by `RuntimeEnv.pipKey`.
    case venv(String)
    public var description: String {
      switch self {
      case .package(let p): return p.uri
      case .venv(let k): return "pip env \(k)"
      }
    }
  }

  public struct Entry: Sendable, Equatable {
    public var path: String
    public var bytes: Int
    public var lastUsed: UInt64
  }

  public struct Environment: Sendable, Equatable {
    public var resources: Set<Resource>
    public var lastUsed: UInt64
  }

  public private(set) var entries: [Resource: Entry] = [:]
  /// The environments set up here, by `RuntimeEnv.key`: what each needs, when last used.
  public private(set) var environments: [String: Environment] = [:]
  /// An environment nothing uses is forgotten after this long at least (or the TTL):
  /// one just set up is not in use until its request is queued.
  public static let environmentGraceNanos: UInt64 = 60_000_000_000
  public private(set) var totalBytes = 0

  public init() {}

  public static func resources(of env: RuntimeEnv) -> Set<Resource> {
    var r = Set(env.packages.map(Resource.package))
    if let k = env.pipKey { r.insert(.venv(k)) }
    return r
  }

  public func path(_ r: Resource) -> String? { entries[r]?.path }

  /// `r` was set up at `path`, `bytes` big.
  public mutating func added(_ r: Resource, path: String, bytes: Int, now: UInt64) {
    if let old = entries[r] { totalBytes -= old.bytes }
    entries[r] = Entry(path: path, bytes: max(0, bytes), lastUsed: now)
    totalBytes += max(0, bytes)
  }

  /// Environment `env` was set up (or used again) at `now`.
  public mutating func used(_ env: RuntimeEnv, now: UInt64) {
    let rs = Self.resources(of: env)
    environments[env.key] = Environment(resources: rs, lastUsed: now)
    for r in rs { entries[r]?.lastUsed = now }
  }

  /// What to delete now, given the environments live workers, requests or set-ups use
  /// (by key): the resources (forgotten here as they are returned), and the environments
  /// forgotten (one that needs a deleted resource, or unused for the TTL and at least
  /// `environmentGraceNanos`), whose contexts the node must drop: they are set up again
  /// when asked for.
  public mutating func evictions(inUse: Set<String>, now: UInt64, maxBytes: Int, ttlNanos: UInt64)
    -> (resources: [(Resource, String)], forgotten: [String]) {
    var needed = Set<Resource>()
    for k in inUse { needed.formUnion(environments[k]?.resources ?? []) }
    let idle = entries.filter { !needed.contains($0.key) }.sorted { $0.value.lastUsed < $1.value.lastUsed }
    var out: [(Resource, String)] = []
    for (r, e) in idle {
      let stale = now >= e.lastUsed && now - e.lastUsed >= ttlNanos
      guard stale || totalBytes > maxBytes else { continue }
      entries[r] = nil
      totalBytes -= e.bytes
      out.append((r, e.path))
    }
    let gone = Set(out.map(\.0))
    let patience = max(ttlNanos, Self.environmentGraceNanos)
    let forgotten = environments.filter { k, e in
      !inUse.contains(k) && (!gone.isDisjoint(with: e.resources) || (now >= e.lastUsed && now - e.lastUsed >= patience))
    }.map(\.key)
    for k in forgotten { environments[k] = nil }
    return (out, forgotten)
  }
}
