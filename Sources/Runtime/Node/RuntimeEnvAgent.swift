import Foundation

/// Sets up runtime environments on one node (Ray's runtime-env agent): fetches each
/// package from the head's package store once, unpacks it once into the node's cache,
/// builds one virtualenv per distinct pip requirement set, and gives back the context
/// a worker of that environment applies (`RuntimeEnv.context`). Set-ups of the same
/// package or virtualenv by concurrent requests are one set-up; what no live
/// environment uses is deleted by `sweep` (`RuntimeEnvCache`).
///
/// Threading: an actor (the shell; the decisions are `RuntimeEnvCache`'s). File work
/// runs on NIO's blocking thread pool, set-up steps as child processes
/// (`SetupProcesses`): no concurrency thread waits on the disk or a process.
public actor RuntimeEnvAgent {
  public typealias Fetch = @Sendable (_ key: Data) async throws -> Data?

  let root: String
  let python: String
  /// How the set-up script is named to `python`: its file when known (it imports only
  /// the standard library, so it starts in ~20 ms), else the module (which imports
  /// `swiftray` and its core first).
  let script: [String]
  let environment: [String: String]
  let fetch: Fetch
  let maxPackageBytes: Int
  let processes = SetupProcesses()
  var cache = RuntimeEnvCache()
  var inFlight: [RuntimeEnvCache.Resource: Task<Result<String, SwiftrayError>, Never>] = [:]
  /// Environments being set up now, by key (kept by `sweep`).
  var settingUp: [String: Int] = [:]

  /// `root`: the node's cache folder; `python`: the interpreter that runs the set-up
  /// steps with `environment` (the workers' own, so `swiftray` imports);
  /// `fetch`: reads a key of the package store's KV namespace; `script`: the set-up
  /// script's file, if known.
  public init(root: String, python: String, script: String?, environment: [String: String], maxPackageBytes: Int,
              fetch: @escaping Fetch) {
    self.root = root; self.python = python; self.environment = environment
    self.script = script.map { ["-I", $0] } ?? ["-m", "swiftray._runtime_env_setup"]
    self.maxPackageBytes = maxPackageBytes; self.fetch = fetch
  }

  /// Sets `env` up (or finds it set up) and returns its worker context, or why not.
  public func setUp(_ env: RuntimeEnv, now: @escaping @Sendable () -> UInt64) async -> Result<String, SwiftrayError> {
    settingUp[env.key, default: 0] += 1
    defer { settingUp[env.key]! -= 1; if settingUp[env.key] == 0 { settingUp[env.key] = nil } }
    let timeout = env.setupTimeoutSeconds.map { Duration.seconds($0) }
    var dirs: [RuntimeEnv.Package: String] = [:]
    var site: String?
    for p in env.packages {
      switch await resource(.package(p), timeout: timeout, now: now) {
      case .success(let dir): dirs[p] = dir
      case .failure(let e): return .failure(e)
      }
    }
    if let k = env.pipKey {
      switch await resource(.venv(k), pip: env.pipPackages, timeout: timeout, now: now) {
      case .success(let s): site = s
      case .failure(let e): return .failure(e)
      }
    }
    cache.used(env, now: now())
    return .success(env.context(packageDirs: dirs, sitePackages: site))
  }

  /// One package or virtualenv: the cache's, the set-up under way, or a new set-up.
  /// For a virtualenv the value is its site-packages folder.
  func resource(_ r: RuntimeEnvCache.Resource, pip: [String] = [], timeout: Duration?,
                now: @escaping @Sendable () -> UInt64) async -> Result<String, SwiftrayError> {
    if let p = cache.path(r) { return .success(p) }
    if let t = inFlight[r] { return await t.value }
    let t = Task { await self.build(r, pip: pip, timeout: timeout) }
    inFlight[r] = t
    let result = await t.value
    inFlight[r] = nil
    if case .success(let path) = result {
      let folder = Self.ownedFolder(r, path: path, root: root)
      let size = (try? await NodeLogs.offLoop { Self.diskBytes(folder) }) ?? 0
      if cache.path(r) == nil { cache.added(r, path: path, bytes: size, now: now()) }
    }
    return result
  }

  func build(_ r: RuntimeEnvCache.Resource, pip: [String], timeout: Duration?) async -> Result<String, SwiftrayError> {
    do {
      switch r {
      case .package(let p): return .success(try await unpack(p, timeout: timeout))
      case .venv(let k): return .success(try await virtualenv(k, pip, timeout: timeout))
      }
    } catch let e as SwiftrayError {
      return .failure(e)
    } catch {
      return .failure(SwiftrayError(.runtimeEnvSetupFailed, "\(r): \(error)"))
    }
  }

  static func failed(_ what: String, _ outcome: SetupProcesses.Outcome, timeout: Duration?) -> SwiftrayError {
    let how = outcome.timedOut ? "timed out after \(timeout?.components.seconds ?? 0) s (config.setup_timeout_seconds)"
      : outcome.signal > 0 ? "was killed by signal \(outcome.signal)" : "exited with code \(outcome.exitCode)"
    let tail = outcome.output.suffix(20).joined(separator: "\n")
    return SwiftrayError(.runtimeEnvSetupFailed, "\(what) \(how)" + (tail.isEmpty ? "" : ":\n\(tail)"))
  }

  /// Fetches package `p` from the head (checking its size and digest) and unpacks it
  /// into `<root>/pkg/<digest>`.
  func unpack(_ p: RuntimeEnv.Package, timeout: Duration?) async throws -> String {
    let dir = "\(root)/pkg/\(p.digest)"
    if FileManager.default.fileExists(atPath: dir) { return dir }
    guard let m = try await fetch(PackageStore.manifestKey(p)) else {
      throw SwiftrayError(.runtimeEnvSetupFailed, "package \(p.uri) is not in the head's package store (a head restarted without Redis forgets packages: submit again)")
    }
    guard let manifest = PackageStore.decodeManifest(m, maxBytes: maxPackageBytes) else {
      throw SwiftrayError(.runtimeEnvSetupFailed, "package \(p.uri) has a malformed manifest in the head's package store")
    }
    var data = Data()
    data.reserveCapacity(manifest.size)
    for i in 0..<manifest.chunks {
      guard let chunk = try await fetch(PackageStore.chunkKey(p, i)), data.count + chunk.count <= manifest.size else {
        throw SwiftrayError(.runtimeEnvSetupFailed, "package \(p.uri) is incomplete in the head's package store (chunk \(i))")
      }
      data.append(chunk)
    }
    guard data.count == manifest.size, PackageStore.digest(data) == p.digest else {
      throw SwiftrayError(.runtimeEnvSetupFailed, "package \(p.uri) fetched from the head does not match its SHA-256")
    }
    let zip = "\(root)/pkg/\(p.digest).zip"
    let fetched = data
    try await NodeLogs.offLoop { [root] in
      try FileManager.default.createDirectory(atPath: "\(root)/pkg", withIntermediateDirectories: true)
      try fetched.write(to: URL(fileURLWithPath: zip))
    }
    let outcome = await processes.run(python, script + ["unpack", zip, dir],
                                      environment: environment, timeout: timeout)
    _ = try? await NodeLogs.offLoop { try FileManager.default.removeItem(atPath: zip) }
    guard outcome.succeeded else { throw Self.failed("unpacking \(p.uri)", outcome, timeout: timeout) }
    return dir
  }

  static let sitePackagesPrefix = "SWIFTRAY_SITE_PACKAGES="

  /// Builds the virtualenv of `requirements` in `<root>/pip/<key>`; returns its
  /// site-packages folder.
  func virtualenv(_ key: String, _ requirements: [String], timeout: Duration?) async throws -> String {
    let dir = "\(root)/pip/\(key)", file = "\(root)/pip/\(key).txt"
    try await NodeLogs.offLoop { [root] in
      try FileManager.default.createDirectory(atPath: "\(root)/pip", withIntermediateDirectories: true)
      try Data((requirements.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: file))
    }
    var args = script + ["pip", dir, file]
    if let timeout { args += ["--timeout", String(timeout.components.seconds)] }
    let outcome = await processes.run(python, args, environment: environment, timeout: timeout.map { $0 + .seconds(30) })
    let named = requirements.joined(separator: ", ")
    guard outcome.succeeded else { throw Self.failed("pip install of [\(named.prefix(500))]", outcome, timeout: timeout) }
    guard let line = outcome.output.last(where: { $0.hasPrefix(Self.sitePackagesPrefix) }) else {
      throw SwiftrayError(.runtimeEnvSetupFailed, "pip set-up of [\(named.prefix(500))] did not say where its site-packages are")
    }
    return String(line.dropFirst(Self.sitePackagesPrefix.count))
  }

  /// Deletes what `RuntimeEnvCache.evictions` picks, given the environments live
  /// workers use (by key); set-ups under way count as in use.
  /// Returns what was deleted and the environments forgotten (their contexts go).
  public func sweep(inUse: Set<String>, now: UInt64, maxBytes: Int, ttlNanos: UInt64) async
    -> (deleted: [String], forgotten: [String]) {
    let (gone, forgotten) = cache.evictions(inUse: inUse.union(settingUp.keys), now: now, maxBytes: maxBytes, ttlNanos: ttlNanos)
    let paths = gone.map { r, path in Self.ownedFolder(r, path: path, root: root) }
    if !paths.isEmpty {
      _ = try? await NodeLogs.offLoop { for p in paths { try? FileManager.default.removeItem(atPath: p) } }
    }
    return (gone.map { $0.0.description }, forgotten)
  }

  /// The folder to delete for `r`: a virtualenv's whole folder, not just its site-packages.
  static func ownedFolder(_ r: RuntimeEnvCache.Resource, path: String, root: String) -> String {
    if case .venv(let k) = r { return "\(root)/pip/\(k)" }
    return path
  }

  /// Bytes of the files under `path` (blocking: call off the loop).
  static func diskBytes(_ path: String) -> Int {
    guard let walk = FileManager.default.enumerator(atPath: path) else { return 0 }
    var total = 0
    for case let rel as String in walk {
      if let a = try? FileManager.default.attributesOfItem(atPath: "\(path)/\(rel)"),
         a[.type] as? FileAttributeType == .typeRegular, let n = a[.size] as? NSNumber {
        total += n.intValue
      }
    }
    return total
  }

  public func shutdown() { processes.shutdown() }
}
