import CSwiftray
import Foundation
import RuntimeProto
import Synchronization

/// Wakes a thread blocked in `poll` (an eventfd). Threading: `signal` from any thread.
public final class Wakeup: Sendable {
  public let fd: Int32 = sr_eventfd()
  public init() {}
  public func signal() {
    var one: UInt64 = 1
    _ = Glibc.write(fd, &one, 8)
  }
  /// Clears the signal (after `poll` saw it).
  func reset() {
    var v: UInt64 = 0
    _ = Glibc.read(fd, &v, 8)
  }
  deinit { Glibc.close(fd) }

  /// The calling thread's own wakeup, made on its first use and kept for the thread's
  /// life (each holder keeps its own reference, so the eventfd outlives the thread as
  /// long as someone may still signal it). For waits that loop on their condition: a
  /// signal meant for an earlier wait of the same thread may wake a later one once.
  /// Saves an eventfd's creation and close on every blocking `get`.
  /// Threading: returns the caller's thread's wakeup.
  public static func forThisThread() -> Wakeup {
    let key = threadKey
    if let p = pthread_getspecific(key) { return Unmanaged<Wakeup>.fromOpaque(p).takeUnretainedValue() }
    let w = Wakeup()
    pthread_setspecific(key, Unmanaged.passRetained(w).toOpaque())
    return w
  }

  /// The thread-specific slot of `forThisThread`; its destructor drops the thread's
  /// reference when the thread ends.
  private static let threadKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key) { p in
      if let p { Unmanaged<Wakeup>.fromOpaque(p).release() }
    }
    return key
  }()
}

/// A worker's lane listener and its lanes (`Lane`): polled by the worker's task thread
/// itself while it waits for its next task, so a task pushed by lane wakes exactly the
/// thread that runs it.
///
/// A lane must open with the cluster's preamble within the handshake time; until then
/// nothing it sends is decoded. Lanes are capped (`max_connections_per_listener`), a
/// frame beyond `max_data_plane_frame_bytes` closes its lane; the executor serves
/// `pushTask` and `cancelTask` (anything else gets an error reply).
///
/// Threading: `poll` from the worker's task thread only (one caller at a time: the
/// lanes live in that thread's hands); `close` from any thread; replies (through the
/// responders it hands out) from any thread.
public final class LaneServer: @unchecked Sendable {
  struct Conn {
    let socket: LaneSocket
    var reader: FrameReader
    var authed = false
    /// When an unauthenticated lane is closed (monotonic nanoseconds).
    let handshakeDeadline: UInt64
    /// Whether `readiness` watches this lane for writability too.
    var watchingWrites = false
  }

  let path: String
  let listenFD: Int32
  let auth: ClusterAuth
  let wake: Wakeup
  /// The task thread's only.
  private var conns: [Int32: Conn] = [:]
  private var buffer: [pollfd] = []
  private let closing = Atomic<Bool>(false)
  /// An epoll set of the wake-up, the listener and every lane: readable when a `poll`
  /// has something to serve. For a thread that waits on its own event loop instead of
  /// in `poll` (an async actor's main thread: asyncio watches this one fd).
  public let readiness: Int32 = sr_epoll_create()

  public init(path: String, auth: ClusterAuth, wake: Wakeup) throws(SwiftrayError) {
    self.path = path
    self.auth = auth
    self.wake = wake
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SwiftrayError(.system, "cannot make a lane socket: \(String(cString: strerror(errno)))") }
    unlink(path)
    guard Lane.withSocketAddress(path, { bind(fd, $0, $1) }) == 0, listen(fd, 64) == 0 else {
      let why = String(cString: strerror(errno))
      Glibc.close(fd)
      throw SwiftrayError(.system, "cannot listen on \(path): \(why)")
    }
    chmod(path, 0o600)  // this user's processes only, as the data-plane socket
    listenFD = fd
    _ = sr_epoll_set(readiness, wake.fd, Int32(SR_LANE_IN), 1)
    _ = sr_epoll_set(readiness, fd, Int32(SR_LANE_IN), 1)
  }

  deinit { Glibc.close(readiness) }

  /// Closes the listener now, and every lane at the next `poll` (their owners see them
  /// close then; a worker's exit closes them in any case).
  public func close() {
    unlink(path)
    shutdown(listenFD, Int32(SHUT_RDWR))
    closing.store(true, ordering: .releasing)
    wake.signal()
  }

  /// Waits up to `timeoutNanos` for lanes or `wake` (or `also`), then serves what
  /// arrived: lanes accepted, preambles checked, queued replies sent, and each frame
  /// handed to `handle` (on this thread). Returns early when a wakeup was signalled.
  public func poll(timeoutNanos: UInt64, also: Wakeup? = nil, handle: (Swiftray_DataFrame, DataPlaneResponder) -> Void) {
    if closing.load(ordering: .acquiring) {
      for (fd, c) in conns { drop(fd, c) }
      _ = sr_epoll_del(readiness, listenFD)  // shut down, it would read as ready for good
      var p = pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0)
      if Glibc.poll(&p, 1, Int32(clamping: (timeoutNanos + 999_999) / 1_000_000)) > 0 { wake.reset() }
      return
    }
    let now = DispatchTime.now().uptimeNanoseconds
    var timeout = timeoutNanos
    buffer.removeAll(keepingCapacity: true)
    buffer.append(pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0))
    buffer.append(pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0))
    buffer.append(pollfd(fd: also?.fd ?? -1, events: Int16(POLLIN), revents: 0))  // fd -1: ignored
    var toggled: [(fd: Int32, writes: Bool)] = []  // rare: allocates only when used
    for (fd, c) in conns {
      var events = Int16(POLLIN)
      let writes = c.socket.wantsWrite
      if writes { events |= Int16(POLLOUT) }
      if writes != c.watchingWrites { toggled.append((fd, writes)) }
      buffer.append(pollfd(fd: fd, events: events, revents: 0))
      if !c.authed { timeout = min(timeout, c.handshakeDeadline > now ? c.handshakeDeadline - now : 0) }
    }
    for t in toggled {
      _ = sr_epoll_set(readiness, t.fd, Int32(SR_LANE_IN) | (t.writes ? Int32(SR_LANE_OUT) : 0), 0)
      conns[t.fd]?.watchingWrites = t.writes
    }
    let ms = Int32(clamping: (timeout + 999_999) / 1_000_000)
    let n = buffer.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), ms) }
    if n > 0 {
      if buffer[0].revents != 0 { wake.reset() }
      if buffer[1].revents != 0 { accept(now: DispatchTime.now().uptimeNanoseconds) }
      if buffer[2].revents != 0 { also?.reset() }
      for p in buffer.dropFirst(3) where p.revents != 0 {
        serve(p.fd, writable: p.revents & Int16(POLLOUT) != 0, handle: handle)
      }
    }
    expireHandshakes(now: DispatchTime.now().uptimeNanoseconds)
  }

  private func accept(now: UInt64) {
    let cap = NetworkLimits.current.maxConnectionsPerListener
    let deadline = now + UInt64(max(NetworkLimits.current.handshakeTimeoutMs, 1)) * 1_000_000
    while true {
      let fd = sr_accept_nonblocking(listenFD)
      guard fd >= 0 else { if errno == EINTR { continue }; return }
      guard conns.count < cap else { Glibc.close(fd); continue }
      conns[fd] = Conn(socket: LaneSocket(fd: fd),
                       reader: FrameReader(max: AuthGate.magic.count + ClusterAuth.maximumLength),
                       handshakeDeadline: deadline)
      _ = sr_epoll_set(readiness, fd, Int32(SR_LANE_IN), 1)
    }
  }

  private func serve(_ fd: Int32, writable: Bool, handle: (Swiftray_DataFrame, DataPlaneResponder) -> Void) {
    // Taken out while served, so reading into its buffer copies nothing (copy-on-write).
    guard var c = conns.removeValue(forKey: fd) else { return }
    if writable { c.socket.flush() }
    let r = c.socket.read(into: &c.reader)
    var open = r != .closed
    frames: while open {
      switch c.reader.next() {
      case .incomplete: break frames
      case .tooLarge: open = false
      case .frame(let bytes):
        if !c.authed {
          guard bytes.count >= AuthGate.magic.count, Array(bytes.prefix(AuthGate.magic.count)) == AuthGate.magic,
                auth.accepts(bytes.dropFirst(AuthGate.magic.count)) else { open = false; break }
          c.authed = true
          c.reader.max = NetworkLimits.current.maxFrameBytes
          continue
        }
        guard let frame = Lane.decode(bytes) else { open = false; break }
        let responder = DataPlaneResponder(lane: c.socket, id: frame.id, wake: wake)
        if case .keepAlive? = frame.body { responder.respond(.keepAlive(.init())) } else { handle(frame, responder) }
      }
    }
    if open {
      conns[fd] = c
    } else {
      drop(fd, c)
    }
  }

  private func expireHandshakes(now: UInt64) {
    for (fd, c) in conns where !c.authed && c.handshakeDeadline <= now { drop(fd, c) }
  }

  private func drop(_ fd: Int32, _ c: Conn) {
    conns[fd] = nil
    _ = sr_epoll_del(readiness, fd)
    c.socket.close()
  }
}
