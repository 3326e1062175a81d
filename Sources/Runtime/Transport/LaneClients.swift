import CSwiftray
import Foundation
import NIOCore
import RuntimeProto
import Synchronization

/// An owner's lanes to the workers of its node (`Lane`), and the one thread that reads
/// their replies (the lane reactor, an `epoll` loop of its own: no event-loop hop).
///
/// Which way a request to a worker goes is decided once per worker and then kept: by
/// lane when the worker listens on one, else by the data plane. Actor calls rely on
/// their frames arriving in call order, and two ways to one worker could reorder them.
///
/// Threading: `request` from any thread (it writes the frame itself and never blocks);
/// replies and failures are delivered on the reactor thread, or (a request that fails
/// at once) on an event loop of `group`, never inline in `request`.
public final class LaneClients: Sendable {
  enum Route { case lane(LaneClient), dataPlane }

  struct State {
    /// By worker endpoint (the lane's path is worked out only on a miss).
    var routes: [Endpoint: Route] = [:]
    var byFD: [Int32: LaneClient] = [:]
    var reactorStarted = false
    var closed = false
  }

  let auth: ClusterAuth
  let group: EventLoopGroup
  let state = Locked(State())
  let epfd: Int32
  /// Written to stop the reactor (`closeAll`).
  let stopFD: Int32
  /// Written to wake the reactor that sleeps without a deadline when a lane corks its
  /// first frame (`corked`): it then sleeps at most `corkPatienceMs`.
  let kickFD: Int32
  /// Lanes with corked frames (a hint for the reactor's deadline; see `corked`).
  let corkedLanes = Atomic<Int>(0)
  /// The reactor sleeps with no deadline (nothing corked, nothing in flight when it
  /// looked). Paired with `corkedLanes` (both sequentially consistent): a writer that
  /// corks a lane's first frame either is seen by the reactor before it sleeps or sees
  /// it asleep and kicks it.
  let reactorSleepsForever = Atomic<Bool>(false)
  let enabled: Bool
  /// How long a thread reading its reply looks without sleeping (`task_lane_spin_us`),
  /// and when threads stop spinning (shared: they contend for the same CPUs).
  let spin: Locked<SpinPolicy>
  let witness: Witness?

  /// Watches a worker's liveness for its lane: calls the closure it is given once the
  /// worker stops answering (`DataPlaneClientPool.watch`). A worker reads its lanes
  /// only between tasks, so a lane cannot carry keep-alives itself.
  public typealias Witness = @Sendable (Endpoint, _ dead: @escaping @Sendable () -> Void) -> Void

  /// A request sent with at least this many others in flight on its lane is marked
  /// `moreInFlight`: its sender streams and will not wait for the reply before sending
  /// again, so the worker sleeps until the next request instead of spinning for it.
  /// Above `task_pipeline_depth` (4): tasks pipelined to a leased worker each wait for
  /// a reply to free their room, and that worker's spin pays.
  public static let streamingInFlight = 8

  /// A request marked `moreInFlight` is corked (held on its lane, `LaneSocket.hold`)
  /// rather than sent alone: its worker has at least `streamingInFlight` requests ahead
  /// of it to run, so it loses nothing by getting it with the next ones in one `send`
  /// (one system call and one wake-up of the worker for several; the `send` per call
  /// was a tenth of a streaming caller's thread). Corked frames leave when
  /// `maxCorked` wait, when a reply comes on the lane (its worker is getting through
  /// its queue), before a thread blocks for a result, and at the latest when the
  /// reactor's deadline passes: `corkPatienceMs`, or `inFlightPatienceMs` when the
  /// frame was corked while the reactor slept with that one (requests ahead that never
  /// answer, e.g. calls waiting for the corked one, cannot keep it back for longer).
  public static let maxCorked = 16
  static let corkPatienceMs: Int32 = 1
  /// The reactor's deadline while requests are in flight and none corked: a lane may
  /// cork its first frame without kicking a reactor that sleeps this long at most (a
  /// kick per corked run would cost a wake-up of the reactor each; 200 looks a second
  /// while a call runs long cost nothing to speak of).
  static let inFlightPatienceMs: Int32 = 5

  /// Requests waiting for their replies on the lane to `endpoint` (0 without one).
  public func inFlight(_ endpoint: Endpoint) -> Int {
    guard case .lane(let c)? = state.withLock({ $0.routes[endpoint] }) else { return 0 }
    return c.inFlight.load(ordering: .relaxed)
  }

  /// `enabled` false: every request goes by the data plane.
  public init(auth: ClusterAuth, group: EventLoopGroup, enabled: Bool = true, spinMicros: Int = 0, witness: Witness? = nil) {
    self.spin = Locked(SpinPolicy(budgetNanos: UInt64(max(spinMicros, 0)) * 1000))
    self.auth = auth
    self.group = group
    self.enabled = enabled
    self.witness = witness
    epfd = sr_epoll_create()
    stopFD = sr_eventfd()
    kickFD = sr_eventfd()
    _ = sr_epoll_set(epfd, stopFD, Int32(SR_LANE_IN), 1)
    _ = sr_epoll_set(epfd, kickFD, Int32(SR_LANE_IN), 1)
  }

  /// Sends `body` to the worker at `endpoint` by its lane and returns true, or returns
  /// false (nothing sent) when that worker is reached by the data plane.
  public func request(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body,
                      _ waiter: DataPlaneConnection.Waiter) -> Bool {
    LockDiscipline.mustNotHoldLock("LaneClients.request")
    guard enabled, case .unix = endpoint, let client = client(endpoint) else { return false }
    switch client.request(body, waiter, group: group) {
    case .sent: break
    case .blocked: watchWrites(client)
    case .corkedFirst: corkedFirst()
    case .uncorked(let blocked):
      corkedLanes.subtract(1, ordering: .sequentiallyConsistent)
      if blocked { watchWrites(client) }
    }
    sr_set_last_lane(client.socket.fd)
    return true
  }

  /// A lane corked its first frame: the reactor must not sleep past `corkPatienceMs`.
  private func corkedFirst() {
    corkedLanes.add(1, ordering: .sequentiallyConsistent)
    if reactorSleepsForever.load(ordering: .sequentiallyConsistent) {
      var one: UInt64 = 1
      _ = Glibc.write(kickFD, &one, 8)
    }
  }

  /// Sends `c`'s corked frames now, if any. Any thread.
  private func uncork(_ c: LaneClient) {
    guard c.corked.exchange(0, ordering: .acquiringAndReleasing) > 0 else { return }
    corkedLanes.subtract(1, ordering: .sequentiallyConsistent)
    if c.socket.flush() == .queued { watchWrites(c) }
  }

  /// Sends every lane's corked frames (a thread is about to block for a result, or the
  /// reactor's patience ran out).
  func uncorkAll() {
    guard corkedLanes.load(ordering: .sequentiallyConsistent) > 0 else { return }
    for c in state.withLock({ Array($0.byFD.values) }) { uncork(c) }
  }

  /// Called by a thread about to block for a result (GIL released): when this thread's
  /// last request went by lane and that lane still has requests in flight, the thread
  /// reads the lane itself until `done()`, `wake` is signalled, the lane has nothing
  /// more in flight, or `nanos` pass. The reactor is kept off that lane meanwhile, so
  /// a reply wakes only the thread that waits for it. True when `done()`.
  /// Only the first wait after a request does this (the next ones sleep as usual).
  func readWhileWaiting(nanos: UInt64, wake: Wakeup, until done: () -> Bool) -> Bool {
    LockDiscipline.mayBlock("reading a lane while waiting")
    // What this thread waits for may be corked: nothing is kept back while it waits.
    uncorkAll()
    let fd = sr_last_lane()
    guard fd >= 0 else { return done() }
    sr_set_last_lane(-1)
    guard let c = state.withLock({ $0.byFD[fd] }), c.hasPending, c.beginRead() else { return done() }
    c.foreground.withLock { $0 = wake }
    sr_set_reading_for(wake.fd)
    defer { sr_set_reading_for(-1) }
    _ = sr_epoll_set(epfd, fd, 0, 0)  // disarmed: the reactor sleeps through these replies
    let start = DispatchTime.now().uptimeNanoseconds
    var spinning = spin.withLock { $0.begin() }
    var last = start
    var open = true
    var fds = [pollfd(fd: fd, events: 0, revents: 0), pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0)]
    while open, !done(), c.hasPending {
      let now = DispatchTime.now().uptimeNanoseconds
      let elapsed = now &- start
      guard elapsed < nanos else { break }
      if spinning {
        let sinceLast = now &- last
        spinning = spin.withLock { $0.look(elapsed: elapsed, sinceLast: sinceLast) }
        last = now
      }
      fds[0].events = Int16(POLLIN) | (c.socket.wantsWrite ? Int16(POLLOUT) : 0)
      fds[0].revents = 0
      fds[1].revents = 0
      // Looking without sleeping for a moment first (`SpinPolicy`): a reply that comes
      // that soon then needs no wake-up of this thread.
      if spinning { sched_yield() }
      let n = Glibc.poll(&fds, 2, spinning ? 0 : Int32(clamping: (nanos - elapsed + 999_999) / 1_000_000))
      guard n > 0 else { continue }
      if fds[1].revents != 0 { wake.reset() }
      if fds[0].revents & Int16(POLLOUT) != 0 { c.socket.flush() }
      if fds[0].revents != 0 {
        uncork(c)  // a reply: its worker gets through its queue, so it gets the next ones
        open = c.readReplies()
      }
    }
    if spinning, done() { spin.withLock { $0.paid() } }
    c.foreground.withLock { $0 = nil }
    // Re-armed while this thread still reads the lane: the reactor cannot be flushing
    // it meanwhile and have its write interest overwritten.
    if open { rearm(c) }
    c.endRead()
    if !open { drop(c) }
    return done()
  }

  /// The lane to `path`, connected on first use; nil when that worker takes the data plane.
  private func client(_ endpoint: Endpoint) -> LaneClient? {
    enum Step { case use(LaneClient), dataPlane, connect }
    let step: Step = state.withLock { s in
      switch s.routes[endpoint] {
      case .lane(let c)?: return .use(c)
      case .dataPlane?: return .dataPlane
      case nil: return s.closed ? .dataPlane : .connect
      }
    }
    switch step {
    case .use(let c): return c
    case .dataPlane: return nil
    case .connect: break
    }
    // Connecting a Unix socket does not block: it succeeds or fails at once.
    let path = Lane.path(forWorker: endpoint)
    let socket = path.flatMap { Lane.connect($0, auth: auth) }
    enum Outcome { case won(LaneClient, startReactor: Bool), lost(Route), closed }
    let fresh = socket.map { LaneClient(socket: $0, endpoint: endpoint, path: path ?? "") }
    let outcome: Outcome = state.withLock { s in
      if s.closed { return .closed }
      if let existing = s.routes[endpoint] { return .lost(existing) }
      guard let fresh else { s.routes[endpoint] = .dataPlane; return .lost(.dataPlane) }
      s.routes[endpoint] = .lane(fresh)
      s.byFD[fresh.socket.fd] = fresh
      let start = !s.reactorStarted
      s.reactorStarted = true
      return .won(fresh, startReactor: start)
    }
    switch outcome {
    case .won(let c, let start):
      _ = sr_epoll_set(epfd, c.socket.fd, Int32(SR_LANE_IN), 1)
      if start { startReactor() }
      // A worker that stops answering (stopped, hung) keeps its socket open: the lane
      // goes when its witness says so, and its requests fail as on a lost connection.
      witness?(endpoint) { [weak self, weak c] in if let self, let c { drop(c) } }
      return c
    case .lost(let route):
      // Another thread connected first (or the worker has no lane): use its choice.
      fresh?.socket.close()
      if case .lane(let c) = route { return c }
      return nil
    case .closed:
      fresh?.socket.close()
      return nil
    }
  }

  /// Arms `c` for replies, and for writes while bytes wait for its socket. Looked at
  /// again after: a writer may queue bytes and ask for writes (`watchWrites`) between
  /// the look and the arming, which would then drop its request.
  private func rearm(_ c: LaneClient) {
    let fd = c.socket.fd
    _ = sr_epoll_set(epfd, fd, Int32(SR_LANE_IN) | (c.socket.wantsWrite ? Int32(SR_LANE_OUT) : 0), 0)
    if c.socket.wantsWrite { _ = sr_epoll_set(epfd, fd, Int32(SR_LANE_IN | SR_LANE_OUT), 0) }
  }

  /// The socket would not take a whole frame: whoever reads the lane sends the rest
  /// when it can (a waiting thread reading it is told to look; else the reactor).
  private func watchWrites(_ c: LaneClient) {
    if let foreground = c.foreground.withLock({ $0 }) { return foreground.signal() }
    _ = sr_epoll_set(epfd, c.socket.fd, Int32(SR_LANE_IN | SR_LANE_OUT), 0)
  }

  private func startReactor() {
    // Held only while the reactor runs, not until the thread object goes (a shut-down
    // core is then freed at once); not weak either, which would move every retain of
    // these clients to the slow path of a side table.
    let me = Unmanaged.passRetained(self)
    let t = Thread { me.takeRetainedValue().reactor() }
    t.name = "swiftray-lanes"
    t.stackSize = 1 << 20
    t.start()
  }

  /// The reactor thread: reads replies and hands them to their waiters, sends what
  /// writers left queued, and fails a lane's requests when its worker goes away.
  private func reactor() {
    var fds = [Int32](repeating: 0, count: 64)
    var events = [Int32](repeating: 0, count: 64)
    let inBit = Int32(SR_LANE_IN), outBit = Int32(SR_LANE_OUT), hupBit = Int32(SR_LANE_HUP)
    while true {
      let n = sr_epoll_wait(epfd, &fds, &events, 64, sleepDeadline())
      reactorSleepsForever.store(false, ordering: .relaxed)
      if n < 0 { if errno == EINTR { continue }; return }
      // Slept to its deadline: corked frames waited long enough.
      if n == 0 { uncorkAll() }
      for i in 0..<Int(n) {
        let fd = fds[i]
        if fd == stopFD { return }
        if fd == kickFD {
          var count: UInt64 = 0
          _ = Glibc.read(kickFD, &count, 8)
          continue
        }
        // A lane a waiting thread reads itself (`readWhileWaiting`) is left to it.
        guard let c = state.withLock({ $0.byFD[fd] }), c.beginRead() else { continue }
        if events[i] & outBit != 0, c.socket.flush() != .queued { rearm(c) }
        // A reply: its worker gets through its queue, so it gets the next ones first.
        if events[i] & inBit != 0 { uncork(c) }
        let open = events[i] & (inBit | hupBit) == 0 || c.readReplies()
        c.endRead()
        if !open { drop(c) }
      }
    }
  }

  /// How long the reactor may sleep: `corkPatienceMs` while a lane has corked frames,
  /// `inFlightPatienceMs` while requests are in flight, else until something happens
  /// (then a lane that corks its first frame kicks it: `corkedFirst`).
  private func sleepDeadline() -> Int32 {
    reactorSleepsForever.store(true, ordering: .sequentiallyConsistent)
    if corkedLanes.load(ordering: .sequentiallyConsistent) > 0 {
      reactorSleepsForever.store(false, ordering: .relaxed)
      return Self.corkPatienceMs
    }
    if state.withLock({ $0.byFD.values.contains { $0.inFlight.load(ordering: .relaxed) > 0 } }) {
      reactorSleepsForever.store(false, ordering: .relaxed)
      return Self.inFlightPatienceMs
    }
    return -1
  }

  /// A lane that closed (or whose worker stopped answering): its requests fail as a
  /// lost data-plane connection's do, and the worker is no longer reached by it.
  /// Any thread; more than once is harmless.
  private func drop(_ c: LaneClient) {
    _ = sr_epoll_del(epfd, c.socket.fd)
    // Its corked frames go with it: the reactor no longer needs a deadline for them.
    if c.corked.exchange(0, ordering: .acquiringAndReleasing) > 0 {
      corkedLanes.subtract(1, ordering: .sequentiallyConsistent)
    }
    state.withLock { s in
      if s.byFD[c.socket.fd] === c { s.byFD[c.socket.fd] = nil }
      if case .lane(let x)? = s.routes[c.endpoint], x === c { s.routes[c.endpoint] = nil }
    }
    c.socket.close()
    c.failAll(SwiftrayError(.system, "connection lost"))
  }

  /// Closes every lane (their requests fail) and stops the reactor.
  public func closeAll() {
    let all: [LaneClient] = state.withLock { s in
      s.closed = true
      defer { s.routes.removeAll() }
      return Array(s.byFD.values)
    }
    for c in all {
      c.socket.close()
      c.failAll(SwiftrayError(.system, "the connection to \(c.path) was closed"))
    }
    var one: UInt64 = 1
    _ = Glibc.write(stopFD, &one, 8)
  }

  /// The reactor thread holds the clients while it runs, so none of its descriptors
  /// can be closed under it.
  deinit {
    Glibc.close(epfd)
    Glibc.close(stopFD)
    Glibc.close(kickFD)
  }
}

/// One lane to one worker: the requests waiting for its replies.
/// Threading: `request`/`failAll` from any thread; `readReplies` by the thread that
/// holds `beginRead` (the reactor, or a thread waiting for a reply: `readWhileWaiting`).
final class LaneClient: Sendable {
  struct State {
    var pending: [UInt64: DataPlaneConnection.Waiter] = [:]
    var closed: SwiftrayError?
  }
  let socket: LaneSocket
  let endpoint: Endpoint
  let path: String
  let state = Locked(State())
  /// Taken outside `state`, so a frame is encoded before its request takes the lock
  /// that the thread delivering replies needs too.
  let nextID = Atomic<UInt64>(1)
  /// `state.pending.count`, kept beside it (changed under `state`'s lock) so a request
  /// reads it before it takes that lock.
  let inFlight = Atomic<Int>(0)
  /// Frames corked on this lane since it last sent (`LaneClients.maxCorked`): counted
  /// after the frame is held, zeroed before the lane is flushed, so a frame held while
  /// a flush runs is either sent by it or counted for the next.
  let corked = Atomic<Int>(0)
  /// Read by one thread at a time: whoever holds `reading` (`beginRead`).
  nonisolated(unsafe) var reader = FrameReader(max: NetworkLimits.current.maxFrameBytes)
  let reading = Atomic<Bool>(false)
  /// The wake-up of the thread reading this lane while it waits (`readWhileWaiting`),
  /// signalled when a frame waits for the socket: that thread sends it.
  let foreground = Locked<Wakeup?>(nil)

  /// Takes the right to read this lane; false while another thread reads it.
  func beginRead() -> Bool { !reading.exchange(true, ordering: .acquiring) }
  func endRead() { reading.store(false, ordering: .releasing) }
  /// Requests wait for replies on this lane.
  var hasPending: Bool { state.withLock { !$0.pending.isEmpty } }

  init(socket: LaneSocket, endpoint: Endpoint, path: String) { self.socket = socket; self.endpoint = endpoint; self.path = path }

  enum Sent { case sent, blocked, corkedFirst, uncorked(blocked: Bool) }

  /// Writes the request's frame from this thread, or corks it (`LaneClients.maxCorked`).
  /// `.blocked`: the socket did not take all of it (the reactor must send the rest);
  /// `.corkedFirst`: it is the first frame corked (the reactor must not sleep long);
  /// `.uncorked`: it went with the frames corked before it (the lane counts no more).
  func request(_ body: Swiftray_DataFrame.OneOf_Body, _ waiter: DataPlaneConnection.Waiter,
               group: EventLoopGroup) -> Sent {
    var f = Swiftray_DataFrame()
    f.body = body
    f.id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
    f.moreInFlight = inFlight.load(ordering: .relaxed) >= LaneClients.streamingInFlight
    enum Step { case send([UInt8]), failed(SwiftrayError) }
    // Frames leave in the order their `socket.write` calls ran (the socket's own queue
    // keeps it), as a data-plane connection's leave in the order of `request` calls.
    let step: Step
    if let bytes = Lane.encode(f) {
      if let why = DataPlane.tooLarge(bytes.count - 4) {
        step = .failed(SwiftrayError(.invalidArgument, why))
      } else {
        step = state.withLock { s in
          if let e = s.closed { return .failed(e) }
          s.pending[f.id] = waiter
          inFlight.store(s.pending.count, ordering: .relaxed)
          return .send(bytes)
        }
      }
    } else {
      step = .failed(SwiftrayError(.system, "could not encode a data-plane frame"))
    }
    switch step {
    case .failed(let e):
      group.next().execute { waiter.fail(e) }
      return .sent
    case .send(let bytes):
      if f.moreInFlight {
        // Held first, counted after (see `corked`). Closed: as below.
        guard socket.hold(bytes) != .closed else { return .sent }
        let held = corked.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue
        if held < LaneClients.maxCorked { return held == 1 ? .corkedFirst : .sent }
        // Enough corked: they all go now, with this one.
        guard corked.exchange(0, ordering: .acquiringAndReleasing) > 0 else { return .sent }
        return .uncorked(blocked: socket.flush() == .queued)
      }
      switch socket.write(bytes) {
      case .sent: return .sent
      case .queued: return .blocked
      case .closed:
        // Whoever closed the lane fails its requests, this one with them: `failAll`
        // either ran after the insert above or refused it.
        return .sent
      }
    }
  }

  /// Reads and delivers what arrived; false when the lane closed (or its worker sent
  /// what cannot be a reply).
  func readReplies() -> Bool {
    let r = socket.read(into: &reader)
    var frames: [Swiftray_DataFrame] = []
    var open = r != .closed
    reading: while true {
      switch reader.next() {
      case .incomplete:
        break reading
      case .tooLarge:
        open = false
        break reading
      case .frame(let bytes):
        guard let frame = Lane.decode(bytes) else { open = false; break reading }
        frames.append(frame)
      }
    }
    deliver(frames)
    return open
  }

  /// Hands each reply to its waiter; the waiters of all the replies one read brought
  /// are taken in one lock.
  private func deliver(_ frames: [Swiftray_DataFrame]) {
    guard !frames.isEmpty else { return }
    LockDiscipline.mustNotHoldLock("a lane reply callback")
    // Lanes carry requests answered once (a subscription goes by the data plane).
    let waiters = state.withLock { s in
      defer { inFlight.store(s.pending.count, ordering: .relaxed) }
      return frames.map { s.pending.removeValue(forKey: $0.id) }
    }
    for (frame, waiter) in zip(frames, waiters) { waiter?.succeed(frame, payload: nil) }
  }

  func failAll(_ error: SwiftrayError) {
    LockDiscipline.mustNotHoldLock("a lane failure callback")
    let waiters: [DataPlaneConnection.Waiter] = state.withLock { s in
      if s.closed != nil { return [] }
      s.closed = error
      defer { s.pending.removeAll(); inFlight.store(0, ordering: .relaxed) }
      return Array(s.pending.values)
    }
    for w in waiters { w.fail(error) }
  }
}
