import Crypto
import Foundation

/// A runtime environment as a node sets it up: what a task's `runtime_env` says, checked.
///
/// The language layer sends its canonical JSON (sorted keys; `TaskSpec.runtime_env`);
/// `parse` turns it into this value once, at the edge, with every field bounded, so
/// nothing past it deals with a peer's raw text. Its `key` (a digest of the JSON) names
/// the environment: workers are pooled by it, a pip virtualenv lives under it.
///
/// Threading: a value type.
public struct RuntimeEnv: Sendable, Hashable {
  /// A package in the head's package store: `pkg://<sha256 of its bytes>.zip`.
  public struct Package: Sendable, Hashable, CustomStringConvertible {
    /// 64 lowercase hex digits.
    public let digest: String
    public init?(uri: String) {
      guard uri.hasPrefix("pkg://"), uri.hasSuffix(".zip") else { return nil }
      let hex = uri.dropFirst(6).dropLast(4)
      guard hex.count == 64, hex.allSatisfy({ ("0"..."9").contains($0) || ("a"..."f").contains($0) }) else { return nil }
      digest = String(hex)
    }
    public var uri: String { "pkg://\(digest).zip" }
    public var description: String { uri }
  }

  public static let maxJSONBytes = 1 << 20
  public static let maxEnvVars = 4096
  public static let maxPipPackages = 1000
  public static let maxPipLineBytes = 4096
  public static let maxPyModules = 256
  /// `config.setup_timeout_seconds` when none is given (Ray's default).
  public static let defaultSetupTimeoutSeconds = 600
  public static let maxSetupTimeoutSeconds = 7 * 86_400

  /// The canonical JSON, as received: the environment's identity.
  public let json: String
  /// 32 hex digits of the JSON's SHA-256: pool key and cache folder name.
  public let key: String
  public var envVars: [String: String] = [:]
  public var workingDir: Package?
  public var pyModules: [Package] = []
  public var pipPackages: [String] = []
  /// nil: no limit (Ray's -1).
  public var setupTimeoutSeconds: Int? = defaultSetupTimeoutSeconds
  public var eagerInstall = true

  /// The pip set-up's own key: the same requirements share one virtualenv whatever the
  /// rest of the environment says.
  public var pipKey: String? {
    pipPackages.isEmpty ? nil : Self.digest(pipPackages.joined(separator: "\n"))
  }

  /// What has to be fetched or built on a node before a worker can start in it.
  public var packages: [Package] { (workingDir.map { [$0] } ?? []) + pyModules }

  static func digest(_ text: String) -> String {
    SHA256.hash(data: Data(text.utf8)).prefix(16).map { String(format: "%02x", $0) }.joined()
  }

  /// The environment `json` describes; nil for "" (the node's own environment).
  /// Throws `invalidArgument` naming the field for anything malformed or out of range.
  public static func parse(_ json: String) throws(SwiftrayError) -> RuntimeEnv? {
    if json.isEmpty { return nil }
    func bad(_ why: String) -> SwiftrayError { SwiftrayError(.invalidArgument, "runtime_env: \(why)") }
    guard json.utf8.count <= maxJSONBytes else { throw bad("larger than \(maxJSONBytes) bytes") }
    guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)), let dict = object as? [String: Any] else {
      throw bad("not a JSON object")
    }
    var env = RuntimeEnv(json: json, key: digest(json))
    for (field, value) in dict {
      switch field {
      case "env_vars":
        guard let vars = value as? [String: Any], vars.count <= maxEnvVars else { throw bad("env_vars must map at most \(maxEnvVars) names to strings") }
        for (k, v) in vars {
          guard let s = v as? String, !k.isEmpty, !k.contains("="), !k.contains("\0"), !s.contains("\0") else {
            throw bad("env_vars[\(k.prefix(64))] must be a string, its name without '=' or NUL")
          }
          env.envVars[k] = s
        }
      case "working_dir":
        guard let uri = value as? String, let p = Package(uri: uri) else { throw bad("working_dir must be a package URI (pkg://<sha256>.zip)") }
        env.workingDir = p
      case "py_modules":
        guard let uris = value as? [Any], uris.count <= maxPyModules else { throw bad("py_modules must list at most \(maxPyModules) package URIs") }
        for u in uris {
          guard let uri = u as? String, let p = Package(uri: uri) else { throw bad("py_modules must list package URIs (pkg://<sha256>.zip)") }
          env.pyModules.append(p)
        }
      case "pip":
        guard let pip = value as? [String: Any], let lines = pip["packages"] as? [Any], lines.count <= maxPipPackages else {
          throw bad("pip must be {\"packages\": [...]} with at most \(maxPipPackages) requirements")
        }
        for l in lines {
          guard let line = l as? String, !line.isEmpty, line.utf8.count <= maxPipLineBytes,
                !line.contains(where: { $0 == "\n" || $0 == "\r" || $0 == "\0" }) else {
            throw bad("each pip requirement must be one non-empty line of at most \(maxPipLineBytes) bytes")
          }
          env.pipPackages.append(line)
        }
      case "config":
        guard let config = value as? [String: Any] else { throw bad("config must be an object") }
        if let t = config["setup_timeout_seconds"] {
          guard let n = t as? Int, !(t is Bool), n == -1 || (1...maxSetupTimeoutSeconds).contains(n) else {
            throw bad("config.setup_timeout_seconds must be -1 or 1...\(maxSetupTimeoutSeconds)")
          }
          env.setupTimeoutSeconds = n == -1 ? nil : n
        }
        if let e = config["eager_install"] {
          guard let b = e as? Bool else { throw bad("config.eager_install must be a bool") }
          env.eagerInstall = b
        }
      default:
        throw bad("unknown field '\(field.prefix(64))'")
      }
    }
    return env
  }

  /// What a worker of this environment applies before any user code runs, given where
  /// the node put its packages and virtualenv: JSON for `SWIFTRAY_RUNTIME_ENV_CONTEXT`
  /// (`_worker._apply_runtime_env`).
  public func context(packageDirs: [Package: String], sitePackages: String?) -> String {
    var c: [String: Any] = ["env_vars": envVars, "runtime_env": json]
    var path: [String] = []
    if let wd = workingDir, let dir = packageDirs[wd] { c["cwd"] = dir; path.append(dir) }
    for m in pyModules { if let dir = packageDirs[m], !path.contains(dir) { path.append(dir) } }
    c["sys_path"] = path
    c["site_dirs"] = sitePackages.map { [$0] } ?? []
    let data = (try? JSONSerialization.data(withJSONObject: c, options: [.sortedKeys])) ?? Data("{}".utf8)
    return String(decoding: data, as: UTF8.self)
  }
}
