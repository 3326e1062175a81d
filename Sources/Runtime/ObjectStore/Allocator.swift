/// Placement of objects in the store's one shared-memory arena: first fit over a list
/// of free extents, page-aligned so a reader can map or advise any object on its own,
/// coalescing neighbours on free. Pure value type.
///
/// Threading: value type, owned by `StoreState`.
public struct Allocator: Sendable, Equatable {
  public static let alignment = 4096
  public let capacity: Int
  /// Free extents sorted by offset, never adjacent (they are merged).
  public private(set) var free: [(offset: Int, size: Int)]
  public private(set) var allocated = 0

  public init(capacity: Int) {
    self.capacity = capacity / Self.alignment * Self.alignment
    free = self.capacity > 0 ? [(0, self.capacity)] : []
  }

  public static func == (a: Allocator, b: Allocator) -> Bool {
    a.capacity == b.capacity && a.allocated == b.allocated
      && a.free.elementsEqual(b.free) { $0.offset == $1.offset && $0.size == $1.size }
  }

  /// Bytes an object of `size` occupies.
  public static func rounded(_ size: Int) -> Int { max(1, (size + alignment - 1) / alignment) * alignment }

  public var largestFree: Int { free.map(\.size).max() ?? 0 }

  /// The offset of a fresh extent of `rounded(size)` bytes, or nil when no free extent fits.
  public mutating func allocate(_ size: Int) -> Int? {
    let n = Self.rounded(size)
    guard let i = free.firstIndex(where: { $0.size >= n }) else { return nil }
    let off = free[i].offset
    if free[i].size == n { free.remove(at: i) } else { free[i] = (off + n, free[i].size - n) }
    allocated += n
    return off
  }

  /// Returns the extent at `offset` of an object of `size` bytes.
  public mutating func release(offset: Int, size: Int) {
    let n = Self.rounded(size)
    allocated -= n
    // First free extent after this one.
    var lo = 0, hi = free.count
    while lo < hi { let mid = (lo + hi) / 2; if free[mid].offset < offset { lo = mid + 1 } else { hi = mid } }
    var start = offset, len = n
    var at = lo
    if at < free.count, free[at].offset == start + len { len += free[at].size; free.remove(at: at) }
    if at > 0, free[at - 1].offset + free[at - 1].size == start {
      at -= 1
      start = free[at].offset
      len += free[at].size
      free.remove(at: at)
    }
    free.insert((start, len), at: at)
  }
}
