import DequeModule
/// The accounting of one node's shared-memory object store (DESIGN §4) as a pure state
/// machine: where each object sits in the arena, who pins it, what to spill when the
/// store passes its threshold, and when a create must fail with `ObjectStoreFullError`.
/// The shell (`ObjectStore`) moves bytes; this decides. Time is passed in for
/// least-recently-used choices. Processes are named by pid (creators, owners, readers).
///
/// Safety rule: an extent is reused only when its object is neither pinned nor being
/// written; a pinned object that is deleted keeps its extent until the last unpin.
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
    /// Where it sits in the arena; nil while spilled.
    public var offset: Int?
    public var residence: Residence
    /// Live mappings per reader process; a pinned object never leaves memory.
    public var pins: [UInt64: Int] = [:]
    public var lastUsed: UInt64
    public var creator: UInt64
    public var owner: UInt64
    /// Deleted by its owner while pinned: gone for new readers, extent kept until unpinned.
    public var deleted = false
    /// A copy pulled from another node (the primary lives there): under memory pressure
    /// it is dropped, never spilled.
    public var secondary = false
    public var pinCount: Int { pins.values.reduce(0, +) }
    public var inMemory: Bool { offset != nil }
  }

  public enum Action: Sendable, Equatable {
    /// Write the object's bytes at `offset` to disk, then report `spillFinished`.
    case spill(ObjectID, offset: Int, size: Int)
    /// Read it back from disk to `offset`, then report `restoreFinished`.
    case restore(ObjectID, offset: Int, size: Int)
    case deleteSpillFile(ObjectID)
    /// A secondary copy was dropped to make room (for the shell's counters).
    case evicted(ObjectID, size: Int)
    /// Room was made or an object became readable: retry creates and pins that waited.
    case retryWaiting
  }

  public enum CreateOutcome: Sendable, Equatable {
    /// Write `size` bytes at `offset`, then seal.
    case created(offset: Int)
    /// The object exists already (a retried task made it before): do not write.
    case exists
    /// Room is being made by spilling; ask again on `retryWaiting`.
    case waitForSpill
    /// An earlier copy of the id is not settled; ask again on `retryWaiting`. Either a
    /// pulled copy is still arriving (the pull seals it, and this create then keeps it
    /// as the primary, or drops it), or a freed copy is still mapped by a reader or
    /// being written (its extent is released when that ends; writing over the entry
    /// now would lose that extent for good).
    case waitForCopy
    case full(SwiftrayError)
  }

  public enum PinOutcome: Sendable, Equatable {
    case pinned(offset: Int, size: Int)
    /// Being written or restored; ask again on `retryWaiting`.
    case wait
    case notFound
    /// It was here and is gone for a reason readers should hear (`restoreFailed`).
    case lost(String)
    case full(SwiftrayError)
  }

  public struct Stats: Sendable, Equatable {
    public var capacity = 0, used = 0, pinnedBytes = 0, spilledBytes = 0
    public var objects = 0, pinnedObjects = 0, spilledObjects = 0, readers = 0, secondaryObjects = 0
  }

  public let limits: Limits
  public private(set) var entries: [ObjectID: Entry] = [:]
  public private(set) var allocator: Allocator
  /// Bytes of arena in use (creating, in memory, spilling, restoring, deleted-but-pinned).
  public var used: Int { allocator.allocated }

  public init(limits: Limits) {
    self.limits = limits
    allocator = Allocator(capacity: limits.capacity)
  }

  public var pinnedBytes: Int { entries.values.filter { $0.pinCount > 0 && $0.inMemory }.reduce(0) { $0 + Allocator.rounded($1.size) } }
  public var spilledBytes: Int { entries.values.filter { $0.residence == .spilled }.reduce(0) { $0 + $1.size } }

  public var stats: Stats {
    var s = Stats()
    s.capacity = allocator.capacity
    s.used = used
    s.pinnedBytes = pinnedBytes
    s.spilledBytes = spilledBytes
    let live = entries.values.filter { !$0.deleted }
    s.objects = live.count
    s.pinnedObjects = entries.values.filter { $0.pinCount > 0 }.count
    s.spilledObjects = live.filter { $0.residence == .spilled }.count
    s.readers = Set(entries.values.flatMap { $0.pins.keys }).count
    s.secondaryObjects = live.filter(\.secondary).count
    return s
  }

  // MARK: events

  /// Process `creator` wants to write an object of `size` bytes owned by process `owner`.
  /// `secondary`: a copy being pulled from another node (see `Entry.secondary`).
  ///
  /// A primary create (a task's return, a put, a rebuild) that meets a pulled copy
  /// keeps that copy as the primary: its creator is told `exists` and will report the
  /// object stored here, so the copy must no longer be evictable, or the owner would
  /// later find its only location empty and call the object freed.
  /// A size from a peer's request, clamped so that no arithmetic on it can overflow:
  /// anything above 2^48 bytes is larger than any store and is refused as such.
  public static func size(_ wire: UInt64) -> Int { Int(min(wire, 1 << 48)) }

  public mutating func createRequested(_ id: ObjectID, size: Int, creator: UInt64, owner: UInt64,
                                       now: UInt64, secondary: Bool = false) -> (CreateOutcome, [Action]) {
    if let e = entries[id] {
      if e.deleted { return (.waitForCopy, []) }
      guard e.secondary && !secondary else { return (.exists, []) }
      // Not yet whole: the pull may still fail and drop it, so say `exists` only after.
      if e.residence == .creating { return (.waitForCopy, []) }
      _ = promoted(id, owner: owner)
      entries[id]?.lastUsed = now
      return (.exists, [])
    }
    lost[id] = nil  // made again (rebuilt): no longer lost
    if Allocator.rounded(size) > allocator.capacity {
      return (.full(fullError(id, size, why: "the object is larger than the whole store")), [])
    }
    let evicted = evictSecondaries(toFit: size)
    if let off = allocator.allocate(size) {
      var e = Entry(size: size, offset: off, residence: .creating, lastUsed: now, creator: creator, owner: owner)
      e.secondary = secondary
      entries[id] = e
      return (.created(offset: off), evicted + spillIfAboveThreshold())
    }
    let victims = spillVictims(toFit: size)
    if victims.isEmpty {
      if spillingCount > 0 { return (.waitForSpill, evicted) }
      return (.full(fullError(id, size, why: "everything in memory is pinned or being written")), evicted)
    }
    return (.waitForSpill, evicted + victims.map { markSpilling($0) })
  }

  public mutating func sealed(_ id: ObjectID) -> [Action] {
    guard let e = entries[id], e.residence == .creating else { return [] }
    entries[id]?.residence = .memory
    if e.deleted && e.pinCount == 0 { return releaseDeleted(id) }
    return [.retryWaiting]
  }

  /// The creator gave up (its value could not be written): drop the extent.
  public mutating func aborted(_ id: ObjectID) -> [Action] {
    guard entries[id]?.residence == .creating else { return [] }
    entries[id]?.residence = .memory
    entries[id]?.deleted = false
    return deleted(id)
  }

  /// A reader wants to map the object; a spilled one is restored first.
  public mutating func pinRequested(_ id: ObjectID, reader: UInt64, now: UInt64) -> (PinOutcome, [Action]) {
    guard var e = entries[id], !e.deleted else { return (lost[id].map { .lost($0) } ?? .notFound, []) }
    switch e.residence {
    case .memory, .spilling:
      e.pins[reader, default: 0] += 1
      e.lastUsed = now
      entries[id] = e
      return (.pinned(offset: e.offset!, size: e.size), [])
    case .creating, .restoring:
      return (.wait, [])
    case .spilled:
      let evicted = evictSecondaries(toFit: e.size)
      if let off = allocator.allocate(e.size) {
        e.offset = off
        e.residence = .restoring
        e.lastUsed = now
        entries[id] = e
        return (.wait, evicted + [.restore(id, offset: off, size: e.size)])
      }
      let victims = spillVictims(toFit: e.size)
      if victims.isEmpty {
        if spillingCount > 0 { return (.wait, evicted) }
        return (.full(fullError(id, e.size, why: "it cannot be restored from disk")), evicted)
      }
      return (.wait, evicted + victims.map { markSpilling($0) })
    }
  }

  public mutating func unpinned(_ id: ObjectID, reader: UInt64) -> [Action] {
    guard var e = entries[id], let n = e.pins[reader] else { return [] }
    e.pins[reader] = n > 1 ? n - 1 : nil
    entries[id] = e
    if e.deleted && e.pinCount == 0 { return releaseDeleted(id) }
    return spillIfAboveThreshold()
  }

  /// A process died: its mappings are gone (pins), its half-written objects are
  /// dropped, and the objects it owned are freed (no one can reference them now).
  public mutating func processDied(_ pid: UInt64) -> [Action] {
    var actions: [Action] = []
    for id in Array(entries.keys) {
      guard var e = entries[id] else { continue }
      if e.pins[pid] != nil { e.pins[pid] = nil; entries[id] = e }
      if e.residence == .creating && e.creator == pid {
        actions += aborted(id)
      } else if e.owner == pid {
        actions += deleted(id)
      } else if e.deleted && e.pinCount == 0 {
        actions += releaseDeleted(id)
      }
    }
    return actions + spillIfAboveThreshold()
  }

  /// The primary copy died with its node: this pulled copy becomes the primary (kept
  /// until its owner, `owner`, frees it or dies). False when there is no whole copy here.
  public mutating func promoted(_ id: ObjectID, owner: UInt64) -> Bool {
    guard var e = entries[id], !e.deleted, e.residence != .creating else { return false }
    e.secondary = false
    e.owner = owner
    entries[id] = e
    return true
  }

  /// The owner freed the object.
  public mutating func deleted(_ id: ObjectID) -> [Action] {
    guard var e = entries[id], !e.deleted else { return [] }
    var actions: [Action] = []
    if e.residence == .spilled || e.residence == .spilling || e.residence == .restoring {
      actions.append(.deleteSpillFile(id))
    }
    // A reader maps it, or a writer (creator, restore) is still writing into its extent.
    if e.pinCount > 0 || e.residence == .creating || e.residence == .restoring {
      e.deleted = true
      entries[id] = e
      return actions
    }
    entries[id] = nil
    if let off = e.offset { allocator.release(offset: off, size: e.size) }
    return actions + [.retryWaiting]
  }

  public mutating func spillFinished(_ id: ObjectID) -> [Action] {
    guard var e = entries[id], e.residence == .spilling else { return [] }
    if e.pinCount > 0 {  // pinned while spilling: keep it in memory too
      e.residence = .memory
      entries[id] = e
      return [.retryWaiting]
    }
    allocator.release(offset: e.offset!, size: e.size)
    e.offset = nil
    e.residence = .spilled
    entries[id] = e
    return [.retryWaiting]
  }

  /// Writing to disk failed: the object stays in memory.
  public mutating func spillFailed(_ id: ObjectID) -> [Action] {
    guard entries[id]?.residence == .spilling else { return [] }
    entries[id]?.residence = .memory
    return [.retryWaiting]
  }

  public mutating func restoreFinished(_ id: ObjectID) -> [Action] {
    guard let e = entries[id], e.residence == .restoring else { return [] }
    entries[id]?.residence = .memory
    // Back in memory: the file is stale (spilling again writes it anew).
    if e.deleted && e.pinCount == 0 { return [.deleteSpillFile(id)] + releaseDeleted(id) }
    return [.deleteSpillFile(id), .retryWaiting]
  }

  /// Its spill file could not be read back whole (missing, short, unreadable): the
  /// object is gone from this node, never served with what its extent held. Readers
  /// waiting for it find it missing (their owner rebuilds it or reports it lost).
  public mutating func restoreFailed(_ id: ObjectID) -> [Action] {
    guard let e = entries[id], e.residence == .restoring else { return [] }
    entries[id] = nil
    if let off = e.offset { allocator.release(offset: off, size: e.size) }
    // Remembered (the newest few thousand) so readers hear why, not just "not found".
    lost[id] = "its spill file could not be read back whole (the disk lost or changed it)"
    lostOrder.append(id)
    if lostOrder.count > Self.lostKept, let oldest = lostOrder.popFirst() { lost[oldest] = nil }
    return [.deleteSpillFile(id), .retryWaiting]
  }

  /// Objects lost on this node, kept to answer readers (bounded: `lostKept`).
  private var lost: [ObjectID: String] = [:]
  private var lostOrder: Deque<ObjectID> = []
  static let lostKept = 4096

  // MARK: internals

  private var spillingCount: Int { entries.values.filter { $0.residence == .spilling }.count }

  private mutating func markSpilling(_ id: ObjectID) -> Action {
    entries[id]?.residence = .spilling
    let e = entries[id]!
    return .spill(id, offset: e.offset!, size: e.size)
  }

  private mutating func releaseDeleted(_ id: ObjectID) -> [Action] {
    guard let e = entries.removeValue(forKey: id) else { return [] }
    if let off = e.offset { allocator.release(offset: off, size: e.size) }
    return [.retryWaiting]
  }

  /// Unpinned sealed objects in memory, least recently used first: secondary copies
  /// (`evictable: true`) or primaries (spillable).
  private func unpinned(evictable: Bool) -> [(key: ObjectID, value: Entry)] {
    entries.filter { $0.value.residence == .memory && $0.value.pinCount == 0 && !$0.value.deleted && $0.value.secondary == evictable }
      .sorted { ($0.value.lastUsed, $0.key.hex) < ($1.value.lastUsed, $1.key.hex) }
  }
  private var spillCandidates: [(key: ObjectID, value: Entry)] { unpinned(evictable: false) }

  /// Drops unpinned secondary copies, least recently used first, until `size`
  /// contiguous bytes are free or none is left.
  private mutating func evictSecondaries(toFit size: Int) -> [Action] {
    var out: [Action] = []
    for (id, e) in unpinned(evictable: true) where allocator.largestFree < Allocator.rounded(size) {
      out.append(evict(id, e))
    }
    return out
  }

  private mutating func evict(_ id: ObjectID, _ e: Entry) -> Action {
    entries[id] = nil
    allocator.release(offset: e.offset!, size: e.size)
    return .evicted(id, size: e.size)
  }

  /// Unpinned sealed objects, least recently used first, whose extents once free leave
  /// room for `size` contiguous bytes (counting extents already being spilled). Empty
  /// when even all of them would not.
  private func spillVictims(toFit size: Int) -> [ObjectID] {
    var sim = allocator
    for e in entries.values where e.residence == .spilling { sim.release(offset: e.offset!, size: e.size) }
    if sim.largestFree >= Allocator.rounded(size) { return [] }
    var out: [ObjectID] = []
    for (id, e) in spillCandidates {
      sim.release(offset: e.offset!, size: e.size)
      out.append(id)
      if sim.largestFree >= Allocator.rounded(size) { return out }
    }
    return []
  }

  private mutating func spillIfAboveThreshold() -> [Action] {
    let threshold = Int(Double(limits.capacity) * limits.spillThreshold)
    let spilling = entries.values.filter { $0.residence == .spilling }.reduce(0) { $0 + Allocator.rounded($1.size) }
    var over = used - spilling - threshold
    guard over > 0 else { return [] }
    var actions: [Action] = []
    // Copies whose primary lives elsewhere go first: dropping them costs no I/O.
    for (id, e) in unpinned(evictable: true) where over > 0 {
      actions.append(evict(id, e))
      over -= Allocator.rounded(e.size)
    }
    if !actions.isEmpty { actions.append(.retryWaiting) }
    for (id, e) in spillCandidates where over > 0 {
      actions.append(markSpilling(id))
      over -= Allocator.rounded(e.size)
    }
    return actions
  }

  private func fullError(_ id: ObjectID, _ size: Int, why: String) -> SwiftrayError {
    let pinned = entries.filter { $0.value.pinCount > 0 && $0.value.inMemory }
    let readers = Set(pinned.values.flatMap { $0.pins.keys })
    let creating = entries.values.filter { $0.residence == .creating }
    let by = readers.isEmpty ? "" : " (pids \(readers.sorted().map(String.init).joined(separator: ", ")))"
    return SwiftrayError(.objectStoreFull, """
      Cannot create object \(id.hex) of \(size) bytes: \(why). The object store holds \(used) of \
      \(allocator.capacity) bytes; \(pinnedBytes) bytes in \(pinned.count) object(s) are pinned by \
      \(readers.count) reader(s)\(by) (values from get() still referenced from Python); \
      \(creating.reduce(0) { $0 + $1.size }) bytes are being written; \(spilledBytes) bytes are spilled. \
      Drop references you no longer need, or raise object_store_memory \
      (init(object_store_memory=...) or `swiftray start --object-store-memory`).
      """)
  }
}
