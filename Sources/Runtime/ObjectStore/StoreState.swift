/// The accounting of one node's shared-memory object store (DESIGN §4) as a pure state
/// machine: which objects occupy memory, who pins them, what to spill when the store
/// passes its threshold, and when a create must fail with `ObjectStoreFullError`.
/// Bytes are moved by the shell (`ObjectStore`, next step); this decides. Time is
/// passed in for least-recently-used choices.
///
/// Threading: value type, owned by its shell under a lock.
public struct StoreState: Sendable {
  public struct Limits: Sendable, Equatable {
    public var capacity: Int
    /// Above `capacity * spillThreshold`, unpinned objects are spilled to disk.
    public var spillThreshold: Double
    public init(capacity: Int, spillThreshold: Double = 0.8) {
      self.capacity = capacity; self.spillThreshold = spillThreshold
    }
  }

  public enum Residence: Sendable, Equatable {
    case creating       // being written; counts against capacity, not readable
    case memory
    case spilling       // being written to disk; still readable from memory
    case spilled
    case restoring      // coming back from disk into memory
  }

  public struct Entry: Sendable, Equatable {
    public var size: Int
    public var residence: Residence
    /// Readers with a live mapping, by reader (a process); a pinned object never leaves memory.
    public var pins: [UInt64: Int] = [:]
    public var lastUsed: UInt64
    public var pinCount: Int { pins.values.reduce(0, +) }
    public var inMemory: Bool { residence != .spilled }
  }

  public enum Action: Sendable, Equatable {
    /// Write the object to disk, then report `spillFinished`.
    case spill(ObjectID)
    /// Read it back from disk into memory, then report `restoreFinished`.
    case restore(ObjectID)
    /// Drop its memory (it is spilled, or deleted).
    case releaseMemory(ObjectID)
    case deleteSpillFile(ObjectID)
    /// Wake creates and restores that waited for room.
    case retryWaiting
  }

  public enum CreateOutcome: Sendable, Equatable {
    case created
    /// Room is being made by spilling; ask again after `spillFinished`.
    case waitForSpill
    case full(SwiftrayError)
  }

  public let limits: Limits
  public private(set) var entries: [ObjectID: Entry] = [:]
  /// Bytes of memory in use (creating, in memory, spilling, restoring).
  public private(set) var used = 0

  public init(limits: Limits) { self.limits = limits }

  public var pinnedBytes: Int { entries.values.filter { $0.pinCount > 0 && $0.inMemory }.reduce(0) { $0 + $1.size } }
  public var spilledBytes: Int { entries.values.filter { $0.residence == .spilled }.reduce(0) { $0 + $1.size } }
  var spillingBytes: Int { entries.values.filter { $0.residence == .spilling }.reduce(0) { $0 + $1.size } }

  // MARK: events

  /// A process wants to write an object of `size` bytes.
  public mutating func createRequested(_ id: ObjectID, size: Int, now: UInt64) -> (CreateOutcome, [Action]) {
    if entries[id] != nil { return (.created, []) }  // idempotent (retried task, same id)
    if size > limits.capacity {
      return (.full(fullError(id, size, why: "the object is larger than the whole store")), [])
    }
    if used + size <= limits.capacity {
      entries[id] = Entry(size: size, residence: .creating, lastUsed: now)
      used += size
      return (.created, spillIfAboveThreshold())
    }
    let victims = spillVictims(toFree: used + size - limits.capacity - spillingBytes)
    if victims.isEmpty && spillingBytes == 0 {
      return (.full(fullError(id, size, why: "everything in memory is pinned or being written")), [])
    }
    return (.waitForSpill, victims.map { markSpilling($0) })
  }

  public mutating func sealed(_ id: ObjectID) -> [Action] {
    guard entries[id]?.residence == .creating else { return [] }
    entries[id]?.residence = .memory
    return []
  }

  /// A reader mapped the object. Returns false when it is not in memory (restore first).
  public mutating func pinned(_ id: ObjectID, reader: UInt64, now: UInt64) -> Bool {
    guard var e = entries[id], e.residence == .memory || e.residence == .spilling else { return false }
    e.pins[reader, default: 0] += 1
    e.lastUsed = now
    entries[id] = e
    return true
  }

  public mutating func unpinned(_ id: ObjectID, reader: UInt64) -> [Action] {
    guard var e = entries[id], let n = e.pins[reader] else { return [] }
    e.pins[reader] = n > 1 ? n - 1 : nil
    entries[id] = e
    return spillIfAboveThreshold()
  }

  /// A reader process died: its mappings are gone, and so are its pins.
  public mutating func readerDied(_ reader: UInt64) -> [Action] {
    for id in entries.keys where entries[id]?.pins[reader] != nil { entries[id]?.pins[reader] = nil }
    return spillIfAboveThreshold()
  }

  /// The owner freed the object.
  public mutating func deleted(_ id: ObjectID) -> [Action] {
    guard let e = entries.removeValue(forKey: id) else { return [] }
    var actions: [Action] = []
    switch e.residence {
    case .spilled:
      actions.append(.deleteSpillFile(id))
    case .spilling, .restoring:
      used -= e.size
      actions += [.releaseMemory(id), .deleteSpillFile(id)]
    case .creating, .memory:
      used -= e.size
      actions.append(.releaseMemory(id))
    }
    return actions + [.retryWaiting]
  }

  public mutating func spillFinished(_ id: ObjectID) -> [Action] {
    guard var e = entries[id], e.residence == .spilling else { return [] }
    if e.pinCount > 0 {  // pinned while spilling: keep both copies
      e.residence = .memory
      entries[id] = e
      return [.retryWaiting]
    }
    e.residence = .spilled
    entries[id] = e
    used -= e.size
    return [.releaseMemory(id), .retryWaiting]
  }

  /// A reader wants a spilled object back.
  public mutating func restoreRequested(_ id: ObjectID, now: UInt64) -> (CreateOutcome, [Action]) {
    guard var e = entries[id] else { return (.full(SwiftrayError(.objectLost, "object \(id.hex) is not in this store")), []) }
    guard e.residence == .spilled else { return (.created, []) }
    if used + e.size > limits.capacity {
      let victims = spillVictims(toFree: used + e.size - limits.capacity - spillingBytes)
      if victims.isEmpty && spillingBytes == 0 {
        return (.full(fullError(id, e.size, why: "it cannot be restored from disk")), [])
      }
      return (.waitForSpill, victims.map { markSpilling($0) })
    }
    e.residence = .restoring
    e.lastUsed = now
    entries[id] = e
    used += e.size
    return (.created, [.restore(id)])
  }

  public mutating func restoreFinished(_ id: ObjectID) -> [Action] {
    guard entries[id]?.residence == .restoring else { return [] }
    entries[id]?.residence = .memory
    return [.retryWaiting]
  }

  // MARK: internals

  private mutating func markSpilling(_ id: ObjectID) -> Action {
    entries[id]?.residence = .spilling
    return .spill(id)
  }

  /// Unpinned sealed objects, least recently used first, until `bytes` are covered.
  private func spillVictims(toFree bytes: Int) -> [ObjectID] {
    guard bytes > 0 else { return [] }
    let candidates = entries.filter { $0.value.residence == .memory && $0.value.pinCount == 0 }
      .sorted { ($0.value.lastUsed, $0.key.hex) < ($1.value.lastUsed, $1.key.hex) }
    var freed = 0
    var out: [ObjectID] = []
    for (id, e) in candidates where freed < bytes {
      out.append(id)
      freed += e.size
    }
    return freed >= bytes ? out : []
  }

  private mutating func spillIfAboveThreshold() -> [Action] {
    let threshold = Int(Double(limits.capacity) * limits.spillThreshold)
    let over = used - spillingBytes - threshold
    guard over > 0 else { return [] }
    var victims = spillVictims(toFree: over)
    if victims.isEmpty {  // spill what can be spilled even if it does not reach the threshold
      victims = entries.filter { $0.value.residence == .memory && $0.value.pinCount == 0 }.map(\.key)
        .sorted { $0.hex < $1.hex }
    }
    return victims.map { markSpilling($0) }
  }

  private func fullError(_ id: ObjectID, _ size: Int, why: String) -> SwiftrayError {
    let pinned = entries.filter { $0.value.pinCount > 0 && $0.value.inMemory }
    let readers = Set(pinned.values.flatMap { $0.pins.keys }).count
    return SwiftrayError(.objectStoreFull, """
      Cannot create object \(id.hex) of \(size) bytes: \(why). The object store holds \(used) of \
      \(limits.capacity) bytes; \(pinnedBytes) bytes in \(pinned.count) object(s) are pinned by \(readers) \
      reader(s) (values still referenced from Python); \(spilledBytes) bytes are spilled. Drop references \
      you no longer need, or raise object_store_memory (init(object_store_memory=...) or \
      `swiftray start --object-store-memory`).
      """)
  }
}
