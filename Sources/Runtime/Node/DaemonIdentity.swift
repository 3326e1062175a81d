import Foundation

/// Who a node daemon is, recorded in its session at start (`daemon.identity`) so that
/// `swiftray stop` signals a pid only while it is still that daemon: same start time
/// (a recycled pid has another), same executable, this user's process.
///
/// Threading: a value; reading /proc is the only work.
public struct DaemonIdentity: Equatable, Sendable {
  public var pid: Int32
  /// Field 22 of /proc/PID/stat (clock ticks since boot): differs for a recycled pid.
  public var startTime: UInt64
  public var executable: String

  public static let fileName = "daemon.identity"

  /// The running process `pid`'s identity, when it is this user's; nil otherwise.
  public static func of(pid: Int32) -> DaemonIdentity? {
    guard pid > 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 19, let start = UInt64(fields[19]) else { return nil }
    guard ownedByMe("/proc/\(pid)"),
      let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")
    else { return nil }
    return DaemonIdentity(pid: pid, startTime: start, executable: exe)
  }

  static func ownedByMe(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0 && st.st_uid == getuid()
  }

  /// Writes this process's identity into `session` (0600).
  public static func record(in session: String) {
    guard let me = of(pid: getpid()) else { return }
    let path = session + "/" + fileName
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array("\(me.pid) \(me.startTime)\n\(me.executable)\n".utf8)
    _ = write(fd, bytes, bytes.count)
  }

  /// What `session` recorded (bounded read); nil when missing or malformed.
  public static func recorded(in session: String) -> DaemonIdentity? {
    guard let h = FileHandle(forReadingAtPath: session + "/" + fileName) else { return nil }
    defer { try? h.close() }
    guard let data = try? h.read(upToCount: 8192) else { return nil }
    let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
    guard lines.count >= 2 else { return nil }
    let head = lines[0].split(separator: " ")
    guard head.count == 2, let pid = Int32(head[0]), pid > 0, let start = UInt64(head[1]) else { return nil }
    return DaemonIdentity(pid: pid, startTime: start, executable: String(lines[1]))
  }

  /// The pid to signal for the daemon of `session`: only while the recorded identity
  /// matches the live process. Else nil, and why.
  public static func verifiedPid(session: String) -> (pid: Int32?, why: String?) {
    guard let rec = recorded(in: session) else { return (nil, "it recorded no identity (\(fileName))") }
    guard let live = of(pid: rec.pid) else { return (nil, "pid \(rec.pid) is not running as this user") }
    guard live == rec else {
      return (nil, "pid \(rec.pid) is now another program (\(live.executable), started at \(live.startTime))")
    }
    return (rec.pid, nil)
  }
}
