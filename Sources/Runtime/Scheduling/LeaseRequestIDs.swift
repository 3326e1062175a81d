import Foundation

/// A node's own numbers for the lease requests it holds. Each owner numbers its
/// requests itself, so two owners' numbers may be equal: keyed by (owner, number), one
/// caller can never answer, overwrite or cancel another's request.
///
/// Threading: value type, owned by the NodeManager under its lock.
public struct LeaseRequestIDs: Sendable {
  public struct Key: Hashable, Sendable {
    public let owner: Data
    public let number: UInt64
    public init(owner: Data, number: UInt64) { self.owner = owner; self.number = number }
  }
  private var byKey: [Key: UInt64] = [:]
  private var keys: [UInt64: Key] = [:]
  private var next: UInt64 = 1

  public init() {}

  /// The node's id for a new request; nil when that owner already has a request of
  /// that number here (a bug or a replay: it is refused, the first one keeps waiting).
  public mutating func admit(_ key: Key) -> UInt64? {
    guard byKey[key] == nil else { return nil }
    let id = next
    next += 1
    byKey[key] = id
    keys[id] = key
    return id
  }

  /// The node's id of `key`'s request while it is pending.
  public func find(_ key: Key) -> UInt64? { byKey[key] }

  /// The request was answered (granted, refused, cancelled, moved): its key is free.
  public mutating func settled(_ id: UInt64) {
    guard let key = keys.removeValue(forKey: id) else { return }
    byKey[key] = nil
  }

  public var pending: Int { keys.count }
}
