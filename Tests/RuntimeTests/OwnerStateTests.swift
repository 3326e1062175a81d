import Foundation
import Runtime
import RuntimeProto
import Testing

/// A blocked reader, as the shell's `ObjectWaiter` is: here only its identity matters.
private final class Reader: Sendable {
  let needed: Int
  init(needed: Int) { self.needed = needed }
}
private typealias Owner = OwnerState<Reader, String>

private let ms: UInt64 = 1_000_000

private func address(_ w: WorkerID, node: NodeID = NodeID(a: 1, b: 1, c: 1, d: 1)) -> Swiftray_Address {
  var a = Swiftray_Address()
  a.workerID = Data(w.binary)
  a.nodeID = Data(node.binary)
  a.endpoint = "unix:/tmp/\(w.hex.prefix(8)).sock"
  return a
}

private let me = WorkerID.random()

/// A task id of another process (a fresh generator each time).
private func otherTask(job: UInt32) -> TaskID {
  var g = TaskIDGenerator(job: JobID(job))
  return g.next()
}
private func makeOwner() -> Owner {
  Owner(submitter: NormalTaskSubmitter(settings: .init(maxPendingLeaseRequests: 10, maxTasksInFlightPerWorker: 1,
                                                      idleLingerNanos: 10 * ms, infeasibleRetryNanos: 1000 * ms)),
        idGen: TaskIDGenerator(job: JobID(1)), selfAddress: address(me))
}

private func taskSpec(_ name: String = "f", returns: Int32 = 1, maxRetries: Int32 = 3) -> Swiftray_TaskSpec {
  var s = Swiftray_TaskSpec()
  s.name = name
  s.numReturns = returns
  s.maxRetries = maxRetries
  return s
}

private func errorCode(_ o: Swiftray_RayObject?) -> SwiftrayError.Code? {
  o.flatMap { ErrorObject.code(fromMetadata: $0.metadata) }
}

private func requests(_ e: Owner.Effects) -> [UInt64] {
  e.leases.compactMap { if case .request(let r, _, _) = $0 { return r } else { return nil } }
}
private func pushes(_ e: Owner.Effects) -> [(TaskID, Swiftray_TaskSpec, Swiftray_Address)] {
  e.leases.compactMap { if case .push(let t, let s, _, let w, _, _) = $0 { return (t, s, w) } else { return nil } }
}

private func granted(_ lease: UInt64, worker: WorkerID, node: NodeID = NodeID(a: 1, b: 1, c: 1, d: 1)) -> Swiftray_RequestWorkerLeaseReply {
  var r = Swiftray_RequestWorkerLeaseReply()
  r.status = .granted
  r.leaseID = lease
  r.worker = address(worker, node: node)
  r.leaseGrant = Data([7, 7])
  return r
}

private func reply(_ tid: TaskID, value: String, stored: UInt64 = 0, on node: Data = Data()) -> Swiftray_PushTaskReply {
  var r = Swiftray_PushTaskReply()
  var ret = Swiftray_ReturnObject()
  ret.objectID = Data(ObjectID.forReturn(of: tid, index: 0).binary)
  ret.object.data = Data(value.utf8)
  ret.object.storeSize = stored
  ret.object.storeNode = node
  r.returns = [ret]
  return r
}

/// Submits `spec` with `args`, grants the lease it asks for to `worker`, and returns the
/// task, its return, the lease and the push the owner decided.
private func submitAndPush(_ o: inout Owner, _ spec: Swiftray_TaskSpec = taskSpec(), args: [TaskArgument] = [],
                           lease: UInt64, worker: WorkerID, now: UInt64 = 0,
                           on node: (id: NodeID, manager: String)? = nil) throws -> (TaskID, ObjectID, Owner.Effects) {
  let (tid, returns, e) = try o.taskSubmitted(spec, args: args, kind: .normal, parent: nil, now: now).get()
  let r = try #require(requests(e).first)
  let reply = node.map { granted(lease, worker: worker, node: $0.id) } ?? granted(lease, worker: worker)
  let pushed = o.leaseReplied(r, reply, node: node?.manager, now: now)
  return (tid, returns[0], pushed)
}

@Suite struct OwnerStateTests {
  /// The worker a finished actor call's event names is the actor's incarnation's at the
  /// time, also after a restart (the owner keeps it at hand between calls).
  @Test func aFinishedActorCallsEventNamesTheWorkerOfItsActorsIncarnation() throws {
    var o = makeOwner()
    let actor = TaskID(prefix: 9, counter: 1, job: 1)
    _ = o.actorHandleAdded(actor, maxPendingCalls: -1)
    func alive(version: UInt64, restarts: Int32, worker: WorkerID, pid: Int32) -> Swiftray_ActorInfo {
      var i = Swiftray_ActorInfo()
      i.actorID = Data(actor.binary)
      i.state = .alive
      i.version = version
      i.numRestarts = restarts
      i.address = address(worker)
      i.address.pid = pid
      return i
    }
    func call(incarnation: Int32) throws -> (state: TaskEventState, worker: TaskEventRecord.Worker?) {
      var spec = taskSpec("A.m")
      spec.actorID = Data(actor.binary)
      let (tid, _, _) = try o.taskSubmitted(spec, args: [], kind: .actorCall(actor, maxTaskRetries: 0), parent: nil, now: 0).get()
      _ = o.takeActorSteps()
      o.actorStepsDone()
      _ = o.actorCallReplied(tid, incarnation: incarnation, reply: reply(tid, value: "1"), now: 1 * ms)
      let batch = o.taskEvents.take(max: 10).batch
      let r = try #require(batch.records.first { $0.id == tid })
      return (r.state, batch.worker(r))
    }
    let first = WorkerID.random(), second = WorkerID.random()
    _ = o.actorInfo(alive(version: 2, restarts: 0, worker: first, pid: 11))
    let a = try call(incarnation: 0), b = try call(incarnation: 0)
    #expect(a.state == .finished && a.worker?.workerID == Data(first.binary) && a.worker?.pid == 11)
    #expect(b.worker?.workerID == Data(first.binary) && b.worker === a.worker, "one worker object per incarnation")
    _ = o.actorInfo(alive(version: 4, restarts: 1, worker: second, pid: 12))
    let c = try call(incarnation: 1)
    #expect(c.state == .finished && c.worker?.workerID == Data(second.binary) && c.worker?.pid == 12)
  }

  /// The steps the shell drains carry each call's spec, read with the outbox, and one
  /// drainer at a time: the next round comes only after the last is done.
  @Test func actorCallsAreTakenWithTheirSpecsOneDrainerAtATime() throws {
    var o = makeOwner()
    let actor = TaskID(prefix: 9, counter: 2, job: 1)
    _ = o.actorHandleAdded(actor, maxPendingCalls: -1)
    var info = Swiftray_ActorInfo()
    info.actorID = Data(actor.binary)
    info.state = .alive
    info.version = 2
    info.address = address(WorkerID.random())
    _ = o.actorInfo(info)
    _ = o.takeActorSteps()
    o.actorStepsDone()
    func submit(_ name: String) throws -> TaskID {
      var spec = taskSpec(name)
      spec.actorID = Data(actor.binary)
      return try o.taskSubmitted(spec, args: [], kind: .actorCall(actor, maxTaskRetries: 0), parent: nil, now: 0).get().0
    }
    let first = try submit("A.first"), second = try submit("A.second")
    let taken = o.takeActorStepsWithSpecs()
    let round = try #require(taken)
    #expect(round.steps.count == 2 && round.specs.count == 2)
    for (step, spec, tid, name) in zip4(round.steps, round.specs, [first, second], ["A.first", "A.second"]) {
      guard case .call(.push(let pushed, _, _)) = step else { Issue.record("not a push: \(step)"); continue }
      #expect(pushed == tid && spec?.taskID == Data(tid.binary) && spec?.name == name)
    }
    let third = try submit("A.third")
    let whileDraining = o.takeActorStepsWithSpecs()
    #expect(whileDraining == nil, "another thread drains: it takes the next round")
    o.actorStepsDone()
    let after = o.takeActorStepsWithSpecs()
    let next = try #require(after)
    #expect(next.specs.map { $0?.taskID } == [Data(third.binary)])
  }

  private func zip4<A, B, C, D>(_ a: [A], _ b: [B], _ c: [C], _ d: [D]) -> [(A, B, C, D)] {
    (0..<min(a.count, b.count, c.count, d.count)).map { (a[$0], b[$0], c[$0], d[$0]) }
  }

  @Test func aTaskIsLeasedPushedAndItsReplyWakesItsReaderAndTheIdleLeaseGoesBack() throws {
    var o = makeOwner()
    let worker = WorkerID.random()
    let (tid, ret, e) = try submitAndPush(&o, lease: 5, worker: worker)
    let push = try #require(pushes(e).first)
    #expect(push.0 == tid && push.2.workerID == Data(worker.binary))
    #expect(push.1.owner.workerID == Data(me.binary), "the spec names its owner")
    guard case .push(_, _, _, _, _, let grant)? = e.leases.first else { Issue.record("no push"); return }
    #expect(grant == Data([7, 7]), "the node's grant goes with the push")

    let (reader, waiting) = o.waitStarted([ret], needed: 1, makeWaiter: Reader.init(needed:))
    #expect(reader?.needed == 1 && waiting.fetches.isEmpty)
    let (lost, done) = o.taskReplied(tid, leaseID: 5, reply: reply(tid, value: "42"), now: 1 * ms)
    #expect(lost == nil)
    #expect(done.wake.count == 1 && done.wake.first === reader)
    #expect(o.store[ret]?.data == Data("42".utf8))
    let tickAt = try #require(done.armTick, "an idle lease arms the owner's timer")
    let back = o.tick(now: tickAt + 1)
    guard case .giveBack(5, false, nil)? = back.leases.first else { Issue.record("lease kept: \(back.leases)"); return }
  }

  @Test func whenTheLastReferenceGoesNoStateIsLeftBehind() throws {
    var o = makeOwner()
    let (tid, ret, _) = try submitAndPush(&o, lease: 1, worker: .random())
    _ = o.taskReplied(tid, leaseID: 1, reply: reply(tid, value: "x", stored: 100, on: Data([9])), now: 0)
    let freed = o.localRefRemoved(ret, now: 0)
    #expect(freed.freeStored.map(\.0) == [ret], "the stored copy is freed where it lives")
    let s = o.stats
    #expect(s.objects == 0 && s.references == 0 && s.tasks == 0 && s.pendingTasks == 0)
  }

  /// A return held by the owner itself cannot be lost with a node, so its task keeps
  /// no lineage (no spec packed, none counted) even while the return is referenced; a
  /// return in a node's store keeps its task's spec until the return goes.
  @Test func onlyReturnsInANodesStoreKeepTheirTasksLineage() throws {
    var o = makeOwner()
    let (inline, inlineRet, _) = try submitAndPush(&o, lease: 1, worker: .random())
    _ = o.taskReplied(inline, leaseID: 1, reply: reply(inline, value: "small"), now: 0)
    #expect(o.store[inlineRet]?.data == Data("small".utf8), "the value is still there to read")
    #expect(o.tasks.spec(inline) == nil && o.tasks.lineageBytes == 0 && o.stats.tasks == 0)

    _ = o.localRefRemoved(inlineRet, now: 0)
    #expect(o.stats.objects == 0 && o.stats.references == 0 && o.stats.tasks == 0)

    var p = makeOwner()
    let (stored, storedRet, _) = try submitAndPush(&p, lease: 2, worker: .random())
    _ = p.taskReplied(stored, leaseID: 2, reply: reply(stored, value: "", stored: 1 << 20, on: Data([9])), now: 0)
    #expect(p.tasks.spec(stored) != nil && p.tasks.lineageBytes > 0, "kept: a node's death can lose the return")
    _ = p.localRefRemoved(storedRet, now: 0)
    #expect(p.tasks.spec(stored) == nil && p.tasks.lineageBytes == 0, "released with its return")
  }

  @Test func aFreedObjectReadsAsFreedAndALateReplyDoesNotBringItBack() throws {
    var o = makeOwner()
    let (tid, ret, _) = try submitAndPush(&o, lease: 1, worker: .random())
    _ = o.localRefRemoved(ret, now: 0)  // dropped while its task runs: the task is still pending
    let (late, _) = o.taskReplied(tid, leaseID: 1, reply: reply(tid, value: "big", stored: 1 << 20, on: Data([9])), now: 0)
    #expect(late == nil)
    #expect(o.store[ret] == nil, "out of scope when its value came: never stored")
    let (reader, _) = o.waitStarted([ret], needed: 1, makeWaiter: Reader.init(needed:))
    #expect(reader == nil)
    #expect(errorCode(o.store[ret]) == .objectFreed)

    // A second reply for a finished task is dropped too, and its stored copy freed.
    let again = o.objectsArrived([(ObjectID.forReturn(of: tid, index: 1), reply(tid, value: "y", stored: 8, on: Data([9])).returns[0].object)], now: 0)
    #expect(again.freeStored.count == 1 && again.wake.isEmpty)
  }

  @Test func aValueHoldsTheRefsInsideItAndFreesThemWithIt() throws {
    var o = makeOwner()
    let inner = o.nextPutID(running: nil)
    _ = o.objectPut(Swiftray_RayObject.with { $0.data = Data("inner".utf8); $0.storeSize = 64; $0.storeNode = Data([1]) }, id: inner)
    let outer = o.nextPutID(running: nil)
    _ = o.objectPut(Swiftray_RayObject.with {
      $0.data = Data("outer".utf8)
      $0.nestedRefs = [.with { $0.objectID = Data(inner.binary) }]
    }, id: outer)
    let kept = o.localRefRemoved(inner, now: 0)
    #expect(kept.freeStored.isEmpty, "still held by the value that contains it")
    let cascade = o.localRefRemoved(outer, now: 0)
    #expect(cascade.freeStored.map(\.0) == [inner], "freeing the outer value frees what it contained")
    #expect(o.stats.objects == 0 && o.stats.references == 0)
  }

  @Test func aBorrowedRefInsideAReturnIsGivenBackToItsOwnerWhenTheReturnGoes() throws {
    var o = makeOwner()
    let remoteOwner = address(.random(), node: .random())
    let borrowed = ObjectID.forPut(by: otherTask(job: 2), index: 1)
    let (tid, ret, _) = try submitAndPush(&o, lease: 1, worker: .random())
    // The worker registered this process at the ref's owner before replying.
    var r = reply(tid, value: "holder")
    r.returns[0].object.nestedRefs = [.with { $0.objectID = Data(borrowed.binary); $0.owner = remoteOwner }]
    let (_, arrived) = o.taskReplied(tid, leaseID: 1, reply: r, now: 0)
    #expect(arrived.borrowerChanges.isEmpty)
    #expect(o.ownerAddress(borrowed) == remoteOwner)
    let gone = o.localRefRemoved(ret, now: 0)
    #expect(gone.borrowerChanges == [.init(owner: remoteOwner, object: borrowed, borrower: me, added: false, count: 1)])
    #expect(o.owners[borrowed] == nil && o.stats.references == 0, "nothing is kept of a borrowed ref no one holds")
  }

  @Test func aReaderOfABorrowedRefAsksItsOwnerOnceAndIsWokenByTheAnswer() {
    var o = makeOwner()
    let theirs = ObjectID.forPut(by: otherTask(job: 2), index: 1)
    _ = o.localRefAdded(theirs, owner: address(.random(), node: .random()), now: 0)
    let (first, asked) = o.waitStarted([theirs], needed: 1, makeWaiter: Reader.init(needed:))
    #expect(asked.fetches == [theirs])
    let (_, again) = o.waitStarted([theirs], needed: 1, makeWaiter: Reader.init(needed:))
    #expect(again.fetches.isEmpty, "one fetch in flight per object")
    let answered = o.fetchEnded(theirs, Swiftray_RayObject.with { $0.data = Data("v".utf8) }, now: 0)
    #expect(answered.wake.count == 2 && answered.wake.contains { $0 === first })
    let enough = o.waitEnded([theirs], needed: 1, waiter: first!)
    #expect(enough, "a reader that timed out as the value came still gets it")
  }

  /// A wait over refs of every kind: an owned one still being computed is waited for;
  /// one put by a task of ours still running elsewhere is borrowed (its maker owns it)
  /// and fetched; one owned, freed and no longer computed reads as freed at once. A
  /// wait that ends unregisters from every ref it waited on, whichever woke it.
  @Test func aWaitOverRefsOfEveryKindFetchesTheBorrowedOneAndLeavesNoWaiterBehind() throws {
    var o = makeOwner()
    let (tid, pending, _) = try submitAndPush(&o, lease: 1, worker: .random())
    let putByIt = ObjectID.forPut(by: tid, index: 1)
    _ = o.localRefAdded(putByIt, owner: address(.random(), node: .random()), now: 0)
    let freed = ObjectID.forReturn(of: TaskID(prefix: 5, counter: 5, job: 1), index: 0)
    let (waiter, asked) = o.waitStarted([pending, putByIt, freed], needed: 2, makeWaiter: Reader.init(needed:))
    let w = try #require(waiter, "one of the two needed is here (the freed one, as its error)")
    #expect(w.needed == 1)
    #expect(asked.fetches == [putByIt], "borrowed, though its task is pending here")
    #expect(errorCode(o.store[freed]) == .objectFreed)
    #expect(o.stats.waitedObjects == 2)
    let (_, woken) = o.taskReplied(tid, leaseID: 1, reply: reply(tid, value: "v"), now: 0)
    #expect(woken.wake.contains { $0 === w })
    let enough = o.waitEnded([pending, putByIt, freed], needed: 2, waiter: w)
    #expect(enough)
    #expect(o.stats.waitedObjects == 0, "unregistered from the borrowed ref too")
    // The same wait again finds enough at once and registers nothing.
    let (none, _) = o.waitStarted([pending, putByIt, freed], needed: 2, makeWaiter: Reader.init(needed:))
    #expect(none == nil && o.stats.waitedObjects == 0)
  }

  /// A ref of another process made here again and again (a value of thousands of refs
  /// unpickled in a loop) records its owner once: the first owner named stays, and the
  /// address is not even read after that. Dropped by every holder, it registers its
  /// removal with that owner.
  @Test func aBorrowedRefRecordsItsOwnerOnceAndReadsNoAddressAfterThat() {
    var o = makeOwner()
    let theirs = ObjectID.forPut(by: otherTask(job: 2), index: 1)
    let first = address(.random(), node: .random())
    let made = o.borrowedRefAdded(theirs, owner: { first }, now: 0)
    #expect(made.borrowerChanges == [.init(owner: first, object: theirs, borrower: me, added: true, count: 1)])
    let again = o.borrowedRefAdded(theirs, owner: { Issue.record("the address was read again"); return address(.random()) }, now: 0)
    #expect(again.isEmpty, "registered once; nothing to carry out")
    #expect(o.ownerAddress(theirs) == first)
    _ = o.localRefRemoved(theirs, now: 0)
    let gone = o.localRefRemoved(theirs, now: 0)
    #expect(gone.borrowerChanges == [.init(owner: first, object: theirs, borrower: me, added: false, count: 1)])
    #expect(o.owners[theirs] == nil && o.stats.references == 0)
  }

  /// `Effects` holds nothing until a field is set, and copies as a value: changing a
  /// copy leaves the original as it was.
  @Test func effectsAreEmptyUntilSetAndCopyAsValues() {
    var a = Owner.Effects()
    #expect(a.isEmpty && a.fetches.isEmpty && a.armTick == nil && !a.actorSteps)
    let id = ObjectID.forPut(by: otherTask(job: 2), index: 1)
    a.fetches.append(id)
    #expect(!a.isEmpty && a.fetches == [id])
    var b = a
    b.fetches.append(id)
    b.armTick = 5
    b.warnings += ["w"]
    #expect(a.fetches == [id] && a.armTick == nil && a.warnings.isEmpty, "the original is unchanged")
    #expect(b.fetches == [id, id] && b.armTick == 5 && b.warnings == ["w"])
  }

  @Test func aRemoteReaderWaitsForAValueBeingComputedAndIsAnsweredWhenItComes() throws {
    var o = makeOwner()
    let (tid, ret, _) = try submitAndPush(&o, lease: 1, worker: .random())
    guard case .queued = o.remoteGet(ret, from: "borrower-1") else { Issue.record("not queued"); return }
    guard case .notFound = o.remoteGet(ObjectID.forReturn(of: otherTask(job: 3), index: 0), from: "x")
    else { Issue.record("an unknown object was queued"); return }
    let (_, e) = o.taskReplied(tid, leaseID: 1, reply: reply(tid, value: "v"), now: 0)
    #expect(e.replies.map(\.to) == ["borrower-1"])
  }

  @Test func aTaskWaitsForItsArgumentAndRunsWithItInlined() throws {
    var o = makeOwner()
    let (producer, arg, _) = try submitAndPush(&o, lease: 1, worker: .random())
    let (consumer, _, waiting) = try o.taskSubmitted(taskSpec("g"), args: [TaskArgument(.ref(arg, owner: nil))], kind: .normal,
                                                     parent: nil, now: 0).get()
    #expect(requests(waiting).isEmpty, "no lease before its argument exists")
    let (_, done) = o.taskReplied(producer, leaseID: 1, reply: reply(producer, value: "arg"), now: 0)
    // The producer's idle lease serves the consumer at once.
    let push = try #require(pushes(done).first { $0.0 == consumer })
    #expect(push.1.args.first?.value.data == Data("arg".utf8))
    #expect(push.1.args.first?.objectID == Data(arg.binary))
  }

  @Test func cancellingATaskThatWaitsForArgumentsFailsItsReturnsAtOnce() throws {
    var o = makeOwner()
    let (_, arg, _) = try submitAndPush(&o, lease: 1, worker: .random())
    let (_, returns, _) = try o.taskSubmitted(taskSpec("g"), args: [TaskArgument(.ref(arg, owner: nil))], kind: .normal,
                                               parent: nil, now: 0).get()
    let (step, _) = o.cancelRequested(returns[0].task, now: 0)
    #expect(step == .done)
    #expect(errorCode(o.store[returns[0]]) == .taskCancelled)
    let twice = o.cancelRequested(returns[0].task, now: 0).0
    #expect(twice == .finished)
    // The running producer is at its worker: cancel asks it, and may kill it.
    let atWorker = o.cancelRequested(arg.task, now: 0).0
    guard case .remote(_, _, true) = atWorker else { Issue.record("not remote: \(atWorker)"); return }
  }

  @Test func aWorkerDeathIsRetriedWithAWarningThenFailsWithHowTheWorkerWent() throws {
    var o = makeOwner()
    let (tid, ret, _) = try submitAndPush(&o, taskSpec(maxRetries: 1), lease: 1, worker: .random())
    let lost = o.workerLost(leaseID: 1, now: 0)
    guard case .lost([tid], _, nil, nil)? = lost.leases.first(where: { if case .lost = $0 { true } else { false } })
    else { Issue.record("no lost tasks: \(lost.leases)"); return }
    let retried = o.tasksLostWithWorker([tid], how: "exited with SIGKILL", now: 0)
    #expect(retried.warnings.count == 1 && retried.warnings[0].contains("Retrying it (retry 1 of 1"))
    #expect(requests(retried).count == 1)
    let failed = o.tasksLostWithWorker([tid], how: "exited with SIGKILL", now: 0)
    #expect(failed.warnings.isEmpty)
    #expect(errorCode(o.store[ret]) == .workerCrashed)
    let message = String(decoding: o.store[ret]?.data ?? Data(), as: UTF8.self)
    #expect(message.contains("SIGKILL"))
  }

  @Test func aNodeDeathRebuildsTaskReturnsAndReportsLostPuts() throws {
    var o = makeOwner()
    let dead = Data(NodeID.random().binary)
    let (tid, ret, _) = try submitAndPush(&o, lease: 1, worker: .random())
    _ = o.taskReplied(tid, leaseID: 1, reply: reply(tid, value: "", stored: 4096, on: dead), now: 0)
    let put = o.nextPutID(running: nil)
    _ = o.objectPut(Swiftray_RayObject.with { $0.storeSize = 64; $0.storeNode = dead; $0.storeAddress = "x:1" }, id: put)
    let e = o.nodeDied(dead, nodeManagers: ["10.0.0.9:1234"], why: "node d died", here: (Data([1]), "me:1"), now: 5 * ms)
    #expect(o.store[ret] == nil, "pending again while it is rebuilt")
    #expect(o.tasks.isPending(tid))
    #expect(!e.leases.isEmpty, "the task runs again (its idle lease or a new one)")
    #expect(errorCode(o.store[put]) == .objectLost)
    #expect(o.declaredDead([dead]))
    let (reader, _) = o.waitStarted([ret], needed: 1, makeWaiter: Reader.init(needed:))
    #expect(reader != nil, "a reader waits through the rebuild")
  }

  /// Found by swiftray-sim with partitions (seeds 200018 at 3 nodes and 100011 at 8):
  /// a node cut off past the health checks is declared dead while it still runs; when
  /// the link heals, its late reply and its late lease grants reach the owner. Taken,
  /// they pointed the owner at objects on a node that is then fenced — lost, and never
  /// rebuilt, for the owner had already handled that node's death.
  @Test func aReplyOrAGrantFromANodeDeclaredDeadMeanwhileIsRefusedAndTheTaskRunsElsewhere() throws {
    var o = makeOwner()
    let cut = NodeID.random()
    let (tid, ret, _) = try submitAndPush(&o, lease: 1, worker: .random(), on: (cut, "10.0.0.9:1234"))
    let death = o.nodeDied(Data(cut.binary), nodeManagers: ["10.0.0.9:1234"], why: "missed its health checks",
                           here: (Data([1]), "me:1"), now: 1 * ms)
    guard case .lost([tid], _, _, let why)? = death.leases.first(where: { if case .lost = $0 { true } else { false } })
    else { Issue.record("the task was not counted lost: \(death.leases)"); return }
    #expect(why == "missed its health checks")
    let retried = o.tasksLostWithWorker([tid], how: "its node died", now: 1 * ms)
    let again = try #require(requests(retried).first, "retried")
    // The healed node's reply of the first attempt: refused.
    let (_, stale) = o.taskReplied(tid, leaseID: 1, reply: reply(tid, value: "1", stored: 64, on: Data(cut.binary)), now: 2 * ms)
    #expect(stale.wake.isEmpty && stale.leases.isEmpty)
    #expect(o.store[ret] == nil && o.tasks.isPending(tid), "still pending: its retry will answer")
    // Its late grant: given back at once (disconnect), and the request made again.
    let late = o.leaseReplied(again, granted(2, worker: .random(), node: cut), node: "10.0.0.9:1234", now: 3 * ms)
    #expect(pushes(late).isEmpty, "nothing is pushed to a fenced node")
    #expect(late.leases.contains { if case .giveBack(2, true, "10.0.0.9:1234") = $0 { true } else { false } })
    let next = try #require(requests(o.tick(now: 200 * ms)).first, "asked again shortly")
    let elsewhere = o.leaseReplied(next, granted(3, worker: .random()), node: nil, now: 4 * ms)
    #expect(pushes(elsewhere).map(\.0) == [tid])
    _ = o.taskReplied(tid, leaseID: 3, reply: reply(tid, value: "1"), now: 5 * ms)
    #expect(o.store[ret]?.data == Data("1".utf8), "the retry's reply is taken")
  }

  @Test func aTaskWhoseArgumentsCouldNotBeReadWaitsForTheVerdictOnTheirNode() throws {
    var o = makeOwner()
    let far = Data(NodeID.random().binary)
    let (p, arg, _) = try submitAndPush(&o, lease: 1, worker: .random())
    let (_, returns, _) = try o.taskSubmitted(taskSpec("g"), args: [TaskArgument(.ref(arg, owner: nil))], kind: .normal,
                                               parent: nil, now: 0).get()
    let done = o.taskReplied(p, leaseID: 1, reply: reply(p, value: "", stored: 10, on: far), now: 0).1
    let consumer = returns[0].task
    #expect(pushes(done).contains { $0.0 == consumer })
    var couldNotRead = Swiftray_PushTaskReply()
    couldNotRead.lostArguments = [Data(arg.binary)]
    let (nodes, _) = o.taskReplied(consumer, leaseID: 1, reply: couldNotRead, now: 0)
    #expect(nodes == [far])
    // No verdict: the task fails with why.
    _ = o.argumentsVerdict(consumer, nodes: [far], detail: "connection refused", now: 0)
    #expect(errorCode(o.store[returns[0]]) == .objectLost)
  }

  @Test func aCallToAnActorPastItsMaxPendingCallsIsRefusedAndNothingIsRegistered() throws {
    var o = makeOwner()
    let actor = otherTask(job: 5)
    _ = o.actorHandleAdded(actor, maxPendingCalls: 1)
    var call = taskSpec("A.f")
    call.actorID = Data(actor.binary)
    _ = try o.taskSubmitted(call, args: [], kind: .actorCall(actor, maxTaskRetries: 0), parent: nil, now: 0).get()
    let before = o.stats
    guard case .failure(let e) = o.taskSubmitted(call, args: [], kind: .actorCall(actor, maxTaskRetries: 0), parent: nil, now: 0)
    else { Issue.record("admitted past max_pending_calls"); return }
    #expect(e.message.contains("max_pending_calls"))
    #expect(o.stats.references == before.references && o.stats.tasks == before.tasks)
  }

  @Test func anInfeasibleShapeWarnsOnceAndAFailedWorkerStartFailsTheQueuedTasks() throws {
    var o = makeOwner()
    let (_, returns, e) = try o.taskSubmitted(taskSpec(), args: [], kind: .normal, parent: nil, now: 0).get()
    let r = try #require(requests(e).first)
    var infeasible = Swiftray_RequestWorkerLeaseReply()
    infeasible.status = .infeasible
    infeasible.detail = "no node has 64 GPUs"
    let warned = o.leaseReplied(r, infeasible, node: nil, now: 0)
    #expect(warned.warnings.count == 1 && warned.warnings[0].contains("no node has 64 GPUs"))
    let retry = o.tick(now: 2000 * ms)
    let again = try #require(requests(retry).first)
    var failed = Swiftray_RequestWorkerLeaseReply()
    failed.status = .workerStartFailed
    failed.detail = "python exited 1"
    _ = o.leaseReplied(again, failed, node: nil, now: 2000 * ms)
    #expect(errorCode(o.store[returns[0]]) != nil)
  }
}
