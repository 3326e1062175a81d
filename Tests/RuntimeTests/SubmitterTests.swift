import Testing
import Runtime

private let cpu1 = ResourceSet(units: ["CPU": 1])
private let ms: UInt64 = 1_000_000

private func pushes(_ a: [NormalTaskSubmitter.Action]) -> [TaskID] {
  a.compactMap { if case .push(let t, _) = $0 { return t } else { return nil } }
}
private func requests(_ a: [NormalTaskSubmitter.Action]) -> [UInt64] {
  a.compactMap { if case .requestLease(let r, _, _) = $0 { return r } else { return nil } }
}

@Suite struct NormalTaskSubmitterTests {
  var gen = TaskIDGenerator(job: JobID(1))
  let settings = NormalTaskSubmitter.Settings(maxPendingLeaseRequests: 2, maxTasksInFlightPerWorker: 1,
                                              idleLingerNanos: 10 * ms, infeasibleRetryNanos: 1000 * ms)

  /// A submitter that pipelines up to `depth` tasks of a function whose tasks ran
  /// under 1 ms.
  func pipelining(depth: Int) -> NormalTaskSubmitter {
    var p = settings
    p.pipelineDepth = depth
    p.pipelineBelowNanos = 1 * ms
    return NormalTaskSubmitter(settings: p)
  }

  @Test mutating func aTaskAsksForALeaseAndIsPushedWhenGranted() {
    var s = NormalTaskSubmitter(settings: settings)
    let t = gen.next()
    let r = requests(s.taskReady(t, key: cpu1, now: 0))
    #expect(r.count == 1)
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 5, worker: .random())
    #expect(s.leaseGranted(requestID: r[0], lease: lease, now: 1) == [.push(t, lease: lease)])
  }

  /// A key's hash is worked out once, from all its fields: keys built apart from equal
  /// fields are one key; a key differing in any field is another, and its tasks never
  /// ride the first key's lease.
  @Test mutating func keysAreEqualExactlyWhenShapeStrategyAndEnvironmentAre() {
    let a = SchedulingKey(cpu1)
    let b = SchedulingKey(shape: ResourceSet(units: ["CPU": 1.0]), proto: .init())
    let others = [SchedulingKey(cpu1, strategy: .spread), SchedulingKey(cpu1, runtimeEnv: #"{"env_vars":{"A":"1"}}"#),
                  SchedulingKey(ResourceSet(units: ["CPU": 2])), SchedulingKey(ResourceSet(units: ["CPU": 1, "GPU": 1]))]
    #expect(a == b && a.hashValue == b.hashValue)
    for o in others { #expect(a != o && b != o, "\(o)") }
    #expect(Set([a, b] + others).count == 1 + others.count)
    var s = NormalTaskSubmitter(settings: settings)
    let t1 = gen.next(), t2 = gen.next(), t3 = gen.next()
    let r = requests(s.taskReady(t1, key: a, now: 0))
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 1, worker: .random())
    _ = s.leaseGranted(requestID: r[0], lease: lease, now: 0)
    _ = s.taskReplied(t1, leaseID: 1, now: 1)
    #expect(s.taskReady(t2, key: b, now: 2) == [.push(t2, lease: lease)])
    _ = s.taskReplied(t2, leaseID: 1, now: 3)
    #expect(pushes(s.taskReady(t3, key: others[0], now: 4)).isEmpty)
  }

  @Test mutating func leaseRequestsAreBoundedPerShape() {
    var s = NormalTaskSubmitter(settings: settings)
    var all: [UInt64] = []
    for _ in 0..<10 { all += requests(s.taskReady(gen.next(), key: cpu1, now: 0)) }
    #expect(all.count == 2)
  }

  @Test mutating func aLeaseIsReusedForTheNextTaskThenReturnedAfterTheLinger() {
    var s = NormalTaskSubmitter(settings: settings)
    let t1 = gen.next(), t2 = gen.next()
    let r = requests(s.taskReady(t1, key: cpu1, now: 0))
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 1, worker: .random())
    _ = s.leaseGranted(requestID: r[0], lease: lease, now: 0)
    #expect(s.taskReplied(t1, leaseID: 1, now: 1 * ms).isEmpty)
    // Within the linger: the next task goes straight to the same worker, no new request.
    #expect(s.taskReady(t2, key: cpu1, now: 2 * ms) == [.push(t2, lease: lease)])
    _ = s.taskReplied(t2, leaseID: 1, now: 3 * ms)
    #expect(s.tick(now: 5 * ms).isEmpty)
    #expect(s.tick(now: 13 * ms) == [.returnLease(leaseID: 1, disconnect: false)])
    #expect(s.numLeases == 0)
  }

  /// A function whose tasks ran short is pipelined: several tasks to one worker at once.
  @Test mutating func shortTasksArePipelinedAndLongOnesAreNot() {
    var s = pipelining(depth: 3)
    let ts = (0..<8).map { _ in gen.next() }
    let r = requests(s.taskReady(ts[0], key: cpu1, function: 7, now: 0))
    for t in ts.dropFirst() { _ = s.taskReady(t, key: cpu1, function: 7, now: 0) }
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 1, worker: .random())
    // Nothing measured yet: one at a time.
    #expect(pushes(s.leaseGranted(requestID: r[0], lease: lease, now: 0)) == [ts[0]])
    // It took 0.1 ms: the shape is short, so the lease is filled to the depth.
    #expect(pushes(s.taskReplied(ts[0], leaseID: 1, now: ms / 10)) == [ts[1], ts[2], ts[3]])
    #expect(s.taskReplied(ts[1], leaseID: 1, now: ms / 5).count == 1)  // one in, one out
    // A task that took long brings the average above the bound: one at a time again.
    #expect(pushes(s.taskReplied(ts[2], leaseID: 1, now: 20 * ms)) == [])
    #expect(pushes(s.taskReplied(ts[3], leaseID: 1, now: 40 * ms)) == [])  // ts[4] still in flight
    #expect(pushes(s.taskReplied(ts[4], leaseID: 1, now: 60 * ms)) == [ts[5]])
    #expect(pushes(s.taskReplied(ts[5], leaseID: 1, now: 80 * ms)) == [ts[6]])
    #expect(s.numQueued == 1)
  }

  /// Pipelining never queues a task behind one that may run long: behind a task of a
  /// function not measured yet (a new function of a shape whose tasks were short), the
  /// next waits for another lease; and leases each take one task before any a second.
  @Test mutating func noTaskWaitsBehindAnUnmeasuredOneAndLeasesTakeOneEachFirst() {
    var s = pipelining(depth: 4)
    let warm = (0..<2).map { _ in gen.next() }
    let r = requests(s.taskReady(warm[0], key: cpu1, function: 7, now: 0))
      + requests(s.taskReady(warm[1], key: cpu1, function: 7, now: 0))
    let l1 = NormalTaskSubmitter.GrantedLease(leaseID: 1, worker: .random())
    let l2 = NormalTaskSubmitter.GrantedLease(leaseID: 2, worker: .random())
    #expect(pushes(s.leaseGranted(requestID: r[0], lease: l1, now: 0)) == [warm[0]])
    #expect(pushes(s.leaseGranted(requestID: r[1], lease: l2, now: 0)) == [warm[1]])
    _ = s.taskReplied(warm[0], leaseID: 1, now: ms / 10)
    _ = s.taskReplied(warm[1], leaseID: 2, now: ms / 10)  // function 7 is short now
    // Two short tasks on two idle leases: one each, not both on the first.
    let a = gen.next(), b = gen.next()
    _ = s.taskReady(a, key: cpu1, function: 7, now: ms)
    _ = s.taskReady(b, key: cpu1, function: 7, now: ms)
    #expect(s.isInFlight(a, on: 1) && s.isInFlight(b, on: 2))
    _ = s.taskReplied(a, leaseID: 1, now: ms + ms / 10)
    _ = s.taskReplied(b, leaseID: 2, now: ms + ms / 10)
    // A function never measured: one per lease, the third waits in the owner's queue.
    let m = (0..<3).map { _ in gen.next() }
    for t in m { _ = s.taskReady(t, key: cpu1, function: 9, now: 2 * ms) }
    #expect(s.isInFlight(m[0], on: 1) && s.isInFlight(m[1], on: 2) && s.numQueued == 1)
    // A short task may wait behind a short one (pipelined), never behind function 9's.
    let c = gen.next()
    _ = s.taskReady(c, key: cpu1, function: 7, now: 2 * ms)
    #expect(s.numQueued == 2)
    #expect(pushes(s.taskReplied(m[0], leaseID: 1, now: 30 * ms)) == [m[2]])  // 9 is long
    #expect(s.numQueued == 1)
  }

  /// A worker whose running task blocked hands back what waits behind it: the task is
  /// queued first again, goes to another lease, and the blocked lease takes one at a
  /// time until it is idle.
  @Test mutating func aHandedBackTaskIsQueuedFirstAndTheLeaseTakesOneAtATime() {
    var s = pipelining(depth: 4)
    let warm = gen.next()
    let r = requests(s.taskReady(warm, key: cpu1, function: 7, now: 0))
    let l1 = NormalTaskSubmitter.GrantedLease(leaseID: 1, worker: .random())
    _ = s.leaseGranted(requestID: r[0], lease: l1, now: 0)
    _ = s.taskReplied(warm, leaseID: 1, now: ms / 10)
    let a = gen.next(), b = gen.next(), c = gen.next()
    #expect(pushes(s.taskReady(a, key: cpu1, function: 7, now: ms)) == [a])
    #expect(pushes(s.taskReady(b, key: cpu1, function: 7, now: ms)) == [b])
    #expect(pushes(s.taskReady(c, key: cpu1, function: 7, now: ms)) == [c])
    // `a` blocks: its worker hands back b and c. They are queued, not pushed to l1 again.
    let back = s.taskHandedBack(b, leaseID: 1, now: 2 * ms)
    #expect(pushes(back).isEmpty && requests(back).count == 1)
    let back2 = s.taskHandedBack(c, leaseID: 1, now: 2 * ms)
    #expect(pushes(back2).isEmpty)
    #expect(s.numQueued == 2 && s.isInFlight(a, on: 1) && !s.isInFlight(b, on: 1))
    // A second lease takes them in their order, one at a time (the shape no longer short).
    let l2 = NormalTaskSubmitter.GrantedLease(leaseID: 2, worker: .random())
    #expect(pushes(s.leaseGranted(requestID: requests(back)[0], lease: l2, now: 3 * ms)) == [b])
    #expect(pushes(s.taskReplied(b, leaseID: 2, now: 4 * ms)) == [c])
    // A reply of a task no longer in flight there changes nothing.
    #expect(s.taskReplied(b, leaseID: 1, now: 4 * ms).isEmpty)
    #expect(s.taskHandedBack(b, leaseID: 1, now: 4 * ms).isEmpty)
  }

  /// A worker that hands back its only task (nothing runs there to block) breaks the
  /// protocol: the task is queued again, and that lease is given up and disconnected,
  /// so the task cannot bounce between the owner and that worker.
  @Test mutating func aWorkerThatHandsBackItsOnlyTaskLosesItsLease() {
    var s = NormalTaskSubmitter(settings: settings)
    let t = gen.next()
    let r = requests(s.taskReady(t, key: cpu1, now: 0))
    let l1 = NormalTaskSubmitter.GrantedLease(leaseID: 1, worker: .random())
    #expect(pushes(s.leaseGranted(requestID: r[0], lease: l1, now: 0)) == [t])
    let a = s.taskHandedBack(t, leaseID: 1, now: 1 * ms)
    #expect(a.first == .returnLease(leaseID: 1, disconnect: true))
    #expect(pushes(a).isEmpty && requests(a).count == 1)
    #expect(s.numLeases == 0 && s.numQueued == 1 && !s.isInFlight(t, on: 1))
    let l2 = NormalTaskSubmitter.GrantedLease(leaseID: 2, worker: .random())
    #expect(pushes(s.leaseGranted(requestID: requests(a)[0], lease: l2, now: 2 * ms)) == [t])
  }

  @Test mutating func anOwnerThatShutsDownGivesBackEveryLeaseAndCancelsEveryRequest() {
    var s = NormalTaskSubmitter(settings: settings)
    let t1 = gen.next(), t2 = gen.next(), t3 = gen.next()
    let r = requests(s.taskReady(t1, key: cpu1, now: 0)) + requests(s.taskReady(t2, key: cpu1, now: 0))
    _ = s.taskReady(t3, key: cpu1, now: 0)
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 9, worker: .random())
    let more = requests(s.leaseGranted(requestID: r[0], lease: lease, now: 0))  // busy with t1; r[1] (and t3's) out
    #expect(s.ownerExiting() == [.returnLease(leaseID: 9, disconnect: false)]
      + ([r[1]] + more).sorted().map { .cancelLeaseRequest(requestID: $0) })
    #expect(s.numLeases == 0 && s.numQueued == 0 && s.tick(now: 1_000 * ms).isEmpty)
  }

  @Test mutating func extraLeaseRequestsAreCanceledWhenTheQueueEmpties() {
    var s = NormalTaskSubmitter(settings: settings)
    let t1 = gen.next(), t2 = gen.next()
    let r = requests(s.taskReady(t1, key: cpu1, now: 0)) + requests(s.taskReady(t2, key: cpu1, now: 0))
    #expect(r.count == 2)
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 1, worker: .random())
    _ = s.leaseGranted(requestID: r[0], lease: lease, now: 0)
    let a = s.taskReplied(t1, leaseID: 1, now: 1)
    #expect(pushes(a) == [t2])
    #expect(a.contains(.cancelLeaseRequest(requestID: r[1])))
  }

  @Test mutating func infeasibleShapesWarnOnceAndRetryLater() {
    var s = NormalTaskSubmitter(settings: settings)
    let gpu = ResourceSet(units: ["GPU": 1])
    let r = requests(s.taskReady(gen.next(), key: gpu, now: 0))
    let a = s.leaseRejected(requestID: r[0], detail: "no GPU", now: 0)
    #expect(a == [.warnInfeasible(key: .init(gpu), detail: "no GPU")])
    #expect(s.tick(now: 500 * ms).isEmpty)
    let again = requests(s.tick(now: 1000 * ms))
    #expect(again.count == 1)
    #expect(s.leaseRejected(requestID: again[0], detail: "no GPU", now: 1000 * ms).isEmpty, "warned once")
  }

  @Test mutating func aLostWorkerReportsItsInFlightTasksAndDisconnectsTheLease() {
    var s = NormalTaskSubmitter(settings: settings)
    let t = gen.next()
    let r = requests(s.taskReady(t, key: cpu1, now: 0))
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 3, worker: .random())
    _ = s.leaseGranted(requestID: r[0], lease: lease, now: 0)
    let a = s.workerLost(leaseID: 3, now: 1)
    #expect(a.contains(.returnLease(leaseID: 3, disconnect: true)))
    #expect(a.contains(.tasksLost([t], lease: lease)))
  }

  @Test mutating func aQueuedTaskCanBeCanceledBeforeItIsPushed() {
    var s = NormalTaskSubmitter(settings: settings)
    let t = gen.next()
    let r = requests(s.taskReady(t, key: cpu1, now: 0))
    let (removed, a) = s.taskCanceled(t, now: 0)
    #expect(removed)
    #expect(a == [.cancelLeaseRequest(requestID: r[0])])
  }

  /// Cancels anywhere in a deep queue: the rest are pushed in submission order, each
  /// exactly once; a task pushed or cancelled already is not removed again; the
  /// entries cancelled tasks leave behind stay bounded by those still queued.
  @Test mutating func cancelsInADeepQueueKeepTheRestInOrderAndLeaveItsEntriesBounded() {
    var s = NormalTaskSubmitter(settings: settings)
    let tasks = (0..<2_000).map { _ in gen.next() }
    var r: [UInt64] = []
    for t in tasks { r += requests(s.taskReady(t, key: cpu1, now: 0)) }
    // From the back, from the front and every third one in between.
    let cancelled = Set(tasks.suffix(500) + tasks.prefix(100) + stride(from: 100, to: 1_500, by: 3).map { tasks[$0] })
    for t in tasks where cancelled.contains(t) {
      let removed = s.taskCanceled(t, now: 0).removed
      #expect(removed)
      #expect(s.numQueueEntries <= 2 * s.numQueued + 33)
    }
    let again = s.taskCanceled(tasks[0], now: 0).removed
    #expect(!again, "cancelled already")
    #expect(s.numQueued == tasks.count - cancelled.count)
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 1, worker: .random())
    var pushed = pushes(s.leaseGranted(requestID: r[0], lease: lease, now: 0))
    let inFlight = s.taskCanceled(pushed[0], now: 0).removed
    #expect(!inFlight, "in flight: not in the queue")
    while let last = pushed.last, pushed.count < tasks.count {
      let next = pushes(s.taskReplied(last, leaseID: 1, now: 1))
      if next.isEmpty { break }
      pushed += next
    }
    #expect(pushed == tasks.filter { !cancelled.contains($0) })
    #expect(s.numQueued == 0 && s.numQueueEntries == 0)
  }

  /// A queue emptied by cancels (and asked about a task it never had) takes new tasks
  /// and pushes them in order, leaving nothing behind.
  @Test mutating func aQueueEmptiedByCancelsTakesNewTasksInOrder() {
    var s = NormalTaskSubmitter(settings: settings)
    let a = gen.next(), b = gen.next()
    _ = s.taskReady(a, key: cpu1, now: 0)
    _ = s.taskReady(b, key: cpu1, now: 0)
    let stranger = s.taskCanceled(gen.next(), now: 0).removed
    let ca = s.taskCanceled(a, now: 0).removed, cb = s.taskCanceled(b, now: 0).removed
    #expect(!stranger && ca && cb)
    #expect(s.numQueued == 0 && s.numQueueEntries == 0)
    let c = gen.next(), d = gen.next()
    let r = requests(s.taskReady(c, key: cpu1, now: 1))
    _ = s.taskReady(d, key: cpu1, now: 1)
    let lease = NormalTaskSubmitter.GrantedLease(leaseID: 4, worker: .random())
    #expect(pushes(s.leaseGranted(requestID: r[0], lease: lease, now: 2)) == [c])
    #expect(pushes(s.taskReplied(c, leaseID: 4, now: 3)) == [d])
    #expect(s.numQueued == 0 && s.numQueueEntries == 0)
  }

  /// A lease request names a queued task (for its arguments' locality), never a
  /// cancelled one.
  @Test mutating func leaseRequestsNameTasksStillQueued() {
    var s = NormalTaskSubmitter(settings: .init(maxPendingLeaseRequests: 1))
    let t1 = gen.next(), t2 = gen.next(), t3 = gen.next()
    let first = s.taskReady(t1, key: cpu1, now: 0)
    _ = s.taskReady(t2, key: cpu1, now: 0)
    _ = s.taskReady(t3, key: cpu1, now: 0)
    guard case .requestLease(let r1, _, let forTask)? = first.first else { Issue.record("no request"); return }
    #expect(forTask == t1)
    let c1 = s.taskCanceled(t1, now: 0).removed, c2 = s.taskCanceled(t2, now: 0).removed
    #expect(c1 && c2)
    // The node refused the request as infeasible; the retry names the task left.
    _ = s.leaseRejected(requestID: r1, detail: "busy", now: 0)
    let again = s.tick(now: 2_000 * ms)
    guard case .requestLease(_, _, let named)? = again.first else { Issue.record("no retry: \(again)"); return }
    #expect(named == t3)
  }
}

@Suite struct SubmitterFailureTests {
  var gen = TaskIDGenerator(job: JobID(2))

  @Test mutating func whenWorkersCannotStartTheQueuedTasksFailInsteadOfWaiting() {
    var s = NormalTaskSubmitter(settings: .init(maxPendingLeaseRequests: 1))
    let cpu = ResourceSet(units: ["CPU": 1])
    let t1 = gen.next(), t2 = gen.next()
    let r = s.taskReady(t1, key: cpu, now: 0).compactMap { a -> UInt64? in
      if case .requestLease(let id, _, _) = a { return id } else { return nil }
    }
    _ = s.taskReady(t2, key: cpu, now: 0)
    let a = s.leaseFailed(requestID: r[0], detail: "exit code 1", now: 1)
    #expect(a == [.tasksFailed([t1, t2], detail: "exit code 1", code: .system)])
    #expect(s.numQueued == 0)
  }
}
