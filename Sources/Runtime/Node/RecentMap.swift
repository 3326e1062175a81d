import DequeModule

/// A map that keeps its newest `capacity` entries, the oldest dropped first: what a node
/// remembers of things it may be asked about later (how a worker ended, an exit seen
/// before its process was known), bounded however many come.
///
/// Threading: a value type, owned under its owner's lock. Every operation is O(1)
/// amortized (a key taken out leaves a stale place in the order, skipped on eviction
/// and swept once they outnumber the live ones).
struct RecentMap<Key: Hashable & Sendable, Value: Sendable>: Sendable {
  let capacity: Int
  private var entries: [Key: (seq: UInt64, value: Value)] = [:]
  private var order: Deque<(key: Key, seq: UInt64)> = []
  private var nextSeq: UInt64 = 0

  init(capacity: Int) { self.capacity = max(1, capacity) }

  var count: Int { entries.count }
  /// Every value kept, in no order.
  var values: [Value] { entries.values.map(\.value) }
  subscript(key: Key) -> Value? { entries[key]?.value }

  mutating func insert(_ value: Value, for key: Key) {
    nextSeq &+= 1
    entries[key] = (nextSeq, value)
    order.append((key, nextSeq))
    while entries.count > capacity, let oldest = order.popFirst() {
      if entries[oldest.key]?.seq == oldest.seq { entries[oldest.key] = nil }
    }
    if order.count > 2 * capacity {
      order = Deque(order.filter { entries[$0.key]?.seq == $0.seq })
    }
  }

  @discardableResult
  mutating func remove(_ key: Key) -> Value? { entries.removeValue(forKey: key)?.value }
}
