import Testing
import Runtime

private let mib = 1 << 20

@Suite struct AllocatorTests {
  @Test func firstFitCoalescesNeighboursOnRelease() {
    var a = Allocator(capacity: 10 * mib)
    let x = a.allocate(mib)!, y = a.allocate(mib)!, z = a.allocate(mib)!
    #expect([x, y, z] == [0, mib, 2 * mib])
    a.release(offset: y, size: mib)
    #expect(a.allocate(2 * mib) == 3 * mib, "the 1 MiB hole is too small")
    a.release(offset: x, size: mib)
    a.release(offset: z, size: mib)
    // x, y, z merged into one 3 MiB hole at 0.
    #expect(a.free.first!.offset == 0 && a.free.first!.size == 3 * mib)
    #expect(a.allocate(3 * mib) == 0)
  }

  @Test func extentsArePageAligned() {
    var a = Allocator(capacity: mib)
    let p = a.allocate(100)!, q = a.allocate(5000)!
    #expect(p == 0 && q == 4096 && a.allocated == 3 * 4096)
  }

  @Test func randomAllocationsNeverOverlapAndFreeingAllRestoresOneExtent() {
    var rng = SeededRandom(seed: 11)
    var a = Allocator(capacity: 64 * mib)
    var live: [(Int, Int)] = []
    for _ in 0..<4000 {
      if rng.next() % 2 == 0, let size = Optional(Int(rng.next() % UInt64(3 * mib)) + 1), let off = a.allocate(size) {
        let end = off + Allocator.rounded(size)
        #expect(!live.contains { $0.0 < end && off < $0.0 + Allocator.rounded($0.1) })
        live.append((off, size))
      } else if !live.isEmpty {
        let (off, size) = live.remove(at: Int(rng.next() % UInt64(live.count)))
        a.release(offset: off, size: size)
      }
      #expect(a.allocated == live.reduce(0) { $0 + Allocator.rounded($1.1) })
    }
    for (off, size) in live { a.release(offset: off, size: size) }
    #expect(a.free.count == 1 && a.free[0].size == 64 * mib && a.allocated == 0)
  }
}

@Suite struct StoreStateTests {
  var gen = TaskIDGenerator(job: JobID(1))
  mutating func oid() -> ObjectID { ObjectID.forPut(by: gen.next(), index: 1) }

  /// Creates and seals; returns the offset.
  @discardableResult
  static func make(_ s: inout StoreState, _ id: ObjectID, _ size: Int, now: UInt64 = 0, owner: UInt64 = 1) -> Int? {
    guard case .created(let off) = s.createRequested(id, size: size, creator: owner, owner: owner, now: now).0 else { return nil }
    _ = s.sealed(id)
    return off
  }

  static func pin(_ s: inout StoreState, _ id: ObjectID, reader: UInt64, now: UInt64 = 0) -> Bool {
    if case .pinned = s.pinRequested(id, reader: reader, now: now).0 { return true }
    return false
  }

  @Test mutating func createsWithinCapacityAndFreesOnDelete() {
    var s = StoreState(limits: .init(capacity: 100 * mib))
    let a = oid()
    #expect(Self.make(&s, a, 10 * mib) == 0)
    #expect(s.used == 10 * mib)
    #expect(s.createRequested(a, size: 10 * mib, creator: 2, owner: 1, now: 1).0 == .exists)
    #expect(s.deleted(a) == [.retryWaiting])
    #expect(s.used == 0 && s.entries.isEmpty)
  }

  @Test mutating func aPinnedObjectDeletedKeepsItsExtentUntilUnpinned() {
    var s = StoreState(limits: .init(capacity: 10 * mib))
    let a = oid()
    Self.make(&s, a, 4 * mib)
    #expect(Self.pin(&s, a, reader: 9))
    _ = s.deleted(a)
    #expect(s.used == 4 * mib, "a reader still maps it: the extent must not be reused")
    #expect(s.pinRequested(a, reader: 8, now: 1).0 == .notFound)
    #expect(s.stats.objects == 0)
    _ = s.unpinned(a, reader: 9)
    #expect(s.used == 0)
  }

  @Test mutating func aSizeFromAPeerBeyondAnyStoreIsRefusedNotTrapped() {
    var s = StoreState(limits: .init(capacity: 10 * mib))
    for wire in [UInt64.max, UInt64(Int.max), 1 << 60] {
      guard case .full(let e) = s.createRequested(oid(), size: StoreState.size(wire), creator: 1, owner: 1, now: 0).0 else {
        Issue.record("a size of \(wire) bytes was not refused"); continue
      }
      #expect(e.message.contains("larger than the whole store"))
    }
    #expect(s.used == 0)
  }

  @Test mutating func aRebuildOfAFreedObjectStillMappedWaitsForTheReaderToLetGo() {
    var s = StoreState(limits: .init(capacity: 10 * mib))
    let a = oid()
    Self.make(&s, a, 4 * mib)
    #expect(Self.pin(&s, a, reader: 9))
    _ = s.deleted(a)
    // Lineage makes the same id again while the old copy is still mapped.
    #expect(s.createRequested(a, size: 4 * mib, creator: 5, owner: 1, now: 2).0 == .waitForCopy)
    #expect(s.unpinned(a, reader: 9) == [.retryWaiting])
    #expect(s.used == 0, "the old extent is released, not lost under a new entry")
    #expect(s.createRequested(a, size: 4 * mib, creator: 5, owner: 1, now: 3).0 == .created(offset: 0))
    _ = s.sealed(a)
    #expect(s.deleted(a) == [.retryWaiting])
    #expect(s.used == 0 && s.entries.isEmpty)
  }

  @Test mutating func anObjectDeletedWhileBeingWrittenKeepsItsExtentUntilSealed() {
    var s = StoreState(limits: .init(capacity: 10 * mib))
    let a = oid()
    _ = s.createRequested(a, size: 4 * mib, creator: 5, owner: 6, now: 0)
    _ = s.processDied(6)  // the owner died while a worker writes the value
    #expect(s.used == 4 * mib, "the writer still writes there: the extent must not be reused")
    #expect(s.createRequested(oid(), size: 8 * mib, creator: 1, owner: 1, now: 1).0.fullError?.message.contains("4194304 bytes are being written") == true)
    _ = s.sealed(a)
    #expect(s.used == 0 && s.entries.isEmpty)
  }

  @Test mutating func passingTheThresholdSpillsLeastRecentlyUsedUnpinnedObjects() {
    var s = StoreState(limits: .init(capacity: 100 * mib, spillThreshold: 0.8))
    let ids = (0..<4).map { _ in oid() }
    for (i, id) in ids.enumerated() { Self.make(&s, id, 20 * mib, now: UInt64(i)) }
    #expect(Self.pin(&s, ids[0], reader: 7, now: 10))
    let (outcome, actions) = s.createRequested(oid(), size: 20 * mib, creator: 1, owner: 1, now: 11)
    #expect(outcome == .created(offset: 80 * mib))
    // 100 MiB used > 80 MiB: the oldest unpinned object (ids[1]) goes, not the pinned ids[0].
    #expect(actions == [.spill(ids[1], offset: 20 * mib, size: 20 * mib)])
    #expect(s.spillFinished(ids[1]) == [.retryWaiting])
    #expect(s.used == 80 * mib && s.spilledBytes == 20 * mib)
  }

  @Test mutating func secondaryCopiesAreDroppedBeforeAnyPrimaryIsSpilled() {
    var s = StoreState(limits: .init(capacity: 100 * mib, spillThreshold: 0.8))
    let primary = oid(), copy = oid(), pinnedCopy = oid()
    Self.make(&s, primary, 30 * mib, now: 0)  // oldest, yet kept: it is the only copy
    for (i, id) in [copy, pinnedCopy].enumerated() {
      guard case .created = s.createRequested(id, size: 25 * mib, creator: 0, owner: 0, now: UInt64(1 + i), secondary: true).0 else {
        Issue.record("secondary copy not created"); return
      }
      _ = s.sealed(id)
    }
    #expect(s.stats.secondaryObjects == 2)
    #expect(Self.pin(&s, pinnedCopy, reader: 7, now: 5))
    // 30 + 25 + 25 + 15 = 95 MiB > 80 MiB: the unpinned secondary copy goes, without I/O.
    let (outcome, actions) = s.createRequested(oid(), size: 15 * mib, creator: 1, owner: 1, now: 6)
    guard case .created = outcome else { Issue.record("not created: \(outcome)"); return }
    #expect(actions == [.evicted(copy, size: 25 * mib), .retryWaiting])
    #expect(s.entries[copy] == nil && s.entries[primary]?.residence == .memory)
    #expect(s.used == 70 * mib)
  }

  /// A task rebuilt on a node that holds a pulled copy of its return is told `exists`
  /// and reports the object stored there: the copy must then stay (be the primary),
  /// or the owner later finds its one location empty and calls the object freed.
  @Test mutating func aPrimaryCreateMeetingAPulledCopyKeepsItAsThePrimary() {
    var s = StoreState(limits: .init(capacity: 40 * mib, spillThreshold: 1.0))
    let copy = oid(), arriving = oid()
    _ = s.createRequested(copy, size: 20 * mib, creator: 0, owner: 0, now: 1, secondary: true)
    _ = s.sealed(copy)
    #expect(s.createRequested(copy, size: 20 * mib, creator: 5, owner: 4, now: 2).0 == .exists)
    #expect(s.entries[copy]?.secondary == false && s.entries[copy]?.owner == 4)
    // Room for a 30 MiB object is no longer made by dropping it: it is spilled instead.
    let (o, acts) = s.createRequested(oid(), size: 30 * mib, creator: 1, owner: 1, now: 3)
    #expect(o == .waitForSpill && acts == [.spill(copy, offset: 0, size: 20 * mib)])
    // A copy still being pulled may yet fail: the create waits for it to settle.
    _ = s.createRequested(arriving, size: mib, creator: 0, owner: 0, now: 4, secondary: true)
    #expect(s.createRequested(arriving, size: mib, creator: 5, owner: 4, now: 5).0 == .waitForCopy)
    #expect(s.sealed(arriving) == [.retryWaiting])
    #expect(s.createRequested(arriving, size: mib, creator: 5, owner: 4, now: 6).0 == .exists)
    #expect(s.entries[arriving]?.secondary == false)
    // The owner's death frees it like any primary.
    _ = s.processDied(4)
    #expect(s.entries[arriving] == nil)
    // A failed pull drops the copy; asked again, the create writes it.
    let failed = oid()
    _ = s.createRequested(failed, size: mib, creator: 0, owner: 0, now: 7, secondary: true)
    #expect(s.createRequested(failed, size: mib, creator: 5, owner: 4, now: 8).0 == .waitForCopy)
    #expect(s.aborted(failed).contains(.retryWaiting))
    guard case .created = s.createRequested(failed, size: mib, creator: 5, owner: 4, now: 9).0 else {
      Issue.record("not created after the pull failed"); return
    }
    // A second pull of a primary is told it exists and leaves it the primary.
    #expect(s.createRequested(failed, size: mib, creator: 0, owner: 0, now: 10, secondary: true).0 == .exists)
    #expect(s.entries[failed]?.secondary == false)
  }

  @Test mutating func aCreateThatDoesNotFitEvictsSecondaryCopiesFirst() {
    var s = StoreState(limits: .init(capacity: 40 * mib, spillThreshold: 1.0))
    let copy = oid(), primary = oid()
    Self.make(&s, primary, 10 * mib, now: 0)
    _ = s.createRequested(copy, size: 30 * mib, creator: 0, owner: 0, now: 1, secondary: true)
    _ = s.sealed(copy)
    let big = oid()
    let (outcome, actions) = s.createRequested(big, size: 25 * mib, creator: 1, owner: 1, now: 2)
    #expect(outcome == .created(offset: 10 * mib))
    #expect(actions == [.evicted(copy, size: 30 * mib)])
    // With no secondary copy left, making room spills the unpinned primary.
    _ = s.sealed(big)
    #expect(Self.pin(&s, big, reader: 3))
    let (o2, a2) = s.createRequested(oid(), size: 10 * mib, creator: 1, owner: 1, now: 3)
    #expect(o2 == .waitForSpill && a2 == [.spill(primary, offset: 0, size: 10 * mib)])
  }

  @Test mutating func aFullStoreWaitsForSpillingThenFailsOnlyWhenNothingCanMove() {
    var s = StoreState(limits: .init(capacity: 50 * mib, spillThreshold: 1.0))
    let a = oid(), b = oid()
    Self.make(&s, a, 40 * mib)
    let (o1, acts) = s.createRequested(b, size: 20 * mib, creator: 1, owner: 1, now: 1)
    #expect(o1 == .waitForSpill && acts == [.spill(a, offset: 0, size: 40 * mib)])
    #expect(s.createRequested(b, size: 20 * mib, creator: 1, owner: 1, now: 1).0 == .waitForSpill, "still spilling")
    _ = s.spillFinished(a)
    #expect(Self.make(&s, b, 20 * mib, now: 2) != nil)
    #expect(Self.pin(&s, b, reader: 1234, now: 3))
    let (o2, _) = s.createRequested(oid(), size: 40 * mib, creator: 1, owner: 1, now: 4)
    guard case .full(let e) = o2 else { Issue.record("expected full, got \(o2)"); return }
    #expect(e.code == .objectStoreFull)
    #expect(e.message.contains("41943040 bytes"))  // what was asked
    #expect(e.message.contains("pinned by 1 reader(s) (pids 1234)"))
    #expect(e.message.contains("object_store_memory"))
  }

  @Test mutating func anObjectLargerThanTheStoreFailsAtOnce() {
    var s = StoreState(limits: .init(capacity: 10 * mib))
    guard case .full(let e) = s.createRequested(oid(), size: 11 * mib, creator: 1, owner: 1, now: 0).0 else {
      Issue.record("not full"); return
    }
    #expect(e.message.contains("larger than the whole store"))
  }

  @Test mutating func aDeadProcessReleasesPinsHalfWrittenAndOwnedObjects() {
    var s = StoreState(limits: .init(capacity: 100 * mib))
    let a = oid(), half = oid(), owned = oid()
    Self.make(&s, a, mib)
    #expect(Self.pin(&s, a, reader: 3) && Self.pin(&s, a, reader: 3) && Self.pin(&s, a, reader: 4))
    #expect(s.pinnedBytes == mib)
    _ = s.createRequested(half, size: mib, creator: 3, owner: 1, now: 0)
    Self.make(&s, owned, mib, owner: 3)
    _ = s.processDied(3)
    #expect(s.entries[a]?.pinCount == 1)
    #expect(s.entries[half] == nil && s.entries[owned] == nil)
    _ = s.unpinned(a, reader: 4)
    #expect(s.pinnedBytes == 0 && s.used == mib)
  }

  /// A store of 30 MiB where `a` (20 MiB) was spilled for `b` and a pin of `a` now
  /// restores it (after spilling `b`): returns `a`, being restored.
  mutating func restoring(_ s: inout StoreState) -> ObjectID {
    let a = oid(), b = oid()
    Self.make(&s, a, 20 * mib)
    _ = s.createRequested(b, size: 20 * mib, creator: 1, owner: 1, now: 1)
    _ = s.spillFinished(a)
    Self.make(&s, b, 20 * mib, now: 2)
    let (o, acts) = s.pinRequested(a, reader: 1, now: 3)
    #expect(o == .wait && acts == [.spill(b, offset: 0, size: 20 * mib)])
    _ = s.spillFinished(b)
    let (o3, acts3) = s.pinRequested(a, reader: 1, now: 5)
    #expect(o3 == .wait && acts3 == [.restore(a, offset: 0, size: 20 * mib)])
    return a
  }

  @Test mutating func spilledObjectsRestoreOnPinMakingRoomFirst() {
    var s = StoreState(limits: .init(capacity: 30 * mib, spillThreshold: 1.0))
    let a = restoring(&s)
    #expect(s.pinRequested(a, reader: 1, now: 5).0 == .wait, "still restoring")
    _ = s.restoreFinished(a)
    #expect(s.pinRequested(a, reader: 1, now: 6).0 == .pinned(offset: 0, size: 20 * mib))
  }

  @Test mutating func aSpillFileThatCannotBeReadBackLosesTheObjectAndFreesItsExtent() {
    var s = StoreState(limits: .init(capacity: 30 * mib, spillThreshold: 1.0))
    let a = restoring(&s)
    #expect(s.stats.used == 20 * mib)
    #expect(s.restoreFailed(a) == [.deleteSpillFile(a), .retryWaiting])
    guard case .lost(let why) = s.pinRequested(a, reader: 1, now: 6).0 else {
      Issue.record("never served from the extent it was read into; readers hear it is lost")
      return
    }
    #expect(why.contains("spill file"))
    #expect(s.stats.used == 0, "the extent is free again")
    #expect(s.restoreFailed(a).isEmpty, "a second report changes nothing")
    // Made again (rebuilt by its owner): found as any object.
    Self.make(&s, a, 20 * mib, now: 7)
    #expect(s.pinRequested(a, reader: 1, now: 8).0 == .pinned(offset: 0, size: 20 * mib))
  }

  @Test mutating func fragmentationSpillsNeighboursToMakeAContiguousExtent() {
    var s = StoreState(limits: .init(capacity: 40 * mib, spillThreshold: 1.0))
    let ids = (0..<4).map { _ in oid() }
    for (i, id) in ids.enumerated() { Self.make(&s, id, 10 * mib, now: UInt64(i)) }
    _ = s.deleted(ids[1])
    #expect(Self.pin(&s, ids[2], reader: 5, now: 9))
    // 10 MiB free at 10 MiB; 20 MiB contiguous needs ids[0] (LRU) spilled next to it.
    let (o, acts) = s.createRequested(oid(), size: 20 * mib, creator: 1, owner: 1, now: 10)
    #expect(o == .waitForSpill && acts == [.spill(ids[0], offset: 0, size: 10 * mib)])
  }

  @Test mutating func usedBytesMatchResidentObjectsUnderRandomEvents() {
    var rng = SeededRandom(seed: 7)
    var s = StoreState(limits: .init(capacity: 64 * mib, spillThreshold: 0.8))
    var ids: [ObjectID] = []
    for step in 0..<3000 {
      let now = UInt64(step)
      var acts: [StoreState.Action] = []
      switch rng.next() % 6 {
      case 0, 1:
        let id = oid()
        let (o, a) = s.createRequested(id, size: Int(rng.next() % 16 + 1) * mib, creator: 1, owner: 1, now: now)
        acts = a
        if case .created = o { acts += s.sealed(id); ids.append(id) }
      case 2:
        if let id = ids.randomElement(using: &rng) { acts = s.pinRequested(id, reader: rng.next() % 3, now: now).1 }
      case 3:
        if let id = ids.randomElement(using: &rng) { acts = s.unpinned(id, reader: rng.next() % 3) }
      case 4:
        if !ids.isEmpty { acts = s.deleted(ids.remove(at: Int(rng.next() % UInt64(ids.count)))) }
      default:
        acts = s.processDied(rng.next() % 3 + 100)
      }
      for a in acts {
        switch a {
        case .spill(let v, _, _): _ = s.spillFinished(v)
        case .restore(let v, _, _): _ = s.restoreFinished(v)
        default: break
        }
      }
      let resident = s.entries.values.filter { $0.inMemory }.reduce(0) { $0 + Allocator.rounded($1.size) }
      #expect(s.used == resident)
      #expect(s.used <= s.limits.capacity)
      // No two resident objects overlap.
      let spans = s.entries.values.compactMap { e in e.offset.map { ($0, $0 + Allocator.rounded(e.size)) } }.sorted { $0.0 < $1.0 }
      #expect(zip(spans, spans.dropFirst()).allSatisfy { $0.1 <= $1.0 })
    }
  }
}


extension StoreState.CreateOutcome {
  var fullError: SwiftrayError? { if case .full(let e) = self { return e }; return nil }
}
