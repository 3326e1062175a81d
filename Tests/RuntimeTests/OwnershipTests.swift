import Foundation
import Testing
import Runtime
import RuntimeProto

private func spec(_ id: TaskID, maxRetries: Int32 = 3, retryExceptions: Bool = false) -> Swiftray_TaskSpec {
  var s = Swiftray_TaskSpec()
  s.taskID = .init(id.binary)
  s.name = "f"
  s.maxRetries = maxRetries
  s.retryExceptions = retryExceptions
  s.numReturns = 1
  return s
}

private let crash = SwiftrayError(.workerCrashed, "worker 123 exited with signal 9")

@Suite struct TaskManagerTests {
  var gen = TaskIDGenerator(job: JobID(1))

  @Test mutating func aWorkerCrashIsRetriedUpToMaxRetriesThenFails() {
    var tm = TaskManager()
    let t = gen.next()
    tm.taskSubmitted(t, spec: spec(t, maxRetries: 2))
    #expect(tm.taskFailed(t, error: crash) == [.resubmit(t, reason: crash.message)])
    #expect(tm.spec(t)?.attempt == 1)
    #expect(tm.taskFailed(t, error: crash) == [.resubmit(t, reason: crash.message)])
    guard case .fail(t, let e)? = tm.taskFailed(t, error: crash).first else { Issue.record("no fail"); return }
    #expect(e.code == .workerCrashed)
    #expect(e.message.contains("signal 9"))
    #expect(e.message.contains("3 time(s)"))
    #expect(!tm.isPending(t))
  }

  @Test mutating func aLostReturnIsRebuiltWithinMaxRetriesAndSaysWhyWhenItCannotBe() {
    var tm = TaskManager()
    let t = gen.next(), once = gen.next(), never = gen.next()
    let lost = ObjectID.forReturn(of: t, index: 0)
    tm.taskSubmitted(t, spec: spec(t, maxRetries: 1))
    #expect(tm.taskReplied(t, outcome: .success) == [.complete(t)])
    #expect(tm.rebuild(t, lost: lost, why: "node died") == .resubmit)
    #expect(tm.isPending(t) && tm.spec(t)?.attempt == 1)
    #expect(tm.rebuild(t, lost: lost, why: "node died") == .alreadyRunning, "a second lost return: one re-run")
    #expect(tm.taskReplied(t, outcome: .success) == [.complete(t)])
    guard case .fail(let spent) = tm.rebuild(t, lost: lost, why: "node died") else { Issue.record("rebuilt twice"); return }
    #expect(spent.code == .reconstructionFailed && spent.message.contains("out of retries"))

    tm.taskSubmitted(never, spec: spec(never, maxRetries: 0))
    _ = tm.taskReplied(never, outcome: .success)
    guard case .fail(let zero) = tm.rebuild(never, lost: lost, why: "x") else { Issue.record("rebuilt"); return }
    #expect(zero.message.contains("max_retries=0"))

    guard case .fail(let gone) = tm.rebuild(once, lost: lost, why: "x") else { Issue.record("rebuilt"); return }
    #expect(gone.message.contains("lineage"))
  }

  @Test mutating func aFinishedTasksSpecKeptAsLineageReadsBackWholeWithItsOwner() {
    var tm = TaskManager()
    let t = gen.next(), u = gen.next()
    var full = spec(t, maxRetries: 3)
    full.name = "m.f"
    full.owner.workerID = Data(repeating: 7, count: 28)
    full.owner.endpoint = "unix:/tmp/owner.sock"
    var arg = Swiftray_TaskArg()
    arg.value.data = Data("inline argument bytes".utf8)
    full.args = [arg]
    tm.taskSubmitted(t, spec: full)
    var other = spec(u)
    other.owner = full.owner
    tm.taskSubmitted(u, spec: other)
    #expect(tm.taskReplied(t, outcome: .success) == [.complete(t)])
    _ = tm.taskReplied(u, outcome: .success)
    #expect(tm.spec(t) == full, "packed once finished, read back unchanged, owner included")
    #expect(tm.numReturns(t) == Int(full.numReturns))
    // Rebuilding unpacks it: the new attempt carries everything, owner included.
    #expect(tm.rebuild(t, lost: ObjectID.forReturn(of: t, index: 0), why: "node died") == .resubmit)
    var next = full
    next.attempt = 1
    #expect(tm.spec(t) == next)
    #expect(tm.spec(u)?.owner == full.owner)
  }

  @Test mutating func aKeptSpecPinsItsArgumentsLineageUntilItIsReleased() {
    var tm = TaskManager()
    let a = gen.next(), b = gen.next()
    let aOut = ObjectID.forReturn(of: a, index: 0)
    tm.taskSubmitted(a, spec: spec(a))
    var sb = spec(b)
    var arg = Swiftray_TaskArg()
    arg.ref.objectID = .init(aOut.binary)
    sb.args = [arg]
    tm.taskSubmitted(b, spec: sb)
    _ = tm.taskReplied(a, outcome: .success)
    _ = tm.taskReplied(b, outcome: .success)
    #expect(tm.isLineagePinned(aOut), "b's spec names a's return")
    #expect(tm.release(b) == [aOut], "releasing b unpins a's return")
    #expect(!tm.isLineagePinned(aOut))
    #expect(tm.release(a).isEmpty && tm.spec(a) == nil)
  }

  @Test mutating func keptLineageIsBoundedOldestFirstAndEvictedObjectsCannotBeRebuilt() {
    var tm = TaskManager()
    let ts = (0..<4).map { _ in gen.next() }
    for t in ts {
      var sp = spec(t)
      var arg = Swiftray_TaskArg()
      arg.value.data = .init(repeating: 7, count: 1000)
      sp.args = [arg]
      tm.taskSubmitted(t, spec: sp)
      _ = tm.taskReplied(t, outcome: .success)
    }
    #expect(tm.lineageBytes == 4 * 1256)
    _ = tm.evictLineage(limit: 2 * 1256)
    #expect(tm.spec(ts[0]) == nil && tm.spec(ts[1]) == nil && tm.spec(ts[2]) != nil && tm.lineageBytes == 2 * 1256)
    guard case .fail(let e) = tm.rebuild(ts[0], lost: ObjectID.forReturn(of: ts[0], index: 0), why: "node died")
    else { Issue.record("an evicted task was rebuilt"); return }
    #expect(e.code == .reconstructionFailed && e.message.contains("lineage evicted"))
    #expect(tm.rebuild(ts[3], lost: ObjectID.forReturn(of: ts[3], index: 0), why: "node died") == .resubmit)
    #expect(tm.lineageBytes == 1256, "a task running again is not kept lineage until it finishes")
  }

  @Test mutating func maxRetriesMinusOneRetriesForever() {
    var tm = TaskManager()
    let t = gen.next()
    tm.taskSubmitted(t, spec: spec(t, maxRetries: -1))
    for _ in 0..<50 { #expect(tm.taskFailed(t, error: crash) == [.resubmit(t, reason: crash.message)]) }
  }

  @Test mutating func applicationErrorsAreRetriedOnlyWhenRetryable() {
    var tm = TaskManager()
    let a = gen.next(), b = gen.next()
    tm.taskSubmitted(a, spec: spec(a))
    tm.taskSubmitted(b, spec: spec(b, retryExceptions: true))
    #expect(tm.taskReplied(a, outcome: .applicationError(retryable: false)) == [.complete(a)])
    guard case .resubmit(b, _)? = tm.taskReplied(b, outcome: .applicationError(retryable: true)).first else {
      Issue.record("expected resubmit"); return
    }
  }

  @Test mutating func aCancelledTaskIsNotRetriedAfterItsWorkerDies() {
    var tm = TaskManager()
    let t = gen.next()
    tm.taskSubmitted(t, spec: spec(t))
    let pending = tm.cancelRequested(t)
    #expect(pending)
    guard case .fail(t, let e)? = tm.taskFailed(t, error: crash).first else { Issue.record("no fail"); return }
    #expect(e.code == .taskCancelled)
  }

  @Test mutating func lateRepliesForFinishedTasksAreIgnored() {
    var tm = TaskManager()
    let t = gen.next()
    tm.taskSubmitted(t, spec: spec(t))
    #expect(tm.taskReplied(t, outcome: .success) == [.complete(t)])
    #expect(tm.taskReplied(t, outcome: .success).isEmpty)
    #expect(tm.taskFailed(t, error: crash).isEmpty)
  }
}

@Suite struct DependencyResolverTests {
  var gen = TaskIDGenerator(job: JobID(1))

  @Test mutating func aTaskWaitsForAllItsArgumentsThenBecomesReadyOnce() {
    var r = DependencyResolver()
    let t = gen.next()
    let o1 = ObjectID.forReturn(of: gen.next(), index: 0), o2 = ObjectID.forReturn(of: gen.next(), index: 0)
    let readyNow = r.taskArrived(t, dependencies: [o1, o2, o1], isReady: { _ in false })
    #expect(!readyNow)
    #expect(r.objectAvailable(o1).isEmpty)
    #expect(r.objectAvailable(o2) == [t])
    #expect(r.objectAvailable(o2).isEmpty)
    #expect(r.numWaitingTasks == 0)
  }

  @Test mutating func readyArgumentsDoNotBlock() {
    var r = DependencyResolver()
    let o = ObjectID.forReturn(of: gen.next(), index: 0)
    let ready = r.taskArrived(gen.next(), dependencies: [o], isReady: { $0 == o })
    #expect(ready)
  }

  @Test mutating func tasksWaitingOnOneObjectWakeInArrivalOrder() {
    var r = DependencyResolver()
    let o = ObjectID.forReturn(of: gen.next(), index: 0)
    let ts = (0..<5).map { _ in gen.next() }
    for t in ts { _ = r.taskArrived(t, dependencies: [o], isReady: { _ in false }) }
    let removed = r.taskRemoved(ts[2])
    #expect(removed)
    #expect(r.objectAvailable(o) == [ts[0], ts[1], ts[3], ts[4]])
  }

  /// Thousands of tasks wait for one object that never arrives and most are removed
  /// (cancelled), in any order: the waiter list stays bounded by those still waiting,
  /// and the rest wake once each, in arrival order, when another of their arguments
  /// arrives. A task removed and queued again wakes once.
  @Test mutating func removingManyWaitersKeepsTheRestInOrderAndTheListsBounded() {
    var r = DependencyResolver()
    let never = ObjectID.forReturn(of: gen.next(), index: 0), o = ObjectID.forReturn(of: gen.next(), index: 0)
    let ts = (0..<3_000).map { _ in gen.next() }
    for t in ts { _ = r.taskArrived(t, dependencies: [never, o], isReady: { _ in false }) }
    let kept = Set(stride(from: 0, to: ts.count, by: 10).map { ts[$0] })
    for t in ts.reversed() where !kept.contains(t) {
      let removed = r.taskRemoved(t)
      #expect(removed)
      #expect(r.numWaiterEntries <= 2 * (2 * r.numWaitingTasks + 33))  // two lists
    }
    let again = r.taskRemoved(ts[1])
    #expect(!again, "removed already")
    // Queued again after its removal, now waiting for `o` only.
    _ = r.taskArrived(ts[1], dependencies: [o], isReady: { _ in false })
    #expect(r.objectAvailable(o) == [ts[1]])
    #expect(r.objectAvailable(never) == ts.filter { kept.contains($0) })
    #expect(r.numWaitingTasks == 0 && r.numWaiterEntries == 0)
  }
}

@Suite struct ReferenceTableTests {
  var gen = TaskIDGenerator(job: JobID(1))
  let me = WorkerID.random(), other = WorkerID.random()

  @Test mutating func anOwnedObjectIsFreedWhenTheLastLocalRefAndTaskRefGo() {
    var t = ReferenceTable()
    let o = ObjectID.forReturn(of: gen.next(), index: 0)
    t.ownedObjectCreated(o)
    #expect(t.localRefAdded(o).isEmpty)
    t.submittedTaskRefsAdded([o])
    #expect(t.localRefRemoved(o).isEmpty, "a pending task still uses it")
    #expect(t.submittedTaskRefsRemoved([o]) == [.free(o)])
    #expect(!t.isInScope(o))
  }

  @Test mutating func borrowersOfOneObjectAreBoundedAndTheirCountsCannotOverflow() {
    var t = ReferenceTable()
    let o = ObjectID.forReturn(of: gen.next(), index: 0)
    t.ownedObjectCreated(o)
    var accepted = 0
    for _ in 0..<ReferenceTable.maxBorrowersPerObject where t.borrowerAdded(o, WorkerID.random()) { accepted += 1 }
    #expect(accepted == ReferenceTable.maxBorrowersPerObject)
    let extra = t.borrowerAdded(o, WorkerID.random())
    #expect(!extra, "one borrower too many is refused")
    #expect(t.refs[o]?.borrowers.count == ReferenceTable.maxBorrowersPerObject)
    // A known borrower may still add registrations; a huge count saturates.
    let known = t.refs[o]!.borrowers.keys.first!
    let first = t.borrowerAdded(o, known, count: Int.max), second = t.borrowerAdded(o, known, count: Int.max)
    #expect(first && second)
    #expect(t.refs[o]?.borrowers[known] == ReferenceTable.maxRegistrationsPerBorrower)
  }

  @Test mutating func aBorrowerRegistersOnceAndRemovesEveryRegistrationWhenDone() {
    var t = ReferenceTable()
    let o = ObjectID.forReturn(of: gen.next(), index: 0)
    #expect(t.localRefAdded(o, borrowed: true) == [.register(o)])
    #expect(t.localRefAdded(o, borrowed: true).isEmpty, "registered already")
    // A value holding the ref arrives, registered for us by its sender.
    t.containedRefsAdded([o])
    #expect(t.registrationsReceived(o, count: 1, me: me).isEmpty)
    #expect(t.localRefRemoved(o).isEmpty && t.localRefRemoved(o).isEmpty, "the value still holds it")
    #expect(t.containedRefsRemoved([o]) == [.forget(o, registrations: 2)])
  }

  @Test mutating func anOwnedObjectLivesWhileBorrowersAndContainingValuesDo() {
    var t = ReferenceTable()
    let inner = ObjectID.forPut(by: gen.next(), index: 1)
    t.ownedObjectCreated(inner)
    _ = t.localRefAdded(inner)
    t.containedRefsAdded([inner])  // put([inner])
    t.borrowerAdded(inner, other, count: 2)
    #expect(t.localRefRemoved(inner).isEmpty)
    #expect(t.containedRefsRemoved([inner]).isEmpty, "a borrower still holds it")
    #expect(t.borrowerRemoved(inner, other, count: 1).isEmpty)
    #expect(t.borrowerRemoved(inner, other, count: 1) == [.free(inner)])
  }

  /// A borrower that dies never removes its registrations: the owner learns of the
  /// death (the head's log of worker exits, or its node's death) and drops it.
  @Test mutating func aBorrowerThatDiesNoLongerKeepsTheObjectsItHeld() {
    var t = ReferenceTable()
    let held = ObjectID.forPut(by: gen.next(), index: 1), shared = ObjectID.forPut(by: gen.next(), index: 2)
    let node = Data([7]), survivor = WorkerID.random()
    for o in [held, shared] { t.ownedObjectCreated(o) }
    t.borrowerAdded(held, other, node: node, count: 3)
    t.borrowerAdded(shared, other, node: node)
    t.borrowerAdded(shared, survivor)
    #expect(t.borrowersDied([other]) == [.free(held)], "the survivor still holds the shared one")
    #expect(t.refs[shared]?.borrowers.keys.map { $0 } == [survivor])
    #expect(t.borrowersDied([other]).isEmpty, "told twice: nothing more")
    let late = t.borrowerAdded(shared, other)
    #expect(late, "a registration arriving after the news of its death")
    #expect(t.refs[shared]?.borrowers[other] == nil, "is not counted: it would keep the object forever")
    #expect(t.borrowerRemoved(shared, survivor, count: 1) == [.free(shared)])
  }

  @Test mutating func aNodesDeathDropsEveryBorrowerOnItAndOnlyThose() {
    var t = ReferenceTable()
    let o = ObjectID.forPut(by: gen.next(), index: 1), p = ObjectID.forPut(by: gen.next(), index: 2)
    let dying = Data([1]), living = Data([2])
    let a = WorkerID.random(), b = WorkerID.random(), c = WorkerID.random()
    for x in [o, p] { t.ownedObjectCreated(x) }
    t.borrowerAdded(o, a, node: dying)
    t.borrowerAdded(p, b, node: dying)
    t.borrowerAdded(p, c, node: living)
    #expect(t.borrowersDied(onNode: dying) == [.free(o)])
    #expect(t.refs[p]?.borrowers.keys.map { $0 } == [c])
    // A borrower that let go before its node died is forgotten with its last object.
    #expect(t.borrowerRemoved(p, c, count: 1) == [.free(p)])
    #expect(t.borrowersDied(onNode: living).isEmpty)
  }

  @Test mutating func aRegistrationNamingTheOwnerItselfTurnsIntoContainment() {
    var t = ReferenceTable()
    let o = ObjectID.forPut(by: gen.next(), index: 1)
    t.ownedObjectCreated(o)
    _ = t.localRefAdded(o)
    // A worker returns our own ref to us: it registered us (the owner) as borrower first.
    t.borrowerAdded(o, me)
    #expect(t.localRefRemoved(o).isEmpty)
    t.containedRefsAdded([o])
    #expect(t.registrationsReceived(o, count: 1, me: me).isEmpty)
    #expect(t.refs[o]?.borrowers.isEmpty == true)
    #expect(t.containedRefsRemoved([o]) == [.free(o)])
  }

  @Test mutating func anEscapedRefStaysAlive() {
    var t = ReferenceTable()
    let o = ObjectID.forPut(by: gen.next(), index: 1)
    t.ownedObjectCreated(o)
    _ = t.localRefAdded(o)
    t.refEscaped(o)
    #expect(t.localRefRemoved(o).isEmpty)
    #expect(t.isInScope(o))
  }
}

@Suite struct IDTests {
  @Test func idsRoundTripThroughBinaryAndHex() {
    var g = TaskIDGenerator(job: JobID(7))
    let t = g.next()
    let o = ObjectID.forReturn(of: t, index: 2)
    #expect(ObjectID(binary: o.binary) == o)
    #expect(ObjectID(hex: o.hex) == o)
    #expect(o.hex.count == 56)
    #expect(!o.isPut && ObjectID.forPut(by: t, index: 3).isPut)
    let w = WorkerID.random()
    #expect(WorkerID(hex: w.hex) == w)
    #expect(JobID(binary: JobID(9).binary) == JobID(9))
  }

  /// wait() refuses a list naming one object twice: found wherever the pair sits, among
  /// ids that differ only in a field the hash mixes in (counter, index, prefix, job).
  @Test func theFirstRepeatedIdIsFoundAndDistinctIdsPass() {
    var g = TaskIDGenerator(job: JobID(7), prefix: 5)
    var ids = (0..<3000).map { i in ObjectID.forReturn(of: g.next(), index: i % 3) }
    ids += (0..<50).map { ObjectID.forPut(by: TaskID(prefix: 5, counter: 99_999, job: 7), index: UInt32($0)) }
    ids += (0..<50).map { ObjectID.forReturn(of: TaskID(prefix: UInt64($0), counter: 99_999, job: 7), index: 0) }
    ids += (0..<50).map { ObjectID.forReturn(of: TaskID(prefix: 5, counter: 99_999, job: UInt64($0) + 100), index: 0) }
    #expect(ObjectID.firstDuplicate(in: ids) == nil)
    #expect(ObjectID.firstDuplicate(in: []) == nil && ObjectID.firstDuplicate(in: [ids[0]]) == nil)
    var rng = SeededRandom(seed: 3)
    for _ in 0..<50 {
      let a = Int(rng.next() % UInt64(ids.count)), b = Int(rng.next() % UInt64(ids.count))
      guard a != b else { continue }
      var twice = ids
      twice[b] = ids[a]
      #expect(ObjectID.firstDuplicate(in: twice) == max(a, b))
    }
  }

  @Test func resourceArithmeticIsExactForFractions() {
    var r = ResourceSet(units: ["CPU": 1])
    for _ in 0..<10 { r = r - ResourceSet(units: ["CPU": 0.1]) }
    #expect(r == .empty)
  }
}
