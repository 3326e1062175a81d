import DequeModule
import Foundation

/// A node's copy of the head's key-value entries that never change once written, so the
/// workers it starts read them from their node (`kv_get` frames) and the head answers
/// each key once per node instead of once per worker.
///
/// Only the namespaces whose values are written once are kept (`cached`): a function's
/// or class's pickle under the hash of that pickle (`fn`, put without overwrite), and a
/// job's record, written by its driver's `init` before its first task (`job`). A key
/// that was not found is never kept: it may be written next.
///
/// Bounded by entries and bytes; the oldest entry goes first.
/// Threading: a value type; its owner serialises access (the NodeManager's lock).
public struct NodeKVCache: Sendable {
  public static let cached: Set<String> = ["fn", "job"]

  struct Key: Hashable {
    let namespace: String
    let key: Data
  }

  public let maxEntries: Int
  public let maxBytes: Int
  public private(set) var bytes = 0
  private var values: [Key: Data] = [:]
  private var order: Deque<Key> = []

  public init(maxEntries: Int = 4096, maxBytes: Int = 64 << 20) {
    self.maxEntries = max(1, maxEntries)
    self.maxBytes = max(1, maxBytes)
  }

  public var count: Int { values.count }

  public static func cacheable(_ namespace: String) -> Bool { cached.contains(namespace) }

  public func get(_ namespace: String, _ key: Data) -> Data? {
    values[Key(namespace: namespace, key: key)]
  }

  /// Keeps a found value of a cached namespace (a value larger than the whole cache is
  /// not kept); the oldest entries go to make room.
  public mutating func found(_ namespace: String, _ key: Data, _ value: Data) {
    guard Self.cacheable(namespace) else { return }
    let k = Key(namespace: namespace, key: key)
    let size = key.count + value.count
    guard values[k] == nil, size <= maxBytes else { return }
    while !order.isEmpty && (values.count >= maxEntries || bytes + size > maxBytes) {
      let old = order.removeFirst()
      if let v = values.removeValue(forKey: old) { bytes -= old.key.count + v.count }
    }
    values[k] = value
    order.append(k)
    bytes += size
  }
}
