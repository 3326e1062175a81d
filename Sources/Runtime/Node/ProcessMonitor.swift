import CSwiftray
import Foundation
import Synchronization

/// Spawns worker processes and watches them from one dedicated thread: their stdout
/// and stderr (forwarded line by line) and their exit (a pidfd per child, so a child
/// that leaves its pipes open to a grandchild is still seen dying at once).
///
/// Threading: `spawn`/`signal`/`shutdown` from any thread; callbacks run on the
/// monitor thread and must not block.
public final class ProcessMonitor: Sendable {
  public struct ExitStatus: Sendable, Equatable {
    public var pid: Int32
    /// Valid when `signal == 0`.
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
  }

  let state = Locked(State())
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
  }

  /// Starts `executable args` with exactly `environment`. Returns the pid.
  public func spawn(executable: String, arguments: [String], environment: [String: String]) throws(SwiftrayError) -> Int32 {
    var out: [Int32] = [0, 0], err: [Int32] = [0, 0]
    guard sr_pipe_cloexec(&out) == 0, sr_pipe_cloexec(&err) == 0 else {
      throw SwiftrayError(.system, "cannot create pipes for a worker: \(String(cString: strerror(errno)))")
    }
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = sr_spawn(executable, argv, envp, lifelineRead, out[1], err[1], &pid)
    close(out[1]); close(err[1])
    guard rc == 0 else {
      close(out[0]); close(err[0])
      throw SwiftrayError(.system, "cannot start worker process \(executable): \(String(cString: strerror(rc)))")
    }
    _ = fcntl(out[0], F_SETFL, O_NONBLOCK)
    _ = fcntl(err[0], F_SETFL, O_NONBLOCK)
    let pidFD = sr_pidfd_open(pid)
    state.withLock { $0.children[pid] = Child(pid: pid, outFD: out[0], errFD: err[0], pidFD: pidFD) }
    wake()
    return pid
  }

  public func signal(_ pid: Int32, _ sig: Int32) {
    let known = state.withLock { $0.children[pid] != nil }
    if known { kill(pid, sig) }
  }

  public var livePids: [Int32] { state.withLock { Array($0.children.keys) } }

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

  /// Stops watching. Children are not signalled here (the NodeManager decides).
  public func shutdown() {
    state.withLock { $0.stopped = true }
    wake()
  }

  private func wake() {
    var b: UInt8 = 1
    _ = write(wakeWrite, &b, 1)
  }

  private func loop() {
    while true {
      let (children, watched, stopped) = state.withLock { ($0.children, $0.watched, $0.stopped) }
      if stopped { break }
      var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
      for c in children.values {
        if c.outFD >= 0 { fds.append(pollfd(fd: c.outFD, events: Int16(POLLIN), revents: 0)) }
        if c.errFD >= 0 { fds.append(pollfd(fd: c.errFD, events: Int16(POLLIN), revents: 0)) }
        if c.pidFD >= 0 { fds.append(pollfd(fd: c.pidFD, events: Int16(POLLIN), revents: 0)) }
      }
      let watchedFrom = fds.count
      let watchedPids = watched.filter { $0.value.pidFD >= 0 }.map(\.key)
      for pid in watchedPids { fds.append(pollfd(fd: watched[pid]!.pidFD, events: Int16(POLLIN), revents: 0)) }
      // Without pidfds, fall back to a periodic reap (children) or probe (watched).
      let timeout: Int32 = children.values.contains { $0.pidFD < 0 } ? 100 : 1000
      _ = poll(&fds, nfds_t(fds.count), timeout)
      if fds[0].revents != 0 {
        var buf = [UInt8](repeating: 0, count: 64)
        while read(wakeRead, &buf, 64) > 0 {}
      }
      for pid in children.keys { service(pid) }
      var gone = watchedPids.indices.filter { fds[watchedFrom + $0].revents != 0 }.map { watchedPids[$0] }
      gone += watched.filter { $0.value.pidFD < 0 && kill($0.key, 0) != 0 && errno == ESRCH }.map(\.key)
      let ended: [Watched] = state.withLock { s in gone.compactMap { s.watched.removeValue(forKey: $0) } }
      for w in ended {
        if w.pidFD >= 0 { close(w.pidFD) }
        w.onGone()
      }
    }
  }

  /// Drains a child's pipes and reaps it if it exited.
  private func service(_ pid: Int32) {
    guard var c = state.withLock({ $0.children[pid] }) else { return }
    drain(&c.outFD, &c.outBuf, pid: pid, isErr: false)
    drain(&c.errFD, &c.errBuf, pid: pid, isErr: true)
    var status: Int32 = 0
    let r = waitpid(pid, &status, WNOHANG)
    if r == pid {
      // Pick up what it wrote just before dying.
      drain(&c.outFD, &c.outBuf, pid: pid, isErr: false, final: true)
      drain(&c.errFD, &c.errBuf, pid: pid, isErr: true, final: true)
      for fd in [c.outFD, c.errFD, c.pidFD] where fd >= 0 { close(fd) }
      state.withLock { _ = $0.children.removeValue(forKey: pid) }
      let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
      onExit(ExitStatus(pid: pid, exitCode: signaled ? 0 : (status >> 8) & 0xff, signal: signaled ? status & 0x7f : 0))
      return
    }
    state.withLock { s in
      if s.children[pid] != nil { s.children[pid] = c }
    }
  }

  private func drain(_ fd: inout Int32, _ buf: inout [UInt8], pid: Int32, isErr: Bool, final: Bool = false) {
    guard fd >= 0 else { return }
    var chunk = [UInt8](repeating: 0, count: 65536)
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
