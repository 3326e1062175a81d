import CSwiftray
import DequeModule
import Foundation
import Synchronization

/// Spawns worker processes and watches them from one dedicated thread: their stdout
/// and stderr (forwarded line by line) and their exit (a pidfd per child, so a child
/// that leaves its pipes open to a grandchild is still seen dying at once).
///
/// With a fork server started (`startForkServer`), a worker whose environment is the
/// server's is forked from it (`ForkServer`) rather than spawned: its output comes the
/// same way, its end as the server's notice (the server is its parent). A worker the
/// server cannot fork, or any once the server is gone, is spawned.
///
/// Threading: `spawn` blocks (a process start: call it from a thread of your own),
/// `launch` does not (it spawns on the monitor's launcher thread and calls back
/// there); `signal`/`shutdown` from any thread; output and exit callbacks run on the
/// monitor thread and must not block.
public final class ProcessMonitor: Sendable {
  public struct ExitStatus: Sendable, Equatable {
    public var pid: Int32
    /// Valid when `signal == 0`; -1 when the status is unknown (a worker forked by a
    /// fork server that died before it: only its parent could have reaped it).
    public var exitCode: Int32
    public var signal: Int32
    public init(pid: Int32, exitCode: Int32, signal: Int32) { self.pid = pid; self.exitCode = exitCode; self.signal = signal }
  }
  public typealias OutputHandler = @Sendable (_ pid: Int32, _ isErr: Bool, _ lines: [String]) -> Void
  public typealias ExitHandler = @Sendable (ExitStatus) -> Void

  struct Child {
    var pid: Int32
    var outFD: Int32
    var errFD: Int32
    var pidFD: Int32
    var outBuf: [UInt8] = []
    var errBuf: [UInt8] = []
    /// Forked by the fork server: not our child, so never `waitpid`ed here; its wait
    /// status comes as the server's notice (or, once the server is gone, its pidfd
    /// says it ended).
    var forked = false
    var pendingExit: Int32?
    var isForkServer = false
  }
  struct ForkServerLink {
    var pid: Int32
    var requestFD: Int32
    var noticeFD: Int32
    /// What every worker it forks starts from (`ForkServer.perWorkerKeys` aside).
    var environment: [String: String]
    var ready = false
    var gone = false
    /// When it was started (monotonic ns): a worker waits for it to be ready until
    /// `forkServerPatienceNanos` after this.
    var startedAt: UInt64 = 0
  }
  /// A process that is not our child (a driver): only its end is watched, through a
  /// pidfd (or, where pidfds are missing, a probe each second).
  struct Watched {
    var pidFD: Int32
    let onGone: @Sendable () -> Void
  }
  struct State {
    var children: [Int32: Child] = [:]
    var watched: [Int32: Watched] = [:]
    var stopped = false
    /// The monitor thread ended and closed what it held (`closeDescriptors`): a child
    /// registered after that has its descriptors closed at once.
    var drained = false
    /// `stopAndWait` closed the wake and lifeline pipes and the fork server's request
    /// socket (both threads had ended): `wake` and `deinit` leave them alone.
    var ownDescriptorsClosed = false
    var forkServer: ForkServerLink?
    /// Ends the server reported before `spawn` learnt the pid (a child that died at
    /// once). Bounded: a pid nobody claims is dropped with the oldest.
    var unclaimedExits = RecentMap<Int32, Int32>(capacity: ProcessMonitor.maxUnclaimedExits)
  }
  static let maxUnclaimedExits = 1024
  /// How long after the fork server's start a new worker waits for it to be ready
  /// rather than being spawned. A spawned worker starts a whole interpreter (~100 ms of
  /// CPU, against a few for a fork), and the fork server is ready a few hundred
  /// milliseconds after its node starts: the first workers of a node then come sooner
  /// by waiting, on a node with few CPUs above all. A server that is not ready by then
  /// is not waited for again.
  static let forkServerPatienceNanos: UInt64 = 3_000_000_000
  /// Signalled when the fork server says it is ready (a waiting `spawn` looks again).
  let forkServerReady = DispatchSemaphore(value: 0)
  static let maxNoticesPerWake = 256

  let state = Locked(State())
  /// Starts waiting for the launcher thread (`launch`), first come first served.
  let launches = Locked(Deque<Launch>())
  let launchReady = DispatchSemaphore(value: 0)
  /// Signalled by the monitor and the launcher thread as each ends (`stopAndWait`).
  let threadEnded = DispatchSemaphore(value: 0)
  struct Launch {
    let executable: String
    let arguments: [String]
    let environment: [String: String]
    let completion: @Sendable (Result<Int32, SwiftrayError>) -> Void
  }
  let wakeRead: Int32, wakeWrite: Int32
  /// Write end of the lifeline pipe; every worker's stdin is its read end, so when
  /// this process dies, however it dies, workers read EOF and exit.
  let lifelineWrite: Int32, lifelineRead: Int32
  let onOutput: OutputHandler
  let onExit: ExitHandler

  public init(onOutput: @escaping OutputHandler, onExit: @escaping ExitHandler) {
    var w: [Int32] = [0, 0]
    _ = sr_pipe_cloexec(&w)
    wakeRead = w[0]; wakeWrite = w[1]
    _ = fcntl(wakeRead, F_SETFL, O_NONBLOCK)
    var l: [Int32] = [0, 0]
    _ = sr_pipe_cloexec(&l)
    lifelineRead = l[0]; lifelineWrite = l[1]
    self.onOutput = onOutput
    self.onExit = onExit
    let t = Thread { [self] in self.loop() }
    t.name = "swiftray-process-monitor"
    t.start()
    let launcher = Thread { [self] in self.launchLoop() }
    launcher.name = "swiftray-launcher"
    launcher.start()
  }

  /// Starts a worker as `spawn` does, on the launcher thread, then calls `completion`
  /// there with its pid (or why it could not start). Never blocks the caller: a
  /// process start takes milliseconds, too long for an event loop or a Task's thread.
  public func launch(executable: String, arguments: [String], environment: [String: String],
                     completion: @escaping @Sendable (Result<Int32, SwiftrayError>) -> Void) {
    launches.withLock { $0.append(Launch(executable: executable, arguments: arguments, environment: environment, completion: completion)) }
    launchReady.signal()
  }

  private func launchLoop() {
    defer { threadEnded.signal() }
    while true {
      launchReady.wait()
      let (next, stopped) = (launches.withLock { $0.popFirst() }, state.withLock { $0.stopped })
      guard let next else { if stopped { return }; continue }
      if stopped {
        next.completion(.failure(SwiftrayError(.system, "the node is stopping; no worker started")))
        continue
      }
      do throws(SwiftrayError) {
        next.completion(.success(try spawn(executable: next.executable, arguments: next.arguments, environment: next.environment)))
      } catch {
        next.completion(.failure(error))
      }
    }
  }

  /// Starts `executable args` with exactly `environment`. Returns the pid.
  public func spawn(executable: String, arguments: [String], environment: [String: String]) throws(SwiftrayError) -> Int32 {
    LockDiscipline.mayBlock("ProcessMonitor.spawn")
    let shared = environment.filter { !ForkServer.perWorkerKeys.contains($0.key) }
    enum Server { case ready(Int32), starting(deadline: UInt64), none }
    func look() -> Server {
      state.withLock { s in
        guard let f = s.forkServer, !f.gone, !s.stopped, shared == f.environment else { return .none }
        return f.ready ? .ready(f.requestFD) : .starting(deadline: f.startedAt &+ Self.forkServerPatienceNanos)
      }
    }
    var server = look()
    // A fork server still starting is waited for (bounded), not raced by a spawn.
    while case .starting(let deadline) = server {
      let now = DispatchTime.now().uptimeNanoseconds
      guard now < deadline else { break }
      // Looked at again at least every 50 ms: another waiter may have taken the signal.
      _ = forkServerReady.wait(timeout: .now() + .nanoseconds(Int(min(deadline - now, 50_000_000))))
      server = look()
    }
    if case .ready(let fd) = server, let pid = fork(from: fd, environment: environment) { return pid }
    return try start(executable: executable, arguments: arguments, environment: environment, extraFDs: (-1, -1)) { _, _ in }
  }

  /// Starts the node's fork server (`executable args`, which must run `ForkServer.serve`)
  /// with `environment`: workers whose environment is this one (but for their
  /// `ForkServer.perWorkerKeys`) are forked from it once it says it is ready.
  public func startForkServer(executable: String, arguments: [String], environment: [String: String]) throws(SwiftrayError) {
    var request: [Int32] = [0, 0], notice: [Int32] = [0, 0]
    guard sr_seqpacket_pair(&request) == 0 else { throw SwiftrayError(.system, "cannot create the fork server's sockets: \(String(cString: strerror(errno)))") }
    guard sr_seqpacket_pair(&notice) == 0 else {
      close(request[0]); close(request[1])
      throw SwiftrayError(.system, "cannot create the fork server's sockets: \(String(cString: strerror(errno)))")
    }
    _ = fcntl(notice[0], F_SETFL, O_NONBLOCK)
    // The server's ends are its own once it started (or useless if it did not).
    defer { close(request[1]); close(notice[1]) }
    do {
      // Every symbol bound once in the server, not lazily in each child (the children
      // take on exactly `environment`, without this).
      var own = environment
      own["LD_BIND_NOW"] = "1"
      _ = try start(executable: executable, arguments: arguments, environment: own, extraFDs: (request[1], notice[1])) { s, pid in
        s.children[pid]?.isForkServer = true
        s.forkServer = ForkServerLink(pid: pid, requestFD: request[0], noticeFD: notice[0], environment: environment,
                                      startedAt: DispatchTime.now().uptimeNanoseconds)
      }
    } catch {
      close(request[0]); close(notice[0])
      throw error
    }
  }

  /// Spawns a process with stdout/stderr pipes this monitor drains; `register` runs
  /// under the state lock with the new child's pid (before the monitor looks at it).
  private func start(executable: String, arguments: [String], environment: [String: String],
                     extraFDs: (Int32, Int32), register: (inout State, Int32) -> Void) throws(SwiftrayError) -> Int32 {
    var out: [Int32] = [0, 0], err: [Int32] = [0, 0]
    guard sr_pipe_cloexec(&out) == 0 else {
      throw SwiftrayError(.system, "cannot create pipes for a worker: \(String(cString: strerror(errno)))")
    }
    guard sr_pipe_cloexec(&err) == 0 else {
      close(out[0]); close(out[1])
      throw SwiftrayError(.system, "cannot create pipes for a worker: \(String(cString: strerror(errno)))")
    }
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = sr_spawn_with(executable, argv, envp, lifelineRead, out[1], err[1], extraFDs.0, extraFDs.1, &pid)
    close(out[1]); close(err[1])
    guard rc == 0 else {
      close(out[0]); close(err[0])
      throw SwiftrayError(.system, "cannot start worker process \(executable): \(String(cString: strerror(rc)))")
    }
    _ = fcntl(out[0], F_SETFL, O_NONBLOCK)
    _ = fcntl(err[0], F_SETFL, O_NONBLOCK)
    let pidFD = sr_pidfd_open(pid)
    let kept = state.withLock { s -> Bool in
      guard !s.drained else { return false }
      s.children[pid] = Child(pid: pid, outFD: out[0], errFD: err[0], pidFD: pidFD)
      register(&s, pid)
      return true
    }
    guard kept else {
      for fd in [out[0], err[0], pidFD] where fd >= 0 { close(fd) }
      Self.killAndReap([pid])
      throw SwiftrayError(.system, "the node is stopping; no worker started")
    }
    wake()
    return pid
  }

  /// Asks the fork server for a worker; nil when it cannot give one (the caller spawns
  /// instead). A server that does not answer in time is given up for good.
  private func fork(from server: Int32, environment: [String: String]) -> Int32? {
    var out: [Int32] = [0, 0], err: [Int32] = [0, 0], answer: [Int32] = [0, 0]
    guard sr_pipe_cloexec(&out) == 0 else { return nil }
    guard sr_pipe_cloexec(&err) == 0 else { out.forEach { close($0) }; return nil }
    guard sr_pipe_cloexec(&answer) == 0 else { (out + err).forEach { close($0) }; return nil }
    let request = ForkServer.encodeRequest(environment: environment)
    let passed = [out[1], err[1], answer[1]]
    let sent = sr_send_fds(server, request, request.count, passed, 3)
    passed.forEach { close($0) }
    var reply = [UInt8](repeating: 0, count: 4)
    var got = 0
    if sent == request.count {
      // The server answers right after its fork (milliseconds); ten seconds is a server
      // that is stuck, not slow.
      let deadline = ContinuousClock.now + .seconds(10)
      while got < 4 {
        let left = deadline - ContinuousClock.now
        guard left > .zero else { break }
        var p = pollfd(fd: answer[0], events: Int16(POLLIN), revents: 0)
        let ms = Int32(min(10_000, max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)))
        let r = poll(&p, 1, ms)
        if r < 0 && errno == EINTR { continue }
        guard r > 0 else { break }
        let n = reply.withUnsafeMutableBytes { read(answer[0], $0.baseAddress! + got, 4 - got) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        got += n
      }
    }
    close(answer[0])
    guard got == 4, let pid = ForkServer.decodeReply(reply[...]), pid > 0 else {
      close(out[0]); close(err[0])
      if got != 4 { giveUpForkServer() }
      return nil
    }
    _ = fcntl(out[0], F_SETFL, O_NONBLOCK)
    _ = fcntl(err[0], F_SETFL, O_NONBLOCK)
    let kept = state.withLock { s -> Bool in
      guard !s.drained else { return false }
      var c = Child(pid: pid, outFD: out[0], errFD: err[0], pidFD: -1)
      c.forked = true
      c.pendingExit = s.unclaimedExits.remove(pid)
      if s.forkServer?.gone == true { c.pidFD = sr_pidfd_open(pid) }
      s.children[pid] = c
      return true
    }
    guard kept else {
      close(out[0]); close(err[0])
      kill(pid, SIGKILL)
      return nil
    }
    wake()
    return pid
  }

  /// A fork server that broke its protocol is killed; workers are spawned from now on.
  private func giveUpForkServer() {
    state.withLock { s in
      guard var f = s.forkServer, !f.gone else { return }
      f.ready = false
      f.startedAt = 0  // not waited for any more
      s.forkServer = f
      killUnderLock(f.pid, SIGKILL)
    }
  }

  public func signal(_ pid: Int32, _ sig: Int32) {
    state.withLock { s in
      // A forked child whose end the server reported is reaped already: its pid is free.
      guard let c = s.children[pid], c.pendingExit == nil else { return }
      killUnderLock(pid, sig)
    }
  }

  /// `kill` (a syscall that never calls back) under the state lock, on a pid found
  /// there: the monitor takes a child out of the table (and marks the fork server gone)
  /// under that lock *before* it reaps it, so the pid cannot have been reused.
  private func killUnderLock(_ pid: Int32, _ sig: Int32) {
    kill(pid, sig)
  }

  /// Workers (the fork server is not one).
  public var livePids: [Int32] { state.withLock { $0.children.values.filter { !$0.isForkServer }.map(\.pid) } }

  /// Calls `onGone` once (on the monitor thread) when process `pid`, not a child of this
  /// one, ends — at once through a pidfd, within a second without one. A pid already
  /// watched keeps its first callback; one already gone is reported at the next turn.
  public func watch(_ pid: Int32, onGone: @escaping @Sendable () -> Void) {
    guard pid > 0 else { return }
    let fd = sr_pidfd_open(pid)
    let added = state.withLock { s -> Bool in
      guard s.watched[pid] == nil, !s.stopped else { return false }
      s.watched[pid] = Watched(pidFD: fd, onGone: onGone)
      return true
    }
    if !added { if fd >= 0 { close(fd) }; return }
    wake()
  }

  /// Stops watching. Workers are not signalled here (the NodeManager decides); the
  /// fork server is killed (it would only fork more).
  public func shutdown() {
    state.withLock { s in
      s.stopped = true
      if let f = s.forkServer, !f.gone { killUnderLock(f.pid, SIGKILL) }
    }
    wake()
    launchReady.signal()
  }

  /// Stops, as `shutdown`, then waits (at most 5 s) for the monitor and
  /// launcher threads to end, and closes the monitor's own pipes and sockets: on
  /// return the fork server is reaped and nothing of the monitor's stays open, so a
  /// driver that starts and stops local clusters one after another keeps no
  /// descriptor or zombie, not even for a moment. A thread that has not ended in time
  /// (a spawn stuck in a process start) leaves those descriptors to `deinit`.
  /// Blocks: call from a thread of your own, never from a Task or an event loop.
  public func stopAndWait() {
    LockDiscipline.mayBlock("ProcessMonitor.stopAndWait")
    shutdown()
    guard !state.withLock({ $0.ownDescriptorsClosed }) else { return }
    // The monitor thread's last act reaps the fork server, bounded by 2 s (`killAndReap`).
    let deadline = DispatchTime.now() + .seconds(5)
    guard threadEnded.wait(timeout: deadline) == .success else { return }
    guard threadEnded.wait(timeout: deadline) == .success else { threadEnded.signal(); return }
    // Only `wake` (from `watch`) may still touch these: it looks under the same lock.
    state.withLock { s in
      guard !s.ownDescriptorsClosed else { return }
      s.ownDescriptorsClosed = true
      for fd in [wakeRead, wakeWrite, lifelineRead, lifelineWrite] { close(fd) }
      if let f = s.forkServer { close(f.requestFD) }
    }
  }

  /// Under the state lock (a non-blocking write, no callback): the pipe may have been
  /// closed by `stopAndWait`, and its number reused since.
  private func wake() {
    state.withLock { s in
      guard !s.ownDescriptorsClosed else { return }
      var b: UInt8 = 1
      _ = write(wakeWrite, &b, 1)
    }
  }

  private func loop() {
    defer { threadEnded.signal() }
    // The monitor thread's one read buffer for every child's pipes.
    var scratch = [UInt8](repeating: 0, count: 65536)
    var lastSweep = ContinuousClock.now
    while true {
      let (children, watched, stopped, notices) = state.withLock {
        ($0.children, $0.watched, $0.stopped, $0.forkServer.flatMap { $0.gone ? nil : $0.noticeFD })
      }
      if stopped { return closeDescriptors() }
      var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
                 pollfd(fd: notices ?? -1, events: Int16(POLLIN), revents: 0)]
      var fdOwner: [Int32] = [0, 0]  // the child each entry of `fds` is for
      for c in children.values {
        for fd in [c.outFD, c.errFD, c.pidFD] where fd >= 0 {
          fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
          fdOwner.append(c.pid)
        }
      }
      let watchedFrom = fds.count
      let watchedPids = watched.filter { $0.value.pidFD >= 0 }.map(\.key)
      for pid in watchedPids { fds.append(pollfd(fd: watched[pid]!.pidFD, events: Int16(POLLIN), revents: 0)) }
      // Without pidfds, fall back to a periodic reap (children) or probe (watched).
      // (A forked child without one is the fork server's to report, while it lives.)
      let timeout: Int32 = children.values.contains { $0.pidFD < 0 && (!$0.forked || notices == nil) } ? 100 : 1000
      _ = poll(&fds, nfds_t(fds.count), timeout)
      if fds[0].revents != 0 {
        var buf = [UInt8](repeating: 0, count: 64)
        while read(wakeRead, &buf, 64) > 0 {}
      }
      // Only the children something happened to; all of them on the periodic sweep (the
      // only way to see the end of one without a pidfd).
      var due = Set<Int32>()
      if let notices, fds[1].revents != 0 { due.formUnion(readNotices(notices)) }
      for i in 2..<watchedFrom where fds[i].revents != 0 { due.insert(fdOwner[i]) }
      let now = ContinuousClock.now
      if now - lastSweep >= .milliseconds(Int64(timeout)) {
        lastSweep = now
        due.formUnion(children.keys)
      }
      for pid in due { service(pid, &scratch) }
      var gone = watchedPids.indices.filter { fds[watchedFrom + $0].revents != 0 }.map { watchedPids[$0] }
      gone += watched.filter { $0.value.pidFD < 0 && kill($0.key, 0) != 0 && errno == ESRCH }.map(\.key)
      let ended: [Watched] = state.withLock { s in gone.compactMap { s.watched.removeValue(forKey: $0) } }
      for w in ended {
        if w.pidFD >= 0 { close(w.pidFD) }
        w.onGone()
      }
    }
  }

  /// The monitor thread's last act, once stopped: closes every descriptor it read
  /// (children's pipes and pidfds, watched pidfds, the fork server's notices) and reaps
  /// the fork server `shutdown` killed, so a driver that starts and stops many local
  /// clusters keeps no descriptor or zombie of theirs. The wake and lifeline pipes and
  /// the fork server's request socket go with the monitor (`deinit`), or `stopAndWait`
  /// once both threads ended: `wake` and a `spawn` already past its look may still use
  /// them.
  private func closeDescriptors() {
    let (children, watched, server) = state.withLock { s in
      s.drained = true
      defer { s.children.removeAll(); s.watched.removeAll() }
      return (s.children, s.watched, s.forkServer)
    }
    for c in children.values {
      for fd in [c.outFD, c.errFD, c.pidFD] where fd >= 0 { close(fd) }
    }
    for w in watched.values where w.pidFD >= 0 { close(w.pidFD) }
    if let server, !server.gone { close(server.noticeFD) }
    // Our own children still listed (the fork server, a worker started while the node
    // stopped) would be nobody's to reap once this thread ends.
    Self.killAndReap(children.values.filter { !$0.forked }.map(\.pid))
  }

  /// SIGKILLs `pids` (children of this process) and reaps them, waiting at most 2 s for
  /// all: a process killed that way ends at once unless the kernel holds it.
  static func killAndReap(_ pids: [Int32]) {
    var left = Set(pids)
    for pid in left { kill(pid, SIGKILL) }
    let deadline = ContinuousClock.now + .seconds(2)
    while !left.isEmpty && ContinuousClock.now < deadline {
      var status: Int32 = 0
      left = left.filter { waitpid($0, &status, WNOHANG) == 0 }
      if !left.isEmpty { usleep(2_000) }
    }
  }

  deinit {
    let (closed, server) = state.withLock { ($0.ownDescriptorsClosed, $0.forkServer) }
    guard !closed else { return }
    for fd in [wakeRead, wakeWrite, lifelineRead, lifelineWrite] { close(fd) }
    if let server { close(server.requestFD) }
  }

  /// Reads the fork server's notices (non-blocking): it is ready; a child ended.
  /// Returns the forked children whose end it reported. At most `maxNoticesPerWake` at
  /// a time, so a server that floods notices cannot hold the monitor thread (the rest
  /// wait for the next turn of the loop: the socket still polls readable).
  private func readNotices(_ fd: Int32) -> [Int32] {
    var buf = [UInt8](repeating: 0, count: 64)
    var ended: [Int32] = []
    for _ in 0..<Self.maxNoticesPerWake {
      var none: Int32 = 0
      let n = buf.withUnsafeMutableBytes { sr_recv_fds(fd, $0.baseAddress, $0.count, nil, 0, &none) }
      if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
      guard n > 0 else {
        // The server closed its end (it is dying): its own exit is reaped as a child's.
        state.withLock { s in
          s.forkServer?.ready = false
          s.forkServer?.startedAt = 0  // not waited for any more
        }
        break
      }
      guard let notice = ForkServer.decodeNotice(buf[0..<n]) else { continue }
      let nowReady = state.withLock { s -> Bool in
        switch notice {
        case .ready(let pid):
          guard s.forkServer?.pid == pid else { return false }
          s.forkServer?.ready = true
          return true
        case .exited(let pid, let status):
          if s.children[pid]?.forked == true {
            s.children[pid]?.pendingExit = status
            ended.append(pid)
          } else {
            s.unclaimedExits.insert(status, for: pid)
          }
          return false
        }
      }
      if nowReady { forkServerReady.signal() }
    }
    return ended
  }

  /// The fork server died: its forked workers live on (orphans now), and their ends can
  /// only be seen through pidfds from now on (their wait status is lost with it).
  private func forkServerEnded(_ server: Child) {
    state.withLock { s in
      guard let f = s.forkServer else { return }
      // The request socket stays open: a `spawn` may be about to send on it (and then
      // fails, and spawns); closing it could hand its number to another file meanwhile.
      close(f.noticeFD)
      s.forkServer?.gone = true
      s.forkServer?.ready = false
      for (pid, c) in s.children where c.forked && c.pidFD < 0 && c.pendingExit == nil {
        s.children[pid]?.pidFD = sr_pidfd_open(pid)
      }
    }
  }

  /// Drains a child's pipes and reaps it if it exited.
  private func service(_ pid: Int32, _ scratch: inout [UInt8]) {
    guard var c = state.withLock({ $0.children[pid] }) else { return }
    drain(&c.outFD, &c.outBuf, pid: pid, isErr: false, scratch: &scratch)
    drain(&c.errFD, &c.errBuf, pid: pid, isErr: true, scratch: &scratch)
    var status: Int32 = 0
    let ended: Bool
    if c.forked {
      if let s = c.pendingExit {
        status = s; ended = true
      } else if c.pidFD >= 0 || state.withLock({ $0.forkServer?.gone == true }) {
        // The server is gone: a pidfd that polls readable (or no process) is the end,
        // with no status to tell.
        var p = pollfd(fd: c.pidFD, events: Int16(POLLIN), revents: 0)
        ended = c.pidFD >= 0 ? poll(&p, 1, 0) > 0 : (kill(pid, 0) != 0 && errno == ESRCH)
        status = -1
      } else {
        ended = false
      }
    } else {
      ended = sr_child_exited(pid) == 1
      if ended {
        // Its last output first, while it is still listed: a shutdown that waits for
        // its workers to leave the table then finds their last lines delivered.
        drain(&c.outFD, &c.outBuf, pid: pid, isErr: false, final: true, scratch: &scratch)
        drain(&c.errFD, &c.errBuf, pid: pid, isErr: true, final: true, scratch: &scratch)
        // Out of the table (the server marked gone) while its pid is still a zombie's,
        // then reaped: `signal` and `giveUpForkServer` only kill what is in the table.
        state.withLock { s in
          s.children[pid] = nil
          if c.isForkServer { s.forkServer?.gone = true; s.forkServer?.ready = false }
        }
        _ = waitpid(pid, &status, WNOHANG)
      }
    }
    if ended {
      // Pick up what it wrote just before dying.
      drain(&c.outFD, &c.outBuf, pid: pid, isErr: false, final: true, scratch: &scratch)
      drain(&c.errFD, &c.errBuf, pid: pid, isErr: true, final: true, scratch: &scratch)
      for fd in [c.outFD, c.errFD, c.pidFD] where fd >= 0 { close(fd) }
      state.withLock { _ = $0.children.removeValue(forKey: pid) }
      if c.isForkServer { forkServerEnded(c); return }
      if status == -1 && c.forked {
        onExit(ExitStatus(pid: pid, exitCode: -1, signal: 0))
        return
      }
      let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
      onExit(ExitStatus(pid: pid, exitCode: signaled ? 0 : (status >> 8) & 0xff, signal: signaled ? status & 0x7f : 0))
      return
    }
    state.withLock { s in
      if s.children[pid] != nil { s.children[pid] = c }
    }
  }

  private func drain(_ fd: inout Int32, _ buf: inout [UInt8], pid: Int32, isErr: Bool, final: Bool = false,
                     scratch chunk: inout [UInt8]) {
    guard fd >= 0 else { return }
    var lines: [String] = []
    while true {
      let n = read(fd, &chunk, chunk.count)
      if n > 0 {
        buf.append(contentsOf: chunk[0..<n])
        while let nl = buf.firstIndex(of: 10) {
          lines.append(String(decoding: buf[..<nl], as: UTF8.self))
          buf.removeSubrange(...nl)
        }
        // Bound a runaway line without a newline.
        if buf.count > 1 << 20 { lines.append(String(decoding: buf, as: UTF8.self)); buf.removeAll() }
        continue
      }
      if n == 0 {  // EOF
        close(fd); fd = -1
        if !buf.isEmpty { lines.append(String(decoding: buf, as: UTF8.self)); buf.removeAll() }
      }
      break
    }
    if final && !buf.isEmpty { lines.append(String(decoding: buf, as: UTF8.self)); buf.removeAll() }
    if !lines.isEmpty { onOutput(pid, isErr, lines) }
  }
}
