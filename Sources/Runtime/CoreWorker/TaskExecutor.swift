import DequeModule
import Dispatch
import Foundation
import Logging
import RuntimeProto

/// The executor side of a worker: tasks pushed to it wait here, bounded, for the
/// language layer's thread that runs them; cancels reach a queued task or interrupt the
/// running one. A push runs only under a lease this worker's node granted (`LeaseGate`).
///
/// Threading: `admit`/`cancel` from the data plane's event loops (never block);
/// `next` blocks the language layer's task thread (GIL released); the rest from any
/// thread. State behind its own lock, never held together with the owner's.
final class TaskExecutor: Sendable {
  struct State {
    var queue: Deque<CoreWorker.Execution> = []
    var running: TaskID?
    /// The running task a cancel interrupts: the language layer's interrupt handler
    /// acts only while this is still the task running (`takeInterrupt`).
    var interruptTarget: TaskID?
    /// The placement strategy of the task or actor running here (placement groups only).
    var runningStrategy: SchedulingKey.Strategy?
    var leaseGate: LeaseGate
    /// The running task is blocked in `get`/`wait` on the task thread: normal tasks
    /// pushed meanwhile are handed back to their owners (`runningTaskBlocked`).
    var blocked = false
    /// Refused pushes are logged, but not one line each.
    var refusalLog = LogThrottle()
    /// Constructors' ends on their way to the head (a task's owner records its end).
    var taskEvents: TaskEventBuffer
    var started = StartedTasks()
  }

  let state: Locked<State>
  /// Wakes the task thread when a task is queued from another thread (the data plane's).
  let ready = Wakeup()
  /// How long `next` looks at its lanes without sleeping right after a task
  /// (`task_lane_spin_us`), and when it stops (`SpinPolicy`): a caller in a loop sends
  /// the next one within microseconds, and a thread that has not gone to sleep needs no
  /// wake-up (tens of microseconds on a virtual machine). Set before the task thread
  /// starts; then the task thread's own.
  nonisolated(unsafe) var spin = SpinPolicy(budgetNanos: 0)
  /// The task thread's own: whether its last `next` returned a task (an idle worker
  /// does not spin).
  nonisolated(unsafe) private var busy = false
  /// The task thread's own: whether the last task read from a lane came from a caller
  /// streaming (`moreInFlight`): its next comes without this thread spinning for it
  /// (a spin there only takes a CPU the caller needs), so the wait sleeps.
  nonisolated(unsafe) private var callerStreams = false
  /// This worker's lanes (`Lane`), polled by the task thread in `next`; nil in a driver.
  nonisolated(unsafe) var lanes: LaneServer?
  /// Replies held while more tasks are queued (`ReplyHold`), and their flusher.
  let replies: ReplyFlusher
  /// How the task thread's replies may be held (`ReplyHold`); the task thread's own.
  enum ReplyMode {
    /// Each goes at once (no lanes, or no task taken yet).
    case immediate
    /// Tasks taken one at a time (`next`): held while another is queued.
    case oneByOne
    /// Tasks taken in batches by an event loop (`take`, an async actor's): held while
    /// the loop runs, sent before it sleeps (`spinUntilReadable`).
    case loop
  }
  nonisolated(unsafe) private var replyMode = ReplyMode.immediate
  /// The thread that runs tasks (the first to call `next`; one for the worker's life).
  nonisolated(unsafe) private var taskThread: pthread_t?
  let maxQueued: Int
  let workerID: WorkerID
  let log = Logger(label: "swiftray.executor")
  /// Set by the language layer: interrupts the task running on the main thread.
  let interruptRunningTask = Locked<(@Sendable () -> Void)?>(nil)

  let clock: any RuntimeClock

  init(workerID: WorkerID, grants: LeaseGrants?, maxQueued: Int, clock: any RuntimeClock = Clocks.current,
       taskEvents: TaskEventBuffer = TaskEventBuffer(capacity: 100_000), maxHeldReplies: Int = 0) {
    self.workerID = workerID
    replies = ReplyFlusher(maxHeld: maxHeldReplies)
    self.clock = clock
    self.maxQueued = maxQueued
    state = Locked(State(leaseGate: LeaseGate(grants: grants, worker: Data(workerID.binary)), taskEvents: taskEvents))
  }

  var running: TaskID? { state.withLock { $0.running } }
  var runningStrategy: SchedulingKey.Strategy? { state.withLock { $0.runningStrategy } }

  /// A pushed task: queued for the task thread, or refused (with the reason sent back).
  /// `onTaskThread`: pushed by a lane, which the task thread itself reads (no wake-up).
  func admit(_ req: Swiftray_PushTaskRequest, _ responder: DataPlaneResponder, onTaskThread: Bool = false) {
    // A task, or an actor's creation, runs only under a lease this worker's node
    // granted to its owner (the ControlService, for a creation); actor calls need none.
    let underLease = req.spec.actorID.isEmpty || req.spec.hasActorCreation
    let owner = req.spec.hasActorCreation ? req.leaseOwner : req.spec.owner.workerID
    let maxQueued = maxQueued
    let now = clock.now()
    enum Verdict { case admit, handBack, refuse(String) }
    let (verdict, held): (Verdict, Int?) = state.withLock { s in
      var verdict = Verdict.admit
      if underLease, case .refuse(let why) = s.leaseGate.admit(leaseID: req.leaseID, grant: req.leaseGrant, owner: owner) {
        verdict = .refuse(why)
      } else if s.blocked && req.spec.actorID.isEmpty {
        return (.handBack, nil)
      } else if s.queue.count >= maxQueued {
        // Bounded: callers pushing faster than this worker runs cannot grow its queue
        // without end (an actor's callers, chiefly).
        verdict = .refuse("it already has \(maxQueued) tasks queued (max_queued_tasks_per_worker); "
          + "submit fewer at once, e.g. wait on some results before submitting more")
      } else {
        s.queue.append(CoreWorker.Execution(spec: req.spec, gpuIDs: req.gpuIds, responder: responder))
        return (.admit, nil)
      }
      return (verdict, s.refusalLog.admit(now: now))
    }
    let why: String
    switch verdict {
    case .admit:
      if !onTaskThread { ready.signal() }
      return
    case .handBack:
      Self.handBack(responder)
      return
    case .refuse(let w): why = w
    }
    if let held {
      log.warning("worker/push-refused", metadata: ["task": "\(req.spec.name)", "why": "\(why)", "also_refused_since_last": "\(held)"])
    }
    responder.respond(.error(.with { $0.message = "task \(req.spec.name) refused by worker \(workerID.hex.prefix(12)): \(why)" }))
  }

  /// Between tasks the thread polls its lanes and `ready` (GIL released): a task pushed
  /// by lane is read, admitted and run by this one thread.
  func next(timeoutNanos: UInt64) -> CoreWorker.Execution? {
    LockDiscipline.mayBlock("waiting for the next task")
    if taskThread == nil { taskThread = pthread_self() }
    if lanes != nil { replyMode = .oneByOne }
    let start = DispatchTime.now().uptimeNanoseconds
    var spinning = busy && lanes != nil && !callerStreams && spin.begin()
    var last = start
    while true {
      if let e = popNext() {
        if spinning { spin.paid() }
        busy = true
        return e
      }
      let now = DispatchTime.now().uptimeNanoseconds
      let waited = now &- start
      guard waited < timeoutNanos else { busy = false; return nil }
      if spinning {
        spinning = spin.look(elapsed: waited, sinceLast: now &- last)
        last = now
      }
      if let lanes {
        if spinning { sched_yield() }  // a thread waiting for this CPU goes first
        lanes.poll(timeoutNanos: spinning ? 0 : timeoutNanos - waited, handle: serveLane)
      } else {
        var p = pollfd(fd: ready.fd, events: Int16(POLLIN), revents: 0)
        if Glibc.poll(&p, 1, Int32(clamping: (timeoutNanos - waited + 999_999) / 1_000_000)) > 0 { ready.reset() }
      }
    }
  }

  /// The next queued task, without reading the lanes or waiting (`next` reads them).
  /// Threading: the task thread.
  func popQueued() -> CoreWorker.Execution? {
    guard let e = popNext() else { return nil }
    busy = true
    return e
  }

  /// Without waiting: serves what the lanes hold, then takes up to `max` queued tasks
  /// (with `max` 0 it only reads the lanes, so `readinessFD` stops being readable; what
  /// it leaves stays queued, bounded). For a task thread that waits on its own event
  /// loop (an async actor's), watching `readinessFD`. Threading: the task thread.
  func take(max: Int) -> [CoreWorker.Execution] {
    if taskThread == nil { taskThread = pthread_self() }
    if lanes != nil { replyMode = .loop }
    if let lanes { lanes.poll(timeoutNanos: 0, handle: serveLane) } else { ready.reset() }
    var taken: [CoreWorker.Execution] = []
    while taken.count < max, let e = popNext() { taken.append(e) }
    return taken
  }

  /// For a task thread that waits on an event loop of its own (an async actor's), just
  /// before that loop would sleep: looks at `fd` (the loop's poller) without sleeping
  /// for at most `nanos` and the spin budget, as `next` looks at its lanes after a task
  /// (`SpinPolicy`: spins that do not pay make the next waits skip it). True when `fd`
  /// is or became readable. Threading: the task thread, GIL released.
  func spinUntilReadable(_ fd: Int32, nanos: UInt64) -> Bool {
    LockDiscipline.mayBlock("looking for the next call")
    // The loop is about to sleep: what its calls hold goes now.
    if replyMode == .loop { replies.releaseAll() }
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    if Glibc.poll(&p, 1, 0) > 0 { return true }
    guard !callerStreams, spin.begin() else { return false }
    let start = DispatchTime.now().uptimeNanoseconds
    var last = start
    while true {
      p.revents = 0
      if Glibc.poll(&p, 1, 0) > 0 {
        spin.paid()
        return true
      }
      let now = DispatchTime.now().uptimeNanoseconds
      let elapsed = now &- start
      // The loop's own deadline (a timer due) ends the look without counting it a miss.
      if elapsed >= nanos { return false }
      guard spin.look(elapsed: elapsed, sinceLast: now &- last) else { return false }
      last = now
      sched_yield()  // a thread waiting for this CPU goes first
    }
  }

  /// Readable when `take` may find something (the lanes' epoll set, else `ready`).
  var readinessFD: Int32 { lanes?.readiness ?? ready.fd }

  /// One frame read from a lane, on the task thread.
  private func serveLane(_ frame: Swiftray_DataFrame, _ responder: DataPlaneResponder) {
    switch frame.body {
    case .pushTask(let req)?:
      callerStreams = frame.moreInFlight
      admit(req, responder, onTaskThread: true)
    case .cancelTask(let req)?:
      // Its push came first on this lane, so it is queued or done by now (the
      // same cancel also came by the data plane, for a task running meanwhile).
      var r = Swiftray_CancelTaskReply()
      r.attempted = TaskID(binary: req.taskID).map { cancel($0) } ?? false
      responder.respond(.cancelTaskReply(r))
    default:
      responder.respond(.error(.with { $0.message = "a lane carries tasks and their cancels only; use the data plane" }))
    }
  }

  private static func handBack(_ responder: DataPlaneResponder) {
    var r = Swiftray_PushTaskReply()
    r.handedBack = true
    responder.respond(.pushTaskReply(r))
  }

  /// Whether the caller is the task thread (the one that reads the lanes).
  var onTaskThread: Bool { taskThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false }

  /// The running task blocks (`blocked`) in `get`/`wait` on the task thread, or goes on.
  /// While it is blocked, the normal tasks queued behind it, and those pushed
  /// meanwhile, go back to their owners unrun: what a blocked task waits for may be
  /// one of them (pipelined behind it, `task_pipeline_depth`), and its owner can run
  /// them on another worker (the node lends this one's CPUs). Actor calls stay.
  /// Threading: the task thread only.
  func runningTaskBlocked(_ blocked: Bool) {
    guard onTaskThread else { return }
    let back: [CoreWorker.Execution] = state.withLock { s in
      s.blocked = blocked
      guard blocked, s.queue.contains(where: { $0.spec.actorID.isEmpty }) else { return [] }
      let back = Array(s.queue.lazy.filter { $0.spec.actorID.isEmpty })
      s.queue.removeAll { $0.spec.actorID.isEmpty }
      return back
    }
    for e in back { Self.handBack(e.responder) }
    // What it waits for may be a result whose reply is held here.
    if blocked { replies.releaseAll() }
    // Pushes already on the lanes are read now, and so handed back too.
    if blocked { lanes?.poll(timeoutNanos: 0, handle: serveLane) }
  }

  /// The task thread waits, blocked, for `waiter` up to `nanos`, reading its lanes
  /// meanwhile (a push that comes is handed back at once, a cancel served). True when
  /// released. Threading: the task thread only, while `runningTaskBlocked(true)`.
  func serveLanesWhileBlocked(_ waiter: ObjectWaiter, nanos: UInt64) -> Bool {
    guard let lanes, onTaskThread else { return waiter.wait(nanos: nanos) }
    let start = DispatchTime.now().uptimeNanoseconds
    while !waiter.isReleased {
      let waited = DispatchTime.now().uptimeNanoseconds &- start
      guard waited < nanos else { break }
      lanes.poll(timeoutNanos: nanos - waited, also: waiter.wake, handle: serveLane)
    }
    return waiter.isReleased
  }

  private func popNext() -> CoreWorker.Execution? {
    state.withLock { s in
      guard var e = s.queue.popFirst() else { return nil }
      let tid = TaskID(binary: e.spec.taskID)
      s.running = tid
      e.startedWallNs = CoreWorker.wallNanos()
      if s.taskEvents.enabled, let tid { s.started.began(tid, e.spec, at: clock.now()) }
      s.interruptTarget = nil
      // An actor's methods run in its constructor's placement group.
      if e.spec.actorID.isEmpty || e.spec.hasActorCreation {
        s.runningStrategy = e.spec.strategy.kind == .placementGroup
          ? SchedulingKey(shape: ResourceSet(), proto: e.spec.strategy).strategy : nil
      }
      return e
    }
  }

  /// Sends a finished task's reply. On the task thread of a worker that takes its
  /// tasks one at a time (`next`), a reply may wait for a later one (`ReplyHold`) while
  /// another task is queued; on an event loop's (`take`, an async actor's), until the
  /// loop sleeps (`spinUntilReadable`). A threaded actor's thread says itself whether it
  /// runs another call next (`moreQueued`); else it goes at once.
  func reply(_ responder: DataPlaneResponder, _ body: Swiftray_DataFrame.OneOf_Body, moreQueued: Bool? = nil) {
    if let moreQueued, replyMode != .immediate {
      return replies.reply(responder, body, moreQueued: moreQueued)
    }
    guard replyMode != .immediate, onTaskThread else { return responder.respond(body) }
    let more = replyMode == .loop || state.withLock { !$0.queue.isEmpty }
    replies.reply(responder, body, moreQueued: more)
  }

  /// `spec` ended with `reply`. Its owner records the span from the reply; only an
  /// actor's constructor, whose reply goes to the head, is recorded here.
  func finished(_ spec: Swiftray_TaskSpec, _ reply: Swiftray_PushTaskReply) {
    let now = clock.now()
    state.withLock { s in
      s.running = nil
      guard s.taskEvents.enabled else { return }
      s.started.ended(spec)
      guard spec.hasActorCreation else { return }
      s.taskEvents.record(spec, reply.isApplicationError ? .failed : .finished, now: now) { ev in
        ev.fromExecutor = true
        ev.endNs = now
        ev.argBytes = TaskEventBuffer.argBytes(spec)
        if reply.isApplicationError { ev.failure = .execution }
      }
    }
  }

  /// Takes the spans recorded since the last call.
  func drainTaskEvents(max: Int) -> (events: [Swiftray_TaskEvent], infos: [Swiftray_TaskEventInfo], dropped: UInt64, taken: Int) {
    state.withLock { s in
      var out = s.taskEvents.drain(max: max)
      s.started.announce(into: &out.events, max: max)
      return out
    }
  }

  /// Called by the interrupt handler on the task thread: true (once per interrupt sent)
  /// when a cancel aimed at the task running now asked for it.
  func takeInterrupt() -> Bool {
    state.withLock { s in
      guard let t = s.interruptTarget, t == s.running else { return false }
      s.interruptTarget = nil
      return true
    }
  }

  /// A cancel from the task's owner: a queued task is answered as cancelled at once,
  /// the running one interrupted. True when either was found.
  func cancel(_ tid: TaskID) -> Bool {
    let binary = Data(tid.binary)
    let (queued, running): (CoreWorker.Execution?, Bool) = state.withLock { s in
      if let i = s.queue.firstIndex(where: { $0.spec.taskID == binary }) { return (s.queue.remove(at: i), false) }
      return (nil, s.running == tid)
    }
    if let queued {
      var r = Swiftray_PushTaskReply()
      r.wasCancelled = true
      queued.responder.respond(.pushTaskReply(r))
    } else if running {
      interruptUntilStopped(tid)
    }
    return queued != nil || running
  }

  /// Interrupts the running task `tid`, and twice more, 200 ms apart, while it still
  /// runs: a signal that lands just before the task enters a blocking call (between
  /// Python's checks and, say, `time.sleep`) is otherwise only seen when that call ends.
  /// (A task that catches the interrupt and goes on needs `force=True`, as in Ray.)
  /// The interrupt is aimed: the target is recorded under the lock, and the handler
  /// (on the task thread) checks it with `takeInterrupt`, so an interrupt that lands
  /// after `tid` ended never reaches the task that runs next.
  func interruptUntilStopped(_ tid: TaskID, tries: Int = 3) {
    guard tries > 0, state.withLock({ s in
      guard s.running == tid else { return false }
      s.interruptTarget = tid
      return true
    }) else { return }
    interruptRunningTask.withLock { $0 }?()
    // The interrupt takes the GIL: off the timer's event loop, onto a thread that may wait.
    clock.schedule(after: .milliseconds(200)) { [weak self] in
      guard let executor = self else { return }
      DispatchQueue.global().async { executor.interruptUntilStopped(tid, tries: tries - 1) }
    }
  }
}

/// An executor's tasks started and not ended: a drain announces those it has not yet
/// (RUNNING), so a short task costs no event here at all, only its entry. The newest
/// entry is held apart: a worker that runs one task at a time ends the task it began
/// last, and then nothing is hashed. Not inlined, so a profile counts it with the task
/// events (`benchmarks/task_events.py`).
///
/// Threading: a value type under the executor's lock.
public struct StartedTasks: Sendable {
  struct Entry: Sendable {
    var id: TaskID, taskID: Data, attempt: Int32, at: UInt64, announced = false
  }
  private var newest: Entry?
  private var others: [TaskID: Entry] = [:]

  public init() {}

  @inline(never) public mutating func began(_ id: TaskID, _ spec: Swiftray_TaskSpec, at now: UInt64) {
    if let n = newest { others[n.id] = n }
    newest = Entry(id: id, taskID: spec.taskID, attempt: spec.attempt, at: now)
  }

  @inline(never) public mutating func ended(_ spec: Swiftray_TaskSpec) {
    guard newest != nil || !others.isEmpty, let id = TaskID(binary: spec.taskID) else { return }
    if newest?.id == id { newest = nil } else { others[id] = nil }
  }

  /// RUNNING events for the tasks not yet announced, while `events` holds fewer than `max`.
  public mutating func announce(into events: inout [Swiftray_TaskEvent], max: Int) {
    func event(_ t: Entry) -> Swiftray_TaskEvent {
      var e = Swiftray_TaskEvent()
      e.taskID = t.taskID
      e.attempt = t.attempt
      e.state = TaskEventState.running.rawValue
      e.timeNs = t.at
      e.fromExecutor = true
      return e
    }
    if let n = newest, !n.announced, events.count < max {
      newest?.announced = true
      events.append(event(n))
    }
    for (id, t) in others where !t.announced && events.count < max {
      others[id]?.announced = true
      events.append(event(t))
    }
  }
}
