import Foundation

/// The cluster's shared secret (DESIGN §11) and how a connection proves it: gRPC calls
/// carry `authorization: Bearer <token>`, data-plane connections open with an
/// `AuthPreamble`. Every listener checks it before it decodes anything; a value of this
/// type is required wherever a server or a client is made, so none can be forgotten.
///
/// Threading: an immutable value; any thread.
public struct ClusterAuth: Sendable, Equatable, CustomStringConvertible {
  /// The token's bytes; nil when authentication is disabled (`SWIFTRAY_AUTH_MODE=disabled`).
  public let token: [UInt8]?
  /// Where it came from, for error messages (never the token itself).
  public let source: String
  /// Mutual TLS for TCP connections (`SWIFTRAY_USE_TLS=1`); nil when off.
  public let tls: ClusterTLS?

  /// No authentication: every peer is accepted. Only by explicit choice.
  public static let disabled = ClusterAuth(token: nil, source: "authentication disabled")

  public static let minimumLength = 16
  public static let maximumLength = 1024

  /// A token given as text (hex from `generate`, or anything a user chose), checked.
  public init(token text: String, source: String) throws(SwiftrayError) {
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    let bytes = Array(trimmed.utf8)
    guard bytes.count >= Self.minimumLength, bytes.count <= Self.maximumLength,
      bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7f })
    else {
      throw SwiftrayError(.invalidArgument, "The cluster token from \(source) is not valid: it must be "
        + "\(Self.minimumLength)-\(Self.maximumLength) printable characters without spaces "
        + "(`swiftray get-auth-token --generate` makes one).")
    }
    self.init(token: bytes, source: source)
  }

  init(token: [UInt8]?, source: String, tls: ClusterTLS? = nil) {
    self.token = token
    self.source = source
    self.tls = tls
  }

  /// This authentication with `tls` for TCP connections.
  public func with(tls: ClusterTLS?) -> ClusterAuth { ClusterAuth(token: token, source: source, tls: tls) }

  public var isEnabled: Bool { token != nil }
  public var tokenText: String? { token.map { String(decoding: $0, as: UTF8.self) } }
  public var description: String {
    (isEnabled ? "token from \(source)" : source) + (tls != nil ? ", mutual TLS" : "")
  }

  /// The gRPC `authorization` metadata value.
  var bearer: String? { tokenText.map { "Bearer " + $0 } }

  /// True when `presented` is this cluster's token (always, when disabled). Takes the
  /// same time whatever the bytes, so a peer learns nothing from timing.
  public func accepts(_ presented: some Collection<UInt8>) -> Bool {
    guard let token else { return true }
    guard presented.count == token.count else { return false }
    var diff: UInt8 = 0
    for (a, b) in zip(token, presented) { diff |= a ^ b }
    return diff == 0
  }

  /// `accepts` for an `authorization` header value.
  func accepts(bearer value: String?) -> Bool {
    guard isEnabled else { return true }
    guard let value, value.hasPrefix("Bearer ") else { return false }
    return accepts(Array(value.utf8.dropFirst(7)))
  }

  // MARK: where tokens come from

  /// A fresh 256-bit token from the OS's CSPRNG (getrandom), as 64 hex digits.
  public static func generate() -> String {
    var rng = SystemRandomNumberGenerator()
    return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0 ... 255, using: &rng)) }.joined()
  }

  /// `~/.swiftray/auth_token`.
  public static func defaultPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
    let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
    return home + "/.swiftray/auth_token"
  }

  /// True when `SWIFTRAY_AUTH_MODE` (or Ray's `RAY_AUTH_MODE`) is `disabled`.
  public static func disabledByEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
    for key in ["SWIFTRAY_AUTH_MODE", "RAY_AUTH_MODE"] {
      if let v = environment[key]?.lowercased(), !v.isEmpty { return v == "disabled" }
    }
    return false
  }

  /// The token this process uses, looked for in order: `SWIFTRAY_AUTH_TOKEN` (or
  /// `RAY_AUTH_TOKEN`), the file `SWIFTRAY_AUTH_TOKEN_PATH` (or `RAY_AUTH_TOKEN_PATH`)
  /// names, `session`'s own token file (a local cluster's, when joining one on this
  /// machine), `~/.swiftray/auth_token`. nil when there is none; `.disabled` when the
  /// environment turns authentication off. Either way with the TLS the environment
  /// asks for (`ClusterTLS.fromEnvironment`).
  public static func resolve(environment: [String: String] = ProcessInfo.processInfo.environment,
                             session: String? = nil, defaultFile: Bool = true) throws(SwiftrayError) -> ClusterAuth? {
    guard let found = try resolveToken(environment: environment, session: session, defaultFile: defaultFile) else { return nil }
    return found.with(tls: try ClusterTLS.fromEnvironment(environment))
  }

  static func resolveToken(environment: [String: String], session: String?, defaultFile: Bool) throws(SwiftrayError) -> ClusterAuth? {
    if disabledByEnvironment(environment) { return .disabled }
    for key in ["SWIFTRAY_AUTH_TOKEN", "RAY_AUTH_TOKEN"] {
      if let t = environment[key], !t.isEmpty { return try ClusterAuth(token: t, source: "$\(key)") }
    }
    for key in ["SWIFTRAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN_PATH"] {
      if let path = environment[key], !path.isEmpty {
        guard let text = readTokenFile(path) else {
          throw SwiftrayError(.invalidArgument, "$\(key) names \(path), which cannot be read.")
        }
        return try ClusterAuth(token: text, source: path)
      }
    }
    if let session, let text = readTokenFile(sessionTokenPath(session)) {
      return try ClusterAuth(token: text, source: sessionTokenPath(session))
    }
    let home = defaultPath(environment: environment)
    if defaultFile, let text = readTokenFile(home) { return try ClusterAuth(token: text, source: home) }
    return nil
  }

  /// What the environment alone says: `.disabled`, a token from `SWIFTRAY_AUTH_TOKEN`
  /// (or `RAY_AUTH_TOKEN`) or from the file `SWIFTRAY_AUTH_TOKEN_PATH` names; nil when it
  /// says nothing.
  public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(SwiftrayError) -> ClusterAuth? {
    try resolve(environment: environment, session: nil, defaultFile: false)
  }

  /// `resolve`, or an error that says where the token is looked for and what to do.
  public static func required(for what: String, environment: [String: String] = ProcessInfo.processInfo.environment,
                              session: String? = nil) throws(SwiftrayError) -> ClusterAuth {
    if let auth = try resolve(environment: environment, session: session) { return auth }
    throw SwiftrayError(.authentication, "No cluster token was found to \(what). " + whereToLook(environment))
  }

  /// Where tokens are looked for, and how to get the head's here.
  public static func whereToLook(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
    "swiftray looks in $SWIFTRAY_AUTH_TOKEN, then the file $SWIFTRAY_AUTH_TOKEN_PATH names, then "
      + "\(defaultPath(environment: environment)) (Ray's RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH work too). "
      + "Copy the head's token there: run `swiftray get-auth-token` on the head machine."
  }

  /// A session's own token file (a local `init()` cluster's).
  public static func sessionTokenPath(_ session: String) -> String { session + "/auth_token" }

  /// Reads a token file (bounded; a file others may write is refused).
  static func readTokenFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_mode & 0o022 == 0,
      st.st_size <= Int64(maximumLength + 16)
    else { return nil }
    var buf = [UInt8](repeating: 0, count: maximumLength + 16)
    let n = read(fd, &buf, buf.count)
    guard n > 0 else { return nil }
    return String(decoding: buf[0..<n], as: UTF8.self)
  }

  /// Writes `token` to `path` for this user only (0600 in a 0700 folder), refusing to
  /// follow a link or replace a file that exists. Returns false when the file exists.
  @discardableResult
  public static func writeTokenFile(_ token: String, to path: String) throws(SwiftrayError) -> Bool {
    let dir = (path as NSString).deletingLastPathComponent
    do {
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                              attributes: [.posixPermissions: 0o700])
    } catch {
      throw SwiftrayError(.system, "cannot create \(dir) for the cluster token: \(error.localizedDescription)")
    }
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    if fd < 0 {
      if errno == EEXIST { return false }
      throw SwiftrayError(.system, "cannot write the cluster token to \(path): \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    let bytes = Array((token + "\n").utf8)
    guard write(fd, bytes, bytes.count) == bytes.count else {
      throw SwiftrayError(.system, "cannot write the cluster token to \(path): \(String(cString: strerror(errno)))")
    }
    return true
  }
}
