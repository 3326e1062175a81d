import Foundation
import Testing
import Runtime

private let unit = ResourceSet.unit

private func ids(_ shares: [GPUInstances.Share]?) -> [Int]? { shares.map { $0.map(\.id) } }

private func leasesWithGPUs(_ q: LeaseQueue) -> [[Int]] {
  q.leases.values.sorted { $0.id < $1.id }.map(\.gpuIDs)
}

/// A node with `gpus` GPUs and `workers` idle workers.
private func gpuNode(gpus: Double, cpus: Double = 8, workers: Int = 6) -> LeaseQueue {
  var q = LeaseQueue(total: ResourceSet(units: ["CPU": cpus, "GPU": gpus]), limits: .init(maxStartingWorkers: 8, maxWorkers: 16))
  _ = q.prestart(count: workers)
  for _ in 0..<workers {
    let w = WorkerID.random()
    _ = q.workerStarting(w)
    _ = q.workerRegistered(w)
  }
  return q
}

@Suite struct GPUInstancesTests {
  @Test func wholeGPUsGoToOneRequestEachLowestIDsFirst() {
    var g = GPUInstances(count: 4)
    #expect(ids(g.take(2 * unit)) == [0, 1])
    #expect(ids(g.take(unit)) == [2])
    #expect(g.take(2 * unit) == nil)  // only GPU 3 is free
    #expect(ids(g.take(unit)) == [3])
  }

  @Test func fractionsShareAGPUPackedOntoTheFullestThatFits() {
    var g = GPUInstances(count: 2)
    #expect(ids(g.take(unit / 2)) == [0])
    #expect(ids(g.take(unit / 4)) == [0])  // best fit: GPU 0 has 0.5 left, GPU 1 a whole one
    #expect(ids(g.take(unit / 2)) == [1])  // 0.25 left on GPU 0 is too little
    #expect(ids(g.take(unit / 4)) == [0])
    #expect(g.take(unit) == nil)  // no whole GPU is left
  }

  @Test func whatIsGivenBackCanBeTakenAgain() {
    var g = GPUInstances(count: 1)
    let a = g.take(unit / 2)!
    let b = g.take(unit / 2)!
    #expect(g.take(unit / 10) == nil)
    g.give(a)
    g.give(b)
    #expect(ids(g.take(unit)) == [0])
  }

  @Test func aRefusedTakeLeavesEverythingFree() {
    var g = GPUInstances(count: 2)
    #expect(g.take(3 * unit) == nil)
    #expect(ids(g.take(2 * unit)) == [0, 1])
  }
}

@Suite struct LeaseGPUAssignmentTests {
  let owner = WorkerID.random()

  @Test func eachLeaseHoldingWholeGPUsGetsItsOwnIDs() {
    var q = gpuNode(gpus: 2)
    _ = q.leaseRequested(.init(id: 1, shape: ResourceSet(units: ["CPU": 1, "GPU": 1]), owner: owner))
    _ = q.leaseRequested(.init(id: 2, shape: ResourceSet(units: ["CPU": 1, "GPU": 1]), owner: owner))
    #expect(leasesWithGPUs(q) == [[0], [1]])
  }

  @Test func halfGPUsShareOneIDAndAThirdWaitsForARelease() {
    var q = gpuNode(gpus: 1)
    for id in 1...3 as ClosedRange<UInt64> {
      _ = q.leaseRequested(.init(id: id, shape: ResourceSet(units: ["CPU": 1, "GPU": 0.5]), owner: owner))
    }
    #expect(leasesWithGPUs(q) == [[0], [0]])
    #expect(q.pending.count == 1)
    let first = q.leases.keys.min()!
    _ = q.leaseReturned(first, disconnect: false)
    #expect(q.pending.isEmpty)
    #expect(leasesWithGPUs(q) == [[0], [0]])
  }

  @Test func aTaskWithoutGPUsHoldsNone() {
    var q = gpuNode(gpus: 2)
    _ = q.leaseRequested(.init(id: 1, shape: ResourceSet(units: ["CPU": 1]), owner: owner))
    #expect(leasesWithGPUs(q) == [[]])
  }

  @Test func tasksInABundleGetTheGPUsTheBundleSetAside() {
    var q = gpuNode(gpus: 2)
    // Another lease takes GPU 0 first; the bundle then reserves GPU 1.
    _ = q.leaseRequested(.init(id: 1, shape: ResourceSet(units: ["CPU": 1, "GPU": 1]), owner: owner))
    let group = String(repeating: "ab", count: 16)
    let prepared = q.bundlesPrepared(group: group, [0: ResourceSet(units: ["CPU": 1, "GPU": 1])])
    #expect(prepared)
    _ = q.bundlesCommitted(group: group)
    let inside = BundleResources.inside(ResourceSet(units: ["CPU": 1, "GPU": 0.5]), group: group, index: 0)
    _ = q.leaseRequested(.init(id: 2, shape: inside, owner: owner))
    #expect(leasesWithGPUs(q) == [[0], [1]])
    // The bundle's GPU goes back to the node with the group.
    _ = q.bundlesReturned(group: group)
    _ = q.leaseRequested(.init(id: 3, shape: ResourceSet(units: ["CPU": 1, "GPU": 1]), owner: owner))
    #expect(leasesWithGPUs(q).last == [1])
  }
}

@Suite struct QueueSpillbackTests {
  func node(_ name: String, free: Double, total: Double = 1) -> NodePicker.NodeView {
    .init(id: [UInt8](name.utf8).withUnsafeBufferPointer { Data($0) }, address: name,
          total: ResourceSet(units: ["CPU": total]), available: ResourceSet(units: ["CPU": free]), alive: true, startTimeMs: 0)
  }

  @Test func aRequestThisNodeCannotRunGoesToANodeWithRoom() {
    var rng = SystemRandomNumberGenerator()
    var others = [node("b", free: 1), node("c", free: 0)]
    let moves = QueueSpillback.moves([(id: 7, needs: ResourceSet(units: ["CPU": 1]))], free: .empty, others: &others, using: &rng)
    #expect(moves == [.init(requestID: 7, address: "b")])
    #expect(others[0].available == .empty)  // counted against it until it reports
  }

  @Test func requestsThatFitHereStayAndEachFreeNodeTakesOnlyWhatItHas() {
    var rng = SystemRandomNumberGenerator()
    var others = [node("b", free: 1), node("c", free: 1)]
    let one = ResourceSet(units: ["CPU": 1])
    let queued: [(id: UInt64, needs: ResourceSet)] = [(1, one), (2, one), (3, one), (4, one)]
    let moves = QueueSpillback.moves(queued, free: one, others: &others, using: &rng)
    // Request 1 fits here; 2 and 3 go to b and c (one each); 4 waits here.
    #expect(Set(moves.map(\.requestID)) == [2, 3])
    #expect(Set(moves.map(\.address)) == ["b", "c"])
  }

  @Test func nothingMovesWhenNoOtherNodeHasRoom() {
    var rng = SystemRandomNumberGenerator()
    var others = [node("b", free: 0)]
    #expect(QueueSpillback.moves([(id: 1, needs: ResourceSet(units: ["CPU": 1]))], free: .empty, others: &others, using: &rng).isEmpty)
  }
}
