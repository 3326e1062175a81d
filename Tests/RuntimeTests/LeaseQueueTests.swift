import Foundation
import Testing
import Runtime

private func cpus(_ n: Double, _ extra: [String: Double] = [:]) -> ResourceSet {
  ResourceSet(units: extra.merging(["CPU": n]) { a, _ in a })
}

/// Drives a queue through worker start-up so tests start from N idle workers.
private func queueWithIdleWorkers(_ n: Int, total: ResourceSet, maxWorkers: Int = 8) -> (LeaseQueue, [WorkerID]) {
  var q = LeaseQueue(total: total, limits: .init(maxStartingWorkers: 4, maxWorkers: maxWorkers))
  let starts = q.prestart(count: n)
  #expect(starts.count == n)
  var ids: [WorkerID] = []
  for _ in 0..<n {
    let id = WorkerID.random()
    _ = q.workerStarting(id)
    _ = q.workerRegistered(id)
    ids.append(id)
  }
  return (q, ids)
}

private func grants(_ actions: [LeaseQueue.Action]) -> [UInt64] {
  actions.compactMap { if case .grant(let r, _) = $0 { return r } else { return nil } }
}

@Suite struct LeaseQueueTests {
  let owner = WorkerID.random()

  @Test func grantsAnIdleWorkerWhenResourcesFit() {
    var (q, _) = queueWithIdleWorkers(2, total: cpus(2))
    let a = q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner))
    #expect(grants(a) == [1])
    #expect(q.available == cpus(1))
  }

  @Test func aTwoCPUTaskNeverRunsBesideAnotherCPUTaskOnATwoCPUNode() {
    var (q, _) = queueWithIdleWorkers(2, total: cpus(2))
    #expect(grants(q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner))) == [1])
    #expect(grants(q.leaseRequested(.init(id: 2, shape: cpus(2), owner: owner))).isEmpty)
    #expect(q.pending.count == 1)
    let leaseID = q.leases.keys.first!
    let after = q.leaseReturned(leaseID, disconnect: false)
    #expect(grants(after) == [2])
    #expect(q.available == .empty)
  }

  @Test func customResourcesAreHardRequirements() {
    var (q, _) = queueWithIdleWorkers(2, total: cpus(2, ["accel": 1]))
    #expect(grants(q.leaseRequested(.init(id: 1, shape: cpus(0, ["accel": 1]), owner: owner))) == [1])
    #expect(grants(q.leaseRequested(.init(id: 2, shape: cpus(0, ["accel": 1]), owner: owner))).isEmpty)
  }

  @Test func aShapeNoNodeCanFitIsRejectedNamingTheMissingResource() {
    var (q, _) = queueWithIdleWorkers(1, total: cpus(2))
    let a = q.leaseRequested(.init(id: 7, shape: cpus(1, ["GPU": 1]), owner: owner))
    guard case .reject(7, let detail)? = a.first else { Issue.record("expected reject, got \(a)"); return }
    #expect(detail.contains("GPU"))
    #expect(q.pending.isEmpty)
  }

  @Test func startsWorkersWhenResourcesAreFreeButNoWorkerIsIdle() {
    var q = LeaseQueue(total: cpus(4), limits: .init(maxStartingWorkers: 2, maxWorkers: 8))
    let a = q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner))
    let b = q.leaseRequested(.init(id: 2, shape: cpus(1), owner: owner))
    let c = q.leaseRequested(.init(id: 3, shape: cpus(1), owner: owner))
    let starts = (a + b + c).filter { $0 == .startWorker(env: "") }.count
    #expect(starts == 2, "bounded by maxStartingWorkers")
    let w = WorkerID.random()
    _ = q.workerStarting(w)
    #expect(grants(q.workerRegistered(w)) == [1])
  }

  @Test func aLaunchThatFailsFreesItsPlaceForTheNextStart() {
    var q = LeaseQueue(total: cpus(2), limits: .init(maxStartingWorkers: 1, maxWorkers: 8))
    #expect(q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner)).filter { $0 == .startWorker(env: "") }.count == 1)
    let w = WorkerID.random()
    _ = q.workerStarting(w)
    #expect(q.startingWorkerCount == 1)
    #expect(q.workerLaunchFailed(w) == [.startWorker(env: "")], "another starts for the request waiting")
    #expect(q.startingWorkerCount == 1)
    let again = WorkerID.random()
    _ = q.workerStarting(again)
    #expect(q.workersFailToStart(detail: "fork: EAGAIN") == [.workerStartFailed(requestID: 1, detail: "fork: EAGAIN")])
    #expect(q.workerLaunchFailed(again).isEmpty, "nothing waits: nothing starts")
  }

  @Test func aBlockedWorkerLendsItsCPUSoNestedTasksRun() {
    var (q, ids) = queueWithIdleWorkers(2, total: cpus(1))
    #expect(grants(q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner))) == [1])
    #expect(grants(q.leaseRequested(.init(id: 2, shape: cpus(1), owner: owner))).isEmpty)
    let leased = q.leases.values.first!.worker
    #expect(ids.contains(leased))
    #expect(grants(q.workerBlocked(leased)) == [2])
    _ = q.workerUnblocked(leased)
    #expect(q.available[ResourceSet.cpu] == -ResourceSet.unit, "oversubscribed until someone returns")
  }

  @Test func aDeadLeasedWorkerReleasesItsResources() {
    var (q, _) = queueWithIdleWorkers(1, total: cpus(1))
    _ = q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner))
    let lease = q.leases.values.first!
    let a = q.workerExited(lease.worker)
    #expect(q.available == cpus(1))
    #expect(q.leases.isEmpty)
    #expect(a.isEmpty)
    // The owner's late return of that lease is harmless.
    #expect(q.leaseReturned(lease.id, disconnect: true).isEmpty)
  }

  @Test func whenAnOwnerDiesTheWorkersItLeasedAreKilledAndTheirResourcesFreed() {
    var (q, _) = queueWithIdleWorkers(3, total: cpus(2))
    _ = q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner))
    let ownersLease = q.leases.values.first!
    // The leased worker submits nested work: it is the owner of the next lease.
    _ = q.leaseRequested(.init(id: 2, shape: cpus(1), owner: ownersLease.worker))
    _ = q.leaseRequested(.init(id: 3, shape: cpus(1), owner: ownersLease.worker))
    #expect(q.pending.count == 1)
    let child = q.leases.values.first { $0.owner == ownersLease.worker }!
    let a = q.workerExited(ownersLease.worker)
    #expect(a.contains(.killWorker(child.worker)))
    #expect(q.leases.isEmpty)
    #expect(q.pending.isEmpty, "its queued requests go too")
    #expect(q.available == cpus(2))
  }

  @Test func aDisconnectedReturnKillsTheWorkerInsteadOfReusingIt() {
    var (q, _) = queueWithIdleWorkers(1, total: cpus(1))
    _ = q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner))
    let lease = q.leases.values.first!
    let a = q.leaseReturned(lease.id, disconnect: true)
    #expect(a.contains(.killWorker(lease.worker)))
    #expect(q.idleWorkerCount == 0)
  }

  @Test func canceledRequestsLeaveTheQueue() {
    var (q, _) = queueWithIdleWorkers(1, total: cpus(1))
    _ = q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner))
    _ = q.leaseRequested(.init(id: 2, shape: cpus(1), owner: owner))
    #expect(q.leaseRequestCanceled(2) == [.canceled(requestID: 2)])
    #expect(q.leaseRequestCanceled(2).isEmpty)
    #expect(q.pending.isEmpty)
  }

  @Test func resourcesAreNeverOvercommittedUnderRandomEvents() {
    var rng = SeededRandom(seed: 42)
    var (q, _) = queueWithIdleWorkers(3, total: cpus(3, ["GPU": 1]), maxWorkers: 6)
    var nextID: UInt64 = 1
    for _ in 0..<2_000 {
      switch rng.next() % 4 {
      case 0:
        let shape = [cpus(1), cpus(2), cpus(0.5), cpus(1, ["GPU": 1])][Int(rng.next() % 4)]
        _ = q.leaseRequested(.init(id: nextID, shape: shape, owner: owner)); nextID += 1
      case 1:
        if let l = q.leases.keys.sorted().first { _ = q.leaseReturned(l, disconnect: rng.next() % 5 == 0) }
      case 2:
        if q.startingWorkerCount > 0 {
          let id = WorkerID.random(); _ = q.workerStarting(id); _ = q.workerRegistered(id)
        }
      default:
        if let w = q.workers.keys.sorted(by: { $0.a < $1.a }).first, rng.next() % 3 == 0 { _ = q.workerExited(w) }
      }
      let leased = q.leases.values.reduce(ResourceSet.empty) { $0 + $1.shape }
      #expect(leased + q.available == q.total)
      #expect(q.workers.count <= 6)
    }
  }
}

@Suite struct LeaseRequestIDsTests {
  @Test func twoOwnersUsingTheSameNumberGetTwoRequestsAndNeitherTouchesTheOther() {
    var ids = LeaseRequestIDs()
    let a = LeaseRequestIDs.Key(owner: Data([1]), number: 7), b = LeaseRequestIDs.Key(owner: Data([2]), number: 7)
    let ia = ids.admit(a), ib = ids.admit(b)
    #expect(ia != nil && ib != nil && ia != ib)
    #expect(ids.admit(a) == nil, "the same owner's number twice is refused; the first keeps waiting")
    #expect(ids.find(a) == ia && ids.find(b) == ib)
    ids.settled(ia!)
    #expect(ids.find(a) == nil && ids.find(b) == ib, "answering one leaves the other")
    #expect(ids.admit(a) != nil, "a settled number may be used again")
    #expect(ids.pending == 2)
  }
}

@Suite struct LeaseOwnershipTests {
  @Test func onlyItsOwnerGivesALeaseBack() {
    var q = LeaseQueue(total: ResourceSet(units: ["CPU": 1]), limits: .init(maxStartingWorkers: 1, maxWorkers: 1))
    let w = WorkerID.random(), owner = WorkerID.random(), stranger = WorkerID.random()
    _ = q.workerStarting(w)
    _ = q.workerRegistered(w)
    let granted = q.leaseRequested(.init(id: 1, shape: ResourceSet(units: ["CPU": 1]), owner: owner))
    guard case .grant(_, let lease)? = granted.first else { Issue.record("granted: \(granted)"); return }
    #expect(q.leaseReturned(lease.id, disconnect: true, owner: stranger).isEmpty)
    #expect(q.available.units("CPU") == 0, "a stranger's return frees nothing")
    _ = q.leaseReturned(lease.id, disconnect: false, owner: owner)
    #expect(q.available.units("CPU") == 1)
  }
}
