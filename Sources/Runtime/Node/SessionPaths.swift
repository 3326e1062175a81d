import Foundation

/// Where a session keeps its Unix sockets. `<session>/sockets` is a directory when the
/// socket paths under it fit the kernel's limit (`sockaddr_un`: 108 bytes with the NUL;
/// we keep to 103), else a link to a short directory of its own under
/// `/tmp/swiftray-<uid>/`, so any `--temp-dir` works however long (Ray refuses long
/// ones, and its users hate it).
///
/// Threading: any thread (file system calls only).
public enum SessionPaths {
  /// The longest path a socket may have.
  public static let maxSocketPath = 103
  /// The longest socket name a session uses (a worker's: `w-<16 hex>.sock`).
  static let longestSocketName = "w-0123456789abcdef.sock"
  /// Where the short socket directories live.
  static var shortRoot: String { "/tmp/swiftray-\(getuid())" }

  /// Where sessions live: `<tempDir>/swiftray` when one is given, else this user's own
  /// `$TMPDIR/swiftray-<uid>` (never a folder shared by all users).
  public static func sessionsRoot(tempDir: String? = nil) -> String {
    if let tempDir { return tempDir + "/swiftray" }
    return NSTemporaryDirectory() + "swiftray-\(getuid())"
  }

  /// This user's private folder for swiftray's own files (`/tmp/swiftray-<uid>`, 0700):
  /// made if needed, and refused when it belongs to someone else or others may write it.
  public static func privateRoot() throws(SwiftrayError) -> String {
    try makePrivate(shortRoot)
  }

  /// Makes `dir` (and its parents) if needed, 0700; refused when it is a link, belongs
  /// to someone else, or others may write or read it.
  @discardableResult
  public static func makePrivate(_ dir: String) throws(SwiftrayError) -> String {
    let parent = (dir as NSString).deletingLastPathComponent
    if !parent.isEmpty, !FileManager.default.fileExists(atPath: parent) {
      try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
    }
    if mkdir(dir, 0o700) != 0 && errno != EEXIST {
      throw SwiftrayError(.system, "cannot create \(dir): \(String(cString: strerror(errno)))")
    }
    var st = stat()
    guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == getuid(), st.st_mode & 0o077 == 0 else {
      throw SwiftrayError(.system, "\(dir) is not a private folder of this user (owner, type or permissions differ): "
        + "remove it and start again")
    }
    return dir
  }

  /// The directory holding the session's sockets (the link's target when it is one).
  public static func socketDir(_ session: String) -> String {
    let dir = session + "/sockets"
    if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: dir) { return target }
    return dir
  }

  /// The path of socket `name` (e.g. "raylet.sock") of the session.
  public static func socket(_ session: String, _ name: String) -> String { socketDir(session) + "/" + name }

  /// Makes `<session>/sockets` (the session directory must exist): a directory when its
  /// paths fit, else a link to a fresh short directory, private to this user.
  public static func makeSocketDir(_ session: String) throws {
    let fm = FileManager.default
    let dir = session + "/sockets"
    if (dir + "/" + longestSocketName).utf8.count <= maxSocketPath {
      try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
      return
    }
    let short = try privateRoot() + "/" + String(UInt64.random(in: 0 ... .max) & 0xffff_ffff_ffff, radix: 16)
    try fm.createDirectory(atPath: short, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
    // The way back, for an address given as one of these sockets ("unix:.../gcs.sock").
    try session.write(toFile: short + "/session", atomically: true, encoding: .utf8)
    try fm.createSymbolicLink(atPath: dir, withDestinationPath: short)
  }

  /// Removes the session directory and, when its sockets lived elsewhere, that directory.
  public static func removeSession(_ session: String) {
    let fm = FileManager.default
    if let target = try? fm.destinationOfSymbolicLink(atPath: session + "/sockets"), target.hasPrefix(shortRoot + "/") {
      try? fm.removeItem(atPath: target)
    }
    try? fm.removeItem(atPath: session)
  }
}
