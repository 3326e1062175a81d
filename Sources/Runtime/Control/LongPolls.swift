/// Long polls waiting at the head for something to change (an actor's state, a
/// placement group's): each is registered under its key with a token, answered together
/// with the others of its key when what they wait for happens, or alone at its timeout.
/// Bounded per key: beyond `maxPerKey` a poll is answered with the state as it is after a
/// short pause (the caller asks again; the pause keeps it from spinning), so peers
/// polling without end cannot grow the table.
///
/// Threading: a value type, owned by the ControlService under its lock.
public struct LongPolls<Key: Hashable & Sendable, Waiter: Sendable>: Sendable {
  var waiting: [Key: [UInt64: Waiter]] = [:]
  var next: UInt64 = 1
  public static var maxPerKey: Int { 10_000 }

  public init() {}

  public var count: Int { waiting.values.reduce(0) { $0 + $1.count } }

  /// Registers a poll; its token, or nil when the key has `maxPerKey` polls already.
  public mutating func add(_ key: Key, _ waiter: Waiter) -> UInt64? {
    guard (waiting[key]?.count ?? 0) < Self.maxPerKey else { return nil }
    let token = next
    next += 1
    waiting[key, default: [:]][token] = waiter
    return token
  }

  /// The poll's timeout: it, when nothing answered it before.
  public mutating func timedOut(_ key: Key, token: UInt64) -> Waiter? {
    let w = waiting[key]?.removeValue(forKey: token)
    if waiting[key]?.isEmpty == true { waiting[key] = nil }
    return w
  }

  /// Takes the polls of `key` that `ready` says are answered now, in registration order.
  public mutating func take(_ key: Key, where ready: (Waiter) -> Bool = { _ in true }) -> [Waiter] {
    guard var ws = waiting.removeValue(forKey: key) else { return [] }
    let done = ws.filter { ready($0.value) }.sorted { $0.key < $1.key }
    for (token, _) in done { ws[token] = nil }
    if !ws.isEmpty { waiting[key] = ws }
    return done.map(\.value)
  }

  /// Every poll (the head is closing).
  public mutating func takeAll() -> [Waiter] {
    defer { waiting.removeAll() }
    return waiting.values.flatMap(\.values)
  }
}
