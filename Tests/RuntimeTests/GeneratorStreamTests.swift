import Foundation
import Runtime
import RuntimeProto
import Testing

private final class Reader: Sendable {
  let needed: Int
  init(needed: Int) { self.needed = needed }
}
private typealias Owner = OwnerState<Reader, String>
private typealias Streams = GeneratorStreams<String>

private let me = WorkerID.random()

private func someTask(job: UInt32 = 3) -> TaskID {
  var g = TaskIDGenerator(job: JobID(job))
  return g.next()
}

private func makeOwner() -> Owner {
  var a = Swiftray_Address()
  a.workerID = Data(me.binary)
  a.endpoint = "unix:/tmp/owner.sock"
  return Owner(submitter: NormalTaskSubmitter(settings: .init(maxPendingLeaseRequests: 10, maxTasksInFlightPerWorker: 1,
                                                             idleLingerNanos: 10_000_000, infeasibleRetryNanos: 1_000_000_000)),
               idGen: TaskIDGenerator(job: JobID(1)), selfAddress: a)
}

private func streamingSpec() -> Swiftray_TaskSpec {
  var s = Swiftray_TaskSpec()
  s.name = "gen"
  CoreWorker.setReturns(&s, -1)
  s.maxRetries = 3
  return s
}

private func value(_ text: String) -> Swiftray_RayObject {
  var o = Swiftray_RayObject()
  o.data = Data(text.utf8)
  return o
}

private func endReply(_ tid: TaskID, items: Int) -> Swiftray_PushTaskReply {
  var r = Swiftray_PushTaskReply()
  var ret = Swiftray_ReturnObject()
  ret.objectID = Data(ObjectID.forReturn(of: tid, index: 0).binary)
  ret.object = value("\(items)")
  r.returns = [ret]
  r.streamedItems = UInt64(items)
  return r
}

@Suite struct GeneratorStreamTests {
  private let tid = someTask()

  @Test func itemsAreHandedOutInOrderOnceEachEvenWhenARetryReportsThemAgain() {
    var s = Streams()
    s.started(tid)
    let v1 = s.next(tid).0
    #expect(v1 == .notYet)
    let v2 = s.itemReported(tid, index: 0)
    #expect(v2 == .new)
    let v3 = s.itemReported(tid, index: 2)
    #expect(v3 == .new, "past a gap: kept apart")
    let v4 = s.next(tid).0
    #expect(v4 == .item(0))
    let v5 = s.next(tid).0
    #expect(v5 == .notYet, "item 1 has not come")
    let v6 = s.itemReported(tid, index: 0)
    #expect(v6 == .notKept, "a retried attempt's repeat")
    let v7 = s.itemReported(tid, index: 1)
    #expect(v7 == .new)
    let v8 = s.next(tid).0
    #expect(v8 == .item(1))
    let v9 = s.next(tid).0
    #expect(v9 == .item(2), "the gap closed")
    let v10 = s.itemReported(tid, index: 2)
    #expect(v10 == .notKept)
    _ = s.ended(tid, succeeded: true)
    let v11 = s.next(tid).0
    #expect(v11 == .end)
    let v12 = s.itemReported(tid, index: 3)
    #expect(v12 == .notKept, "nothing is kept after the end")
  }

  @Test func aFailedStreamHandsItsErrorOutOnceAfterItsItems() {
    var s = Streams()
    s.started(tid)
    let v13 = s.itemReported(tid, index: 0)
    #expect(v13 == .new)
    _ = s.ended(tid, succeeded: false)
    let v14 = s.next(tid).0
    #expect(v14 == .item(0))
    let v15 = s.next(tid).0
    #expect(v15 == .error)
    let v16 = s.next(tid).0
    #expect(v16 == .end)
  }

  @Test func aPeersIndexIsRangeCheckedAndAnUnknownTaskRefused() {
    var s = Streams()
    s.started(tid)
    guard case .refused = s.itemReported(tid, index: -1) else { Issue.record("negative index kept"); return }
    guard case .refused = s.itemReported(tid, index: Streams.maxIndexAhead) else { Issue.record("far index kept"); return }
    guard case .refused = s.itemReported(someTask(job: 4), index: 0) else {
      Issue.record("unknown task kept"); return
    }
  }

  @Test func aWorkerAheadOfItsReaderIsHeldUntilTheReaderTakesEnough() {
    var s = Streams()
    s.started(tid)
    for i in 0..<3 { #expect(s.itemReported(tid, index: i) == .new) }
    guard case .held(let id) = s.pollStarted(tid, want: 2, poller: "w") else { Issue.record("not held"); return }
    let v17 = s.next(tid).1.isEmpty
    #expect(v17, "one taken: not enough")
    let (_, due) = s.next(tid)
    #expect(due.map(\.0) == [id] && due.map(\.1) == ["w"])
    #expect(s.progress(tid).consumed == 2)
    guard case .held(let id2) = s.pollStarted(tid, want: 5, poller: "w2") else { Issue.record("not held"); return }
    let v18 = s.pollExpired(tid, id: id2)
    #expect(v18 == "w2")
    let v19 = s.pollExpired(tid, id: id2)
    #expect(v19 == nil, "answered once")
    guard case .now = s.pollStarted(tid, want: 1, poller: "w3") else { Issue.record("held though satisfied"); return }
  }

  @Test func droppingTheGeneratorReleasesWhatWasNotReadAndTellsTheWorkerToStop() {
    var s = Streams()
    s.started(tid)
    for i in [0, 1, 3] { _ = s.itemReported(tid, index: i) }
    let v20 = s.next(tid).0
    #expect(v20 == .item(0))
    guard case .held = s.pollStarted(tid, want: 4, poller: "w") else { Issue.record("not held"); return }
    let (unread, due) = s.closed(tid)
    #expect(unread == [1, 3])
    #expect(due.map(\.1) == ["w"])
    #expect(s.progress(tid).closed)
    let v21 = s.itemReported(tid, index: 2)
    #expect(v21 == .notKept)
    _ = s.ended(tid, succeeded: true)
    #expect(s.count == 0, "closed and ended: forgotten")
  }

  @Test func theOwnerKeepsReportedItemsForTheReaderAndFreesThoseNeverRead() throws {
    var o = makeOwner()
    let (tid, returns, _) = try o.taskSubmitted(streamingSpec(), args: [], kind: .normal, parent: nil, now: 0).get()
    #expect(returns == [ObjectID.forReturn(of: tid, index: 0)], "one return: the stream's end")
    let (r0, _) = o.generatorItemReported(tid, index: 0, object: value("a"), now: 1)
    #expect(try r0.get().consumed == 0)
    let first = ObjectID.forReturn(of: tid, index: 1)
    #expect(o.store[first]?.data == Data("a".utf8))
    let (next, _) = o.generatorNext(tid, now: 2)
    #expect(next == .item(first))
    // The reader's ref is the stream's: dropping it frees the item.
    _ = o.localRefRemoved(first, now: 3)
    #expect(o.store[first] == nil)

    _ = o.generatorItemReported(tid, index: 1, object: value("b"), now: 4)
    let (again, _) = o.generatorItemReported(tid, index: 1, object: value("b2"), now: 5)
    #expect(try again.get().consumed == 1)
    let second = ObjectID.forReturn(of: tid, index: 2)
    #expect(o.store[second]?.data == Data("b".utf8), "the first report of an item is kept")

    _ = o.generatorClosed(tid, now: 6)
    #expect(o.store[second] == nil, "never read: freed with the generator")
    let (late, _) = o.generatorItemReported(tid, index: 2, object: value("c"), now: 7)
    #expect(try late.get().closed, "the worker is told to stop")
    #expect(o.store[ObjectID.forReturn(of: tid, index: 3)] == nil, "nothing kept after the reader left")
  }

  @Test func aReaderWaitingForTheNextItemIsWokenByItOrByTheEnd() throws {
    var o = makeOwner()
    let (tid, _, _) = try o.taskSubmitted(streamingSpec(), args: [], kind: .normal, parent: nil, now: 0).get()
    guard case .notYet(let item, let end) = o.generatorNext(tid, now: 1).0 else { Issue.record("not waiting"); return }
    #expect(item == ObjectID.forReturn(of: tid, index: 1) && end == ObjectID.forReturn(of: tid, index: 0))
    let reader = Reader(needed: 1)
    let v22 = o.generatorWaitStarted(tid, waiter: reader)
    #expect(v22)
    let (_, arrived) = o.generatorItemReported(tid, index: 0, object: value("x"), now: 2)
    #expect(arrived.wake.contains { $0 === reader })
    let v23 = o.generatorNext(tid, now: 3).0
    #expect(v23 == .item(item))
    _ = o.localRefRemoved(item, now: 3)

    let next = Reader(needed: 1)
    let v24 = o.generatorWaitStarted(tid, waiter: next)
    #expect(v24)
    let (_, second) = o.generatorItemReported(tid, index: 1, object: value("y"), now: 4)
    #expect(second.wake.contains { $0 === next })
  }

  @Test func aStreamingTaskThatFailsForGoodEndsItsStreamWithTheError() throws {
    var o = makeOwner()
    var spec = streamingSpec()
    spec.maxRetries = 0
    let (tid, _, _) = try o.taskSubmitted(spec, args: [], kind: .normal, parent: nil, now: 0).get()
    _ = o.generatorItemReported(tid, index: 0, object: value("x"), now: 1)
    let reader = Reader(needed: 1)
    let v25 = o.generatorNext(tid, now: 2).0
    #expect(v25 == .item(ObjectID.forReturn(of: tid, index: 1)))
    let v26 = o.generatorWaitStarted(tid, waiter: reader)
    #expect(v26)
    let e = o.taskFailed(tid, error: SwiftrayError(.workerCrashed, "the worker died"), now: 3)
    #expect(e.wake.contains { $0 === reader }, "the end wakes the reader")
    let end = ObjectID.forReturn(of: tid, index: 0)
    let v27 = o.generatorNext(tid, now: 4).0
    #expect(v27 == .error(end))
    #expect(ErrorObject.code(fromMetadata: o.store[end]?.metadata ?? Data()) == .workerCrashed)
    let v28 = o.generatorNext(tid, now: 5).0
    #expect(v28 == .end)
  }

  @Test func aLostItemOfAFinishedStreamFailsClearlyRatherThanWaitingForARerun() {
    var tm = TaskManager()
    var spec = streamingSpec()
    let t = someTask(job: 9)
    spec.taskID = Data(t.binary)
    tm.taskSubmitted(t, spec: spec)
    _ = tm.taskReplied(t, outcome: .success)
    guard case .fail(let e) = tm.rebuild(t, lost: ObjectID.forReturn(of: t, index: 2), why: "node died") else {
      Issue.record("a finished stream's item was re-run"); return
    }
    #expect(e.code == .reconstructionFailed && e.message.contains("streaming generator"))
  }

  @Test func aDynamicGeneratorsEndHoldsItsItemsOnceItSucceededAndFreesThemWithIt() throws {
    var o = makeOwner()
    var spec = Swiftray_TaskSpec()
    spec.name = "dyn"
    spec.maxRetries = 1
    CoreWorker.setReturns(&spec, CoreWorker.dynamicReturnsCode)
    #expect(spec.streaming && spec.dynamicReturns && spec.numReturns == 1)
    let (tid, returns, e) = try o.taskSubmitted(spec, args: [], kind: .normal, parent: nil, now: 0).get()
    let request = try #require(e.leases.compactMap { step -> UInt64? in
      if case .request(let r, _, _) = step { return r } else { return nil }
    }.first)
    var grant = Swiftray_RequestWorkerLeaseReply()
    grant.status = .granted
    grant.leaseID = 5
    grant.worker.workerID = Data(WorkerID.random().binary)
    grant.worker.endpoint = "unix:/tmp/worker.sock"
    grant.leaseGrant = Data([1])
    _ = o.leaseReplied(request, grant, node: nil, now: 1)
    _ = o.generatorItemReported(tid, index: 0, object: value("a"), now: 2)
    _ = o.generatorItemReported(tid, index: 1, object: value("b"), now: 2)
    _ = o.taskReplied(tid, leaseID: 5, reply: endReply(tid, items: 2), now: 3)
    let end = returns[0]
    let items = [1, 2].map { ObjectID.forReturn(of: tid, index: $0) }
    #expect(o.store[end]?.nestedRefs.map(\.objectID) == items.map { Data($0.binary) }, "the end lists its items")
    #expect(items.allSatisfy { o.store[$0] != nil }, "held by the end")
    #expect(o.streams.count == 0, "no reader: the stream is gone")
    _ = o.localRefRemoved(end, now: 4)
    #expect(items.allSatisfy { o.store[$0] == nil }, "freed with it")
  }
}
