import CSwiftray
import Foundation

/// A fork server: a process that started the worker's interpreter and imported its
/// modules once, then forks a worker for each request of its `ProcessMonitor`. A
/// worker then costs a `fork` (a few milliseconds, pages shared copy-on-write) instead
/// of starting an interpreter and importing (~200 ms of CPU here).
///
/// Two sequenced-packet socket pairs join it to its monitor, inherited as its fds 3
/// and 4 (no listener, so nothing to authenticate; the monitor is its parent):
/// - fd 3, requests: the monitor sends a child's whole environment with the child's
///   stdout and stderr pipes and a pipe for the answer (SCM_RIGHTS); the server writes
///   the child's pid (or -errno) into that pipe. Each request has its own answer, so
///   requests from many threads need no lock around a round trip.
/// - fd 4, notices: the server says it is ready, and reports each child's wait status
///   (the children are its own, so only it can reap them).
/// Its stdin is the node's lifeline, like a worker's: when the node's process dies it
/// reads EOF and exits, and its children read EOF on theirs.
///
/// Threading: `serve` runs on the server's only thread; fork needs it to be the only
/// one (it checks, and serves nothing otherwise).
public enum ForkServer {
  public static let requestFD: Int32 = 3
  public static let noticeFD: Int32 = 4
  /// The bound of a request (an environment) the server reads.
  public static let maxRequestBytes = 256 << 10
  public static let noticeBytes = 12

  /// The only variables a node sets differently for each worker (its id, and its
  /// runtime environment's context, which the worker applies itself); any other difference
  /// from the server's own environment means the worker is spawned instead (its
  /// interpreter would have started differently).
  public static let perWorkerKeys: Set<String> = ["SWIFTRAY_WORKER_ID", "SWIFTRAY_RUNTIME_ENV_CONTEXT"]

  public enum Notice: Equatable, Sendable {
    case ready(pid: Int32)
    case exited(pid: Int32, status: Int32)
  }

  // MARK: wire (pure)

  /// `KEY=VALUE\0` for each variable, keys sorted (one environment, one encoding).
  public static func encodeRequest(environment: [String: String]) -> [UInt8] {
    var out: [UInt8] = []
    for k in environment.keys.sorted() {
      out.append(contentsOf: Array(k.utf8)); out.append(UInt8(ascii: "="))
      out.append(contentsOf: Array(environment[k]!.utf8)); out.append(0)
    }
    return out
  }

  /// The environment of a request; nil for one that is not well formed (no `=` in an
  /// entry, an empty key, a NUL-less tail, a repeated key, too large).
  public static func decodeRequest(_ bytes: ArraySlice<UInt8>) -> [String: String]? {
    guard bytes.count <= maxRequestBytes, bytes.isEmpty || bytes.last == 0 else { return nil }
    var env: [String: String] = [:]
    if bytes.isEmpty { return env }
    for entry in bytes.dropLast().split(separator: 0, omittingEmptySubsequences: false) {
      guard let eq = entry.firstIndex(of: UInt8(ascii: "=")), eq > entry.startIndex else { return nil }
      let key = String(decoding: entry[..<eq], as: UTF8.self)
      guard env[key] == nil else { return nil }
      env[key] = String(decoding: entry[(eq + 1)...], as: UTF8.self)
    }
    return env
  }

  public static func encode(_ notice: Notice) -> [UInt8] {
    let (kind, pid, status): (UInt32, Int32, Int32)
    switch notice {
    case .ready(let p): (kind, pid, status) = (1, p, 0)
    case .exited(let p, let s): (kind, pid, status) = (2, p, s)
    }
    var out: [UInt8] = []
    out.reserveCapacity(noticeBytes)
    for v in [kind, UInt32(bitPattern: pid), UInt32(bitPattern: status)] { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    return out
  }

  /// A notice; nil for anything else (a wrong size, an unknown kind, a pid ≤ 0).
  public static func decodeNotice(_ bytes: ArraySlice<UInt8>) -> Notice? {
    guard bytes.count == noticeBytes else { return nil }
    let pid = Int32(bitPattern: littleEndianWord(bytes, at: 1)), status = Int32(bitPattern: littleEndianWord(bytes, at: 2))
    guard pid > 0 else { return nil }
    switch littleEndianWord(bytes, at: 0) {
    case 1: return .ready(pid: pid)
    case 2: return .exited(pid: pid, status: status)
    default: return nil
    }
  }

  /// The answer to a request: the child's pid, or -errno.
  public static func encodeReply(_ value: Int32) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
  }

  public static func decodeReply(_ bytes: ArraySlice<UInt8>) -> Int32? {
    guard bytes.count == 4 else { return nil }
    return Int32(bitPattern: littleEndianWord(bytes, at: 0))
  }

  /// The `index`th 32-bit little-endian word of `bytes` (the caller checked the size).
  static func littleEndianWord(_ bytes: ArraySlice<UInt8>, at index: Int) -> UInt32 {
    var v: UInt32 = 0
    for b in bytes.dropFirst(index * 4).prefix(4).reversed() { v = v << 8 | UInt32(b) }
    return v
  }

  // MARK: the server's loop

  /// How the server forks: `fork(stdout, stderr, environment)` returns the child's
  /// pid (or -errno) in the server; in the child it runs the worker, with
  /// `environment` and those pipes, and never returns.
  public struct Hooks {
    public var fork: (_ stdout: Int32, _ stderr: Int32, _ environment: [String: String]) -> Int32
    public init(fork: @escaping (_ stdout: Int32, _ stderr: Int32, _ environment: [String: String]) -> Int32) {
      self.fork = fork
    }
  }

  /// Serves requests until the monitor or the node goes away, then returns (the
  /// server exits). Forked children never return from here (see `Hooks`).
  public static func serve(hooks: Hooks) {
    let threads = sr_thread_count()
    guard threads == 1 else {
      // Forking now would copy locks held by threads that do not exist in the child.
      FileHandle.standardError.write(Data("swiftray fork server: \(threads) threads alive; workers are spawned instead\n".utf8))
      return
    }
    let sigchld = sr_sigchld_fd()
    guard sigchld >= 0, send(.ready(pid: getpid())) else { return }
    var buf = [UInt8](repeating: 0, count: maxRequestBytes + 1)
    var fds = [Int32](repeating: -1, count: Int(SR_MAX_PASSED_FDS))
    while true {
      var polled = [pollfd(fd: requestFD, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: sigchld, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: 0, events: Int16(POLLIN), revents: 0)]
      if poll(&polled, 3, -1) < 0 { if errno == EINTR { continue }; return }
      // Nothing is ever written to the lifeline: readable means its writer is gone.
      if polled[2].revents != 0 { return }
      if polled[1].revents != 0 {
        var info = [UInt8](repeating: 0, count: 128)
        while read(sigchld, &info, info.count) > 0 {}
        var status: Int32 = 0
        while true {
          let pid = sr_wait_any(&status)
          if pid <= 0 { break }
          guard send(.exited(pid: pid, status: status)) else { return }
        }
      }
      guard polled[0].revents != 0 else { continue }
      var count: Int32 = 0
      let n = buf.withUnsafeMutableBytes { b in
        fds.withUnsafeMutableBufferPointer { sr_recv_fds(requestFD, b.baseAddress, b.count, $0.baseAddress, Int32(SR_MAX_PASSED_FDS), &count) }
      }
      let received = Array(fds.prefix(Int(max(0, count))))
      if n == 0 { return }  // the monitor is gone
      if n < 0 && errno != EMSGSIZE { received.forEach { close($0) }; return }
      guard n > 0, received.count == 3, let env = decodeRequest(buf[0..<n]) else {
        if received.count == 3 { answer(received[2], -EINVAL) }
        received.forEach { close($0) }
        continue
      }
      let pid = hooks.fork(received[0], received[1], env)
      answer(received[2], pid)
      received.forEach { close($0) }
    }
  }

  private static func send(_ notice: Notice) -> Bool {
    let bytes = encode(notice)
    return sr_send_fds(noticeFD, bytes, bytes.count, nil, 0) == bytes.count
  }

  /// 4 bytes into an empty pipe never block (nor tear: below PIPE_BUF).
  private static func answer(_ fd: Int32, _ value: Int32) {
    let bytes = encodeReply(value)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, 4) }
  }
}
