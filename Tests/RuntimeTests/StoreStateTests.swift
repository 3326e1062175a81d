import Testing
import Runtime

private let mib = 1 << 20

@Suite struct StoreStateTests {
  var gen = TaskIDGenerator(job: JobID(1))
  mutating func oid() -> ObjectID { ObjectID.forPut(by: gen.next(), index: 1) }

  @Test mutating func createsWithinCapacityAndFreesOnDelete() {
    var s = StoreState(limits: .init(capacity: 100 * mib))
    let a = oid()
    #expect(s.createRequested(a, size: 10 * mib, now: 0).0 == .created)
    _ = s.sealed(a)
    #expect(s.used == 10 * mib)
    #expect(s.deleted(a).contains(.releaseMemory(a)))
    #expect(s.used == 0)
  }

  @Test mutating func passingTheThresholdSpillsLeastRecentlyUsedUnpinnedObjects() {
    var s = StoreState(limits: .init(capacity: 100 * mib, spillThreshold: 0.8))
    let ids = (0..<4).map { _ in oid() }
    for (i, id) in ids.enumerated() {
      _ = s.createRequested(id, size: 20 * mib, now: UInt64(i))
      _ = s.sealed(id)
    }
    let pinnedFirst = s.pinned(ids[0], reader: 7, now: 10)
    #expect(pinnedFirst)
    let (outcome, actions) = s.createRequested(oid(), size: 20 * mib, now: 11)
    #expect(outcome == .created)
    // 100 MiB used > 80 MiB: the oldest unpinned object (ids[1]) goes, not the pinned ids[0].
    #expect(actions == [.spill(ids[1])])
    #expect(s.spillFinished(ids[1]) == [.releaseMemory(ids[1]), .retryWaiting])
    #expect(s.used == 80 * mib && s.spilledBytes == 20 * mib)
  }

  @Test mutating func aFullStoreWaitsForSpillingThenFailsOnlyWhenNothingCanMove() {
    var s = StoreState(limits: .init(capacity: 50 * mib, spillThreshold: 1.0))
    let a = oid(), b = oid()
    _ = s.createRequested(a, size: 40 * mib, now: 0); _ = s.sealed(a)
    let (o1, acts) = s.createRequested(b, size: 20 * mib, now: 1)
    #expect(o1 == .waitForSpill && acts == [.spill(a)])
    _ = s.spillFinished(a)
    #expect(s.createRequested(b, size: 20 * mib, now: 2).0 == .created)
    _ = s.sealed(b)
    let pinnedB = s.pinned(b, reader: 1, now: 3)
    #expect(pinnedB)
    let (o2, _) = s.createRequested(oid(), size: 40 * mib, now: 4)
    guard case .full(let e) = o2 else { Issue.record("expected full, got \(o2)"); return }
    #expect(e.code == .objectStoreFull)
    #expect(e.message.contains("41943040 bytes"))  // what was asked
    #expect(e.message.contains("pinned by 1 reader"))
    #expect(e.message.contains("object_store_memory"))
  }

  @Test mutating func anObjectLargerThanTheStoreFailsAtOnce() {
    var s = StoreState(limits: .init(capacity: 10 * mib))
    guard case .full(let e) = s.createRequested(oid(), size: 11 * mib, now: 0).0 else { Issue.record("not full"); return }
    #expect(e.message.contains("larger than the whole store"))
  }

  @Test mutating func aDeadReaderReleasesItsPins() {
    var s = StoreState(limits: .init(capacity: 100 * mib))
    let a = oid()
    _ = s.createRequested(a, size: mib, now: 0); _ = s.sealed(a)
    let p1 = s.pinned(a, reader: 3, now: 1), p2 = s.pinned(a, reader: 3, now: 2), p3 = s.pinned(a, reader: 4, now: 3)
    #expect(p1 && p2 && p3)
    #expect(s.pinnedBytes == mib)
    _ = s.readerDied(3)
    #expect(s.entries[a]?.pinCount == 1)
    _ = s.unpinned(a, reader: 4)
    #expect(s.pinnedBytes == 0)
  }

  @Test mutating func spilledObjectsRestoreOnDemandMakingRoomFirst() {
    var s = StoreState(limits: .init(capacity: 30 * mib, spillThreshold: 1.0))
    let a = oid(), b = oid()
    _ = s.createRequested(a, size: 20 * mib, now: 0); _ = s.sealed(a)
    _ = s.createRequested(b, size: 20 * mib, now: 1)
    _ = s.spillFinished(a)
    _ = s.createRequested(b, size: 20 * mib, now: 2); _ = s.sealed(b)
    let readable = s.pinned(a, reader: 1, now: 3)
    #expect(!readable, "spilled: not readable until restored")
    let (o, acts) = s.restoreRequested(a, now: 4)
    #expect(o == .waitForSpill && acts == [.spill(b)])
    _ = s.spillFinished(b)
    let (o3, acts3) = s.restoreRequested(a, now: 5)
    #expect(o3 == .created && acts3 == [.restore(a)])
    _ = s.restoreFinished(a)
    let readableNow = s.pinned(a, reader: 1, now: 6)
    #expect(readableNow)
  }

  @Test mutating func usedBytesMatchResidentObjectsUnderRandomEvents() {
    var rng = SeededRandom(seed: 7)
    var s = StoreState(limits: .init(capacity: 64 * mib, spillThreshold: 0.8))
    var ids: [ObjectID] = []
    for step in 0..<3000 {
      let now = UInt64(step)
      switch rng.next() % 6 {
      case 0, 1:
        let id = oid()
        let (o, acts) = s.createRequested(id, size: Int(rng.next() % 16 + 1) * mib, now: now)
        if o == .created { _ = s.sealed(id); ids.append(id) }
        for case .spill(let v) in acts { _ = s.spillFinished(v) }
      case 2:
        if let id = ids.randomElement(using: &rng) { _ = s.pinned(id, reader: rng.next() % 3, now: now) }
      case 3:
        if let id = ids.randomElement(using: &rng) { _ = s.unpinned(id, reader: rng.next() % 3) }
      case 4:
        if !ids.isEmpty { _ = s.deleted(ids.remove(at: Int(rng.next() % UInt64(ids.count)))) }
      default:
        _ = s.readerDied(rng.next() % 3)
      }
      let resident = s.entries.values.filter { $0.inMemory }.reduce(0) { $0 + $1.size }
      #expect(s.used == resident)
      #expect(s.used <= s.limits.capacity)
    }
  }
}

extension SeededRandom: RandomNumberGenerator {}
