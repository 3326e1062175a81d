import Runtime
import Testing

/// Ids hash with `IDHash` (not SipHash): tables of ids must still spread them over
/// their buckets, which are the hash's low bits, however alike the ids are (one owner's
/// task ids differ only in their counter, a task's returns only in their index).
@Suite struct IDHashTests {
  /// Distinct values of the low 12 bits among 4,096 hashes: ~2,589 for a random
  /// function; a mix that left the low bits to one field's low bits would give far
  /// fewer for ids that differ elsewhere, or collide whole runs.
  func lowBitsSpread(_ hashes: [Int]) -> Int { Set(hashes.map { $0 & 0xFFF }).count }

  @Test func idsThatDifferInOneFieldSpreadOverTheLowBits() {
    for seed in [0, 1, -7, 0x5DEE_CE66_D1CE_4E5B] {
      let tasks = (1...4096).map { TaskID(prefix: 42, counter: UInt64($0), job: 1)._rawHashValue(seed: seed) }
      let jobs = (1...4096).map { TaskID(prefix: 42, counter: 9, job: UInt64($0) << 40)._rawHashValue(seed: seed) }
      let task = TaskID(prefix: 42, counter: 9, job: 1)
      let returns = (1...4096).map { ObjectID(task: task, index: UInt32($0))._rawHashValue(seed: seed) }
      let workers = (1...4096).map { UniqueID(a: 5, b: 6, c: 7, d: UInt32($0))._rawHashValue(seed: seed) }
      for hashes in [tasks, jobs, returns, workers] {
        #expect(Set(hashes).count == 4096)
        #expect(lowBitsSpread(hashes) > 2400)
      }
    }
  }

  @Test func equalIdsHashEquallyAndTablesFindThem() {
    let gen = (1...10_000).map { TaskID(prefix: 7, counter: UInt64($0), job: 3) }
    let set = Set(gen)
    #expect(set.count == gen.count)
    #expect(gen.allSatisfy { set.contains(TaskID(prefix: $0.prefix, counter: $0.counter, job: $0.job)) })
    #expect(!set.contains(TaskID(prefix: 8, counter: 1, job: 3)))
    let task = gen[0]
    // A put and a return of the same index are different objects.
    let put = ObjectID.forPut(by: task, index: 1), ret = ObjectID(task: task, index: 1)
    let byObject: [ObjectID: Int] = [put: 1, ret: 2]
    #expect(byObject[ObjectID.forPut(by: task, index: 1)] == 1 && byObject[ObjectID(task: task, index: 1)] == 2)
    #expect(put.hashValue != ret.hashValue)
    let w = UniqueID.random()
    #expect(w.hashValue == UniqueID(a: w.a, b: w.b, c: w.c, d: w.d).hashValue)
  }
}
