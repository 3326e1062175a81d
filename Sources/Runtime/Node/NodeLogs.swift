import Foundation
import NIOPosix

/// The names of a node's log files: `worker-<worker id>-<pid>.out|.err` for what a
/// worker printed (Ray's naming, without the job), `.1`, `.2`… for rotated ones, and the
/// daemon's own `daemon.log`. Pure.
public enum LogFileName {
  /// A name a peer may ask for: a plain file name (no folder, nothing hidden), short,
  /// of letters, digits, `.`, `-` and `_`.
  public static func isValid(_ name: String) -> Bool {
    guard !name.isEmpty, name.utf8.count <= 255, name.first != "." else { return false }
    return name.utf8.allSatisfy { c in
      (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2e || c == 0x2d || c == 0x5f
    }
  }

  public static func worker(_ id: WorkerID?, pid: Int32, isErr: Bool) -> String {
    "worker-\(id?.hex ?? "unregistered")-\(pid)." + (isErr ? "err" : "out")
  }

  /// The pid and stream of a worker's file (`worker-<id>-<pid>.out[.N]`), nil for others.
  public static func parse(_ name: String) -> (workerHex: String, pid: Int32, isErr: Bool, rotation: Int)? {
    var parts = name.split(separator: ".", omittingEmptySubsequences: false)
    var rotation = 0
    if parts.count == 3, let r = Int(parts[2]), r > 0 { rotation = r; parts.removeLast() }
    guard parts.count == 2, parts[1] == "out" || parts[1] == "err" else { return nil }
    let words = parts[0].split(separator: "-")
    guard words.count == 3, words[0] == "worker", let pid = Int32(words[2]), pid > 0 else { return nil }
    return (String(words[1]), pid, parts[1] == "err", rotation)
  }
}

/// Where the last lines of a file begin. Pure: `chunk` is the file's last bytes (the
/// whole file when `atStart`).
public enum LogTail {
  /// The offset in `chunk` where its last `lines` lines begin (a final line without a
  /// newline counts as one); nil when `chunk` holds fewer and does not start the file.
  public static func start(of chunk: [UInt8], lines: Int, atStart: Bool) -> Int? {
    guard lines > 0 else { return chunk.count }
    var end = chunk.count
    if end > 0, chunk[end - 1] == 10 { end -= 1 }  // the last line's own newline
    var seen = 0
    var i = end
    while i > 0 {
      i -= 1
      if chunk[i] == 10 {
        seen += 1
        if seen == lines { return i + 1 }
      }
    }
    return atStart ? 0 : nil
  }
}

/// One node's log files, read for `swiftray logs` and the dashboard.
///
/// Threading: every call does file-system calls and blocks: run it on a thread of your
/// own or through `NodeLogs.offLoop` (NIO's thread pool), never on an event loop or a
/// Swift concurrency thread directly.
public struct NodeLogs: Sendable {
  public let session: String
  public var dir: String { session + "/logs" }
  /// Most files one listing returns (the newest).
  public static let maxListed = 10_000
  /// Most bytes a tail reads back (lines beyond are cut at a line start).
  public static let maxTailBytes = 16 << 20
  /// Most bytes one chunk of a followed file carries.
  public static let maxChunk = 1 << 20

  public init(session: String) { self.session = session }

  public struct File: Sendable, Equatable {
    public var name: String
    public var size: Int64
    public var modifiedMs: Int64
  }

  /// The path of a file by its name; nil for a name that is not a plain log file name.
  public func path(_ name: String) -> String? {
    guard LogFileName.isValid(name) else { return nil }
    return name == "daemon.log" ? session + "/daemon.log" : dir + "/" + name
  }

  /// The node's log files, newest first, at most `maxListed`.
  public func list() -> [File] {
    var names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    names.append("daemon.log")
    var files: [File] = []
    for n in names where LogFileName.isValid(n) {
      guard let p = path(n) else { continue }
      var st = stat()
      guard lstat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
      files.append(File(name: n, size: Int64(st.st_size), modifiedMs: Int64(st.st_mtim.tv_sec) * 1000 + Int64(st.st_mtim.tv_nsec) / 1_000_000))
    }
    files.sort { ($0.modifiedMs, $0.name) > ($1.modifiedMs, $1.name) }
    return Array(files.prefix(Self.maxListed))
  }

  public enum ReadError: Error, Equatable { case missing(String) }

  /// The last `lines` lines of file `name` (at most `maxTailBytes` of them; `lines` ≤ 0:
  /// from the start, within the same bound) and the offset where the file ended.
  public func tail(_ name: String, lines: Int) throws(ReadError) -> (data: [UInt8], end: Int64) {
    let (fd, size) = try openRegular(name)
    defer { close(fd) }
    if lines <= 0 {
      let data = Self.read(fd, count: Int(min(size, Int64(Self.maxTailBytes))), at: 0)
      return (data, Int64(data.count))
    }
    // Backwards in blocks until enough newlines (or the bound, or the start); joined
    // once at the end, not copied again with each block.
    var blocks: [[UInt8]] = []
    var newlines = 0, bytes = 0
    var from = size
    let block: Int64 = 64 * 1024
    while from > 0 && bytes < Self.maxTailBytes {
      let n = Int(min(block, from))
      from -= Int64(n)
      let buf = Self.read(fd, count: n, at: from)
      guard buf.count == n else { break }
      blocks.append(buf)
      bytes += n
      newlines += buf.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
      // One newline more than lines asked: the last line's own may be among them.
      guard newlines > lines || from == 0 else { continue }
      let chunk = Array(blocks.reversed().joined())
      if let s = LogTail.start(of: chunk, lines: lines, atStart: from == 0) { return (Array(chunk[s...]), size) }
    }
    let chunk = Array(blocks.reversed().joined())
    // The bound: start at the first whole line of what was read.
    let s = from == 0 ? 0 : (chunk.firstIndex(of: 10).map { $0 + 1 } ?? 0)
    return (Array(chunk[s...]), size)
  }

  /// What file `name` gained past `offset` (at most `maxChunk`), and where it now ends.
  /// A file shorter than `offset` was rotated or truncated: read it from its start.
  public func read(_ name: String, from offset: Int64) throws(ReadError) -> (data: [UInt8], end: Int64) {
    let (fd, size) = try openRegular(name)
    defer { close(fd) }
    let start = size < offset || offset < 0 ? 0 : offset
    let data = Self.read(fd, count: Int(min(size - start, Int64(Self.maxChunk))), at: start)
    return (data, start + Int64(data.count))
  }

  /// File `name` opened for reading (the caller closes it) and its size: a regular file
  /// only (never a link, and a FIFO never blocks the open).
  func openRegular(_ name: String) throws(ReadError) -> (fd: Int32, size: Int64) {
    guard let p = path(name) else { throw .missing(name) }
    let fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { throw .missing(name) }
    var st = stat()
    guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
      close(fd)
      throw .missing(name)
    }
    return (fd, Int64(st.st_size))
  }

  /// Up to `count` bytes at `offset` (fewer at the end of the file, none on an error).
  static func read(_ fd: Int32, count: Int, at offset: Int64) -> [UInt8] {
    guard count > 0 else { return [] }
    var buf = [UInt8](repeating: 0, count: count)
    let got = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
    return Array(buf.prefix(max(0, got)))
  }

  /// Runs `body` on NIO's blocking-I/O thread pool: file reads off the caller's thread.
  public static func offLoop<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await NIOThreadPool.singleton.runIfActive(body)
  }
}

/// Writes what workers print to their log files under `<session>/logs`, rotating a file
/// past `maxBytes` (keeping `backups` old ones).
///
/// Threading: called by the ProcessMonitor's thread (which drains the pipes; blocking
/// writes belong there) and by a shutdown; the table of open files is under a lock,
/// and a file is written by one thread at a time (the monitor's).
public final class WorkerLogWriter: Sendable {
  struct Open { var fd: Int32; var size: Int }
  let dir: String
  let maxBytes: Int
  let backups: Int
  private let files = Locked([String: Open]())
  private let madeDir = Locked(false)
  /// Most files kept open at once (a node with more live workers closes the oldest; it
  /// is reopened for append on its next line).
  static let maxOpen = 4096

  public init(session: String, maxBytes: Int, backups: Int) {
    dir = session + "/logs"; self.maxBytes = maxBytes; self.backups = backups
  }

  /// Appends `lines` (each ends with a newline) to file `name`.
  public func append(_ name: String, _ lines: [String]) {
    guard LogFileName.isValid(name) else { return }
    var bytes: [UInt8] = []
    for l in lines { bytes.append(contentsOf: l.utf8); bytes.append(10) }
    guard var f = files.withLock({ $0[name] }) ?? open(name) else { return }
    if f.size > 0, f.size + bytes.count > maxBytes {
      close(f.fd)
      rotate(name)
      guard let fresh = open(name) else { _ = files.withLock { $0.removeValue(forKey: name) }; return }
      f = fresh
    }
    let wrote = bytes.withUnsafeBytes { b in write(f.fd, b.baseAddress, b.count) }
    if wrote > 0 { f.size += wrote }
    let evicted: [Int32] = files.withLock { t in
      t[name] = f
      guard t.count > Self.maxOpen else { return [] }
      let gone = t.keys.filter { $0 != name }.prefix(t.count - Self.maxOpen)
      return gone.compactMap { t.removeValue(forKey: $0)?.fd }
    }
    for fd in evicted { close(fd) }
  }

  /// A worker ended: its files are closed (they stay on disk).
  public func closeFiles(_ names: [String]) {
    let fds = files.withLock { t in names.compactMap { t.removeValue(forKey: $0)?.fd } }
    for fd in fds { close(fd) }
  }

  public func closeAll() {
    let fds = files.withLock { t in defer { t.removeAll() }; return t.values.map(\.fd) }
    for fd in fds { close(fd) }
  }

  private func open(_ name: String) -> Open? {
    if !madeDir.withLock({ $0 }) {
      mkdir(dir, 0o700)
      madeDir.withLock { $0 = true }
    }
    let fd = Foundation.open(dir + "/" + name, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return nil }
    var st = stat()
    let size = fstat(fd, &st) == 0 ? Int(st.st_size) : 0
    return Open(fd: fd, size: size)
  }

  /// `name` → `name.1` → … → `name.<backups>` (the oldest dropped).
  private func rotate(_ name: String) {
    let base = dir + "/" + name
    guard backups > 0 else { unlink(base); return }
    unlink(base + ".\(backups)")
    for k in stride(from: backups - 1, through: 1, by: -1) { rename(base + ".\(k)", base + ".\(k + 1)") }
    rename(base, base + ".1")
  }
}
