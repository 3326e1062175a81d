import Foundation
import NIOHTTP1
import RuntimeProto

/// Ray's Jobs REST API on the dashboard's port (the paths and JSON fields Ray's
/// `JobSubmissionClient` and `ray job` use): `/api/version`, `/api/jobs/` (list, submit),
/// `/api/jobs/<id>` (get, DELETE), `/api/jobs/<id>/stop`, `/api/jobs/<id>/logs`
/// (`?offset=N`: from byte N on, with where it ends, for following), and the package
/// routes a client uploads a working_dir through, `/api/packages/pkg/<sha256>.zip`.
///
/// Threading: called from the HTTP server's tasks; the job manager and the KV are
/// thread-safe.
extension Dashboard {
  /// The Jobs API version Ray's clients check for.
  static let jobsAPIVersion = "4"

  func jobsRoute(_ r: HTTPRequest) async -> HTTPResponse? {
    if r.path == "/api/version" {
      return Self.json(["version": Self.jobsAPIVersion, "ray_version": "2.60.0", "ray_commit": "swiftray", "session_name": ""])
    }
    if r.path.hasPrefix("/api/packages/") { return await package(r) }
    guard r.path == "/api/jobs" || r.path.hasPrefix("/api/jobs/") else { return nil }
    guard let jobs else { return Self.failure(.notFound, "this head runs no job manager") }
    let parts = r.path.split(separator: "/").dropFirst(2).map(String.init)  // after "api", "jobs"
    let method = r.method
    if parts.isEmpty && method == .GET { return Self.json(jobs.jobs.map { Self.details($0, driver: control.job(submission: $0.submission_id)) }) }
    if parts.isEmpty && method == .POST { return await submit(r.body, jobs) }
    if parts.count == 1 && method == .GET {
      guard let job = jobs.job(parts[0]) else { return Self.failure(.notFound, "Job \(parts[0]) does not exist") }
      return Self.json(Self.details(job, driver: control.job(submission: job.submission_id)))
    }
    if parts.count == 1 && method == .DELETE {
      do throws(JobSubmissions.Refusal) {
        try jobs.delete(parts[0])
        return Self.json(["deleted": true])
      } catch {
        return Self.refused(error)
      }
    }
    if parts.count == 2 && parts[1] == "stop" && method == .POST {
      do throws(JobSubmissions.Refusal) {
        let stopping = try jobs.stop(parts[0])
        return Self.json(["stopped": stopping])
      } catch {
        return Self.refused(error)
      }
    }
    if parts.count == 3 && parts[1] == "logs" && parts[2] == "tail" {
      return Self.failure(.badRequest, "logs/tail is a WebSocket: open it with an Upgrade request (tail_job_logs does)")
    }
    if parts.count == 2 && parts[1] == "logs" && method == .GET {
      let offset = r.query["offset"].flatMap { Int($0) }
      guard let (text, end) = await jobs.logs(parts[0], from: max(0, offset ?? 0)) else {
        return Self.failure(.notFound, "Job \(parts[0]) does not exist")
      }
      let answer: [String: Any] = offset == nil ? ["logs": text] : ["logs": text, "offset": end]
      return Self.json(answer)
    }
    return Self.failure(.notFound, "no such jobs route: \(method.rawValue) \(r.path)")
  }

  /// Ray's `/api/jobs/<id>/logs/tail`, which `JobSubmissionClient.tail_job_logs` and
  /// `ray job logs --follow` open as a WebSocket (signed-in requests only).
  var logsTail: WebSocketRoute {
    WebSocketRoute(
      accepts: { r in
        guard case .allowed = auth.check(r) else { return false }
        return Self.tailedJob(r.path) != nil
      },
      serve: { r, out in
        if let id = Self.tailedJob(r.path) { await tail(id, out) }
        await out.close()
      })
  }

  public static func tailedJob(_ path: String) -> String? {
    let p = path.split(separator: "/")
    return p.count == 5 && p[0] == "api" && p[1] == "jobs" && p[3] == "logs" && p[4] == "tail" ? String(p[2]) : nil
  }

  /// Sends what the job printed, then what it prints, polling its log every 250 ms,
  /// until it has ended and all of it is sent (or the client has gone). Whether it
  /// ended is read before each read, so its last words are never missed.
  func tail(_ id: String, _ out: WebSocketSender) async {
    guard let jobs else { return }
    var offset = 0
    while !Task.isCancelled {
      let ended = jobs.job(id)?.status.isTerminal ?? true
      guard let (text, end) = await jobs.logs(id, from: offset) else { return }
      offset = end
      for piece in Self.frames(text) { guard await out.send(piece) else { return } }
      if ended && text.isEmpty { return }
      if text.isEmpty { try? await Task.sleep(for: .milliseconds(250)) }
    }
  }

  /// The most text one frame carries (aiohttp, Ray's client, takes at most 4 MiB).
  public static let maxFrameBytes = 1 << 20

  /// `text` cut into frames of at most `maxFrameBytes`, never inside a character.
  public static func frames(_ text: String, max: Int = maxFrameBytes) -> [String] {
    let bytes = Array(text.utf8)
    var out: [String] = [], start = 0
    while start < bytes.count {
      var end = Swift.min(bytes.count, start + max)
      // Back off continuation bytes (10xxxxxx) so each frame is whole UTF-8.
      while end < bytes.count, end > start + 1, bytes[end] & 0xC0 == 0x80 { end -= 1 }
      out.append(String(decoding: bytes[start..<end], as: UTF8.self))
      start = end
    }
    return out
  }

  /// `POST /api/jobs/`: Ray's `JobSubmitRequest` (entrypoint, submission_id, runtime_env,
  /// metadata, entrypoint_num_cpus/_gpus/_memory/_resources).
  func submit(_ body: [UInt8], _ jobs: JobManager) async -> HTTPResponse {
    guard let req = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
      return Self.failure(.badRequest, "the body must be a JSON object (Ray's JobSubmitRequest)")
    }
    guard let entrypoint = req["entrypoint"] as? String else { return Self.failure(.badRequest, "entrypoint (a shell command) is required") }
    let id = (req["submission_id"] as? String) ?? (req["job_id"] as? String) ?? Self.newSubmissionID()
    var record = JobSubmissions.Record(submission_id: id, entrypoint: entrypoint)
    record.metadata = (req["metadata"] as? [String: Any] ?? [:]).compactMapValues { $0 as? String }
    record.entrypoint_num_cpus = (req["entrypoint_num_cpus"] as? NSNumber)?.doubleValue ?? 0
    record.entrypoint_num_gpus = (req["entrypoint_num_gpus"] as? NSNumber)?.doubleValue ?? 0
    record.entrypoint_resources = (req["entrypoint_resources"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
    record.entrypoint_memory = (req["entrypoint_memory"] as? NSNumber)?.doubleValue
    if let env = req["runtime_env"] as? [String: Any], !env.isEmpty {
      do {
        record.runtime_env = try Self.canonicalRuntimeEnv(try await resolvingRayPackages(env))
      } catch let e as SwiftrayError {
        return Self.failure(.badRequest, e.message)
      } catch {
        return Self.failure(.badGateway, "cannot read the package store: \(error)")
      }
    }
    do throws(JobSubmissions.Refusal) {
      let submitted = try jobs.submit(record)
      return Self.json(["job_id": submitted, "submission_id": submitted])
    } catch {
      return Self.refused(error)
    }
  }

  /// A runtime_env as a submission carries it, as the canonical JSON a task's would be
  /// (pip as a list becomes `{"packages": …}`; `excludes`, a client-side option, goes),
  /// checked by `RuntimeEnv.parse`.
  static func canonicalRuntimeEnv(_ env: [String: Any]) throws(SwiftrayError) -> String {
    var e = env
    e["excludes"] = nil
    if let pip = e["pip"] as? [Any] { e["pip"] = ["packages": pip] }
    if let pip = e["pip"] as? [String: Any] { e["pip"] = ["packages": pip["packages"] ?? []] }
    guard let data = try? JSONSerialization.data(withJSONObject: e, options: [.sortedKeys, .withoutEscapingSlashes]) else {
      throw SwiftrayError(.invalidArgument, "runtime_env must be JSON")
    }
    let json = String(decoding: data, as: UTF8.self)
    _ = try RuntimeEnv.parse(json)
    return json
  }

  /// `raysubmit_` and 16 letters and digits, as Ray names submissions.
  static func newSubmissionID() -> String {
    let alphabet = Array("ABCDEFGHIJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz123456789")
    return "raysubmit_" + String((0..<16).map { _ in alphabet.randomElement()! })
  }

  /// A record as Ray's `JobDetails`; `driver`: the job its driver registered (none
  /// before it started).
  static func details(_ r: JobSubmissions.Record, driver: JobTable.Job?) -> [String: Any] {
    var d: [String: Any] = [
      "type": "SUBMISSION", "job_id": driver.map { $0.id.hex } ?? NSNull(), "submission_id": r.submission_id,
      "driver_info": driver.map { j -> [String: Any] in
        ["id": Hex.encode(j.driverID), "node_ip_address": j.nodeIP, "pid": String(j.driverPid)]
      } ?? NSNull(),
      "status": r.status.rawValue, "entrypoint": r.entrypoint, "message": r.message,
      "error_type": r.error_type ?? NSNull(), "start_time": r.start_time, "end_time": r.end_time ?? NSNull(),
      "metadata": r.metadata, "driver_exit_code": r.driver_exit_code.map { Int($0) } ?? NSNull(),
      "entrypoint_num_cpus": r.entrypoint_num_cpus, "entrypoint_num_gpus": r.entrypoint_num_gpus,
      "entrypoint_resources": r.entrypoint_resources, "entrypoint_memory": r.entrypoint_memory.flatMap { Int64(exactly: $0.rounded()) } ?? NSNull(),
      "driver_agent_http_address": NSNull(),
      "driver_node_id": driver.map { j -> Any in Hex.encode(j.nodeID) } ?? NSNull(),
    ]
    d["runtime_env"] = r.runtime_env.isEmpty ? [String: Any]()
      : (try? JSONSerialization.jsonObject(with: Data(r.runtime_env.utf8))) ?? [String: Any]()
    return d
  }

  /// `GET` (is it there?) and `PUT` (store it) of `/api/packages/pkg/<sha256>.zip`
  /// (swiftray's client) and `/api/packages/gcs/_ray_pkg_<hash>.zip` (Ray's: stored by
  /// the SHA-256 of its bytes, with an alias from its Ray name, which `submit` resolves).
  func package(_ r: HTTPRequest) async -> HTTPResponse {
    let name = r.path.dropFirst("/api/packages/".count)
    let rayName: Substring?
    if name.hasPrefix("gcs/") {
      rayName = name.dropFirst(4)
      guard PackageStore.isRayPackageName(rayName!) else { return Self.failure(.badRequest, "not a package name: \(name.prefix(200))") }
    } else if name.hasPrefix("pkg/") {
      rayName = nil
    } else {
      return Self.failure(.badRequest, "packages are named pkg/<sha256 of the zip>.zip (swiftray's client) or gcs/_ray_pkg_<hash>.zip (Ray's); .whl packages are not supported")
    }
    do {
      switch r.method {
      case .GET, .HEAD:
        let p = if let rayName { try await resolveAlias(rayName) } else { RuntimeEnv.Package(uri: "pkg://" + name.dropFirst(4)) }
        guard let p else { return Self.failure(.notFound, "package \(name) is not in the store") }
        let found = try await control.getKV(.with { $0.namespace = PackageStore.namespace; $0.key = PackageStore.manifestKey(p) }).found
        return found ? Self.json(["result": true]) : Self.failure(.notFound, "package \(name) is not in the store")
      case .PUT:
        let data = Data(r.body)
        let uri = rayName == nil ? "pkg://" + name.dropFirst(4) : "pkg://\(PackageStore.digest(data)).zip"
        let p = try PackageStore.checked(uri: uri, data, maxBytes: control.config.runtimeEnvMaxPackageBytes)
        try await store(p, data)
        if let rayName {
          _ = try await control.putKV(.with {
            $0.namespace = PackageStore.aliasNamespace; $0.key = PackageStore.aliasKey(rayName); $0.value = Data(p.uri.utf8); $0.overwrite = true
          })
        }
        return Self.json(["result": true])
      default:
        return Self.failure(.methodNotAllowed, "packages take GET and PUT")
      }
    } catch let e as SwiftrayError {
      return Self.failure(.badRequest, e.message)
    } catch {
      return Self.failure(.badGateway, (error as? CustomStringConvertible)?.description ?? "\(error)")
    }
  }

  /// Writes a checked package: its chunks, then the manifest that makes it visible.
  func store(_ p: RuntimeEnv.Package, _ data: Data) async throws {
    let chunks = PackageStore.chunks(data)
    for (i, chunk) in chunks.enumerated() {
      _ = try await control.putKV(.with {
        $0.namespace = PackageStore.namespace; $0.key = PackageStore.chunkKey(p, i); $0.value = chunk; $0.overwrite = true
      })
    }
    _ = try await control.putKV(.with {
      $0.namespace = PackageStore.namespace; $0.key = PackageStore.manifestKey(p)
      $0.value = PackageStore.encode(.init(size: data.count, chunks: chunks.count)); $0.overwrite = true
    })
  }

  /// The package a Ray package name was uploaded as; nil if it never was.
  func resolveAlias(_ rayName: Substring) async throws -> RuntimeEnv.Package? {
    let reply = try await control.getKV(.with { $0.namespace = PackageStore.aliasNamespace; $0.key = PackageStore.aliasKey(rayName) })
    return reply.found ? PackageStore.decodeAlias(reply.value) : nil
  }

  /// A submission's runtime_env with Ray's `gcs://` package URIs (working_dir,
  /// py_modules) replaced by the `pkg://` ones they were uploaded as.
  func resolvingRayPackages(_ env: [String: Any]) async throws -> [String: Any] {
    func resolved(_ value: Any) async throws -> Any {
      guard let uri = value as? String, uri.hasPrefix("gcs://") else { return value }
      let name = uri.dropFirst("gcs://".count)
      guard PackageStore.isRayPackageName(name), let p = try await resolveAlias(name) else {
        throw SwiftrayError(.invalidArgument, "package \(uri.prefix(200)) was never uploaded to this cluster (PUT /api/packages/gcs/<name> first)")
      }
      return p.uri
    }
    var e = env
    if let wd = e["working_dir"] { e["working_dir"] = try await resolved(wd) }
    if let modules = e["py_modules"] as? [Any] {
      var out: [Any] = []
      for m in modules.prefix(RuntimeEnv.maxPyModules + 1) { out.append(try await resolved(m)) }
      e["py_modules"] = out
    }
    return e
  }

  static func refused(_ error: JobSubmissions.Refusal) -> HTTPResponse {
    switch error {
    case .badSubmission(let why): return failure(.badRequest, why)
    case .exists(let why): return failure(.badRequest, why)
    case .notFound(let id): return failure(.notFound, "Job \(id) does not exist")
    case .notTerminal(let why): return failure(.badRequest, why)
    case .full: return failure(.serviceUnavailable, "the head keeps \(JobSubmissions.maxJobs) jobs and none has ended: delete some")
    }
  }

  static func json(_ object: Any) -> HTTPResponse {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    return HTTPResponse(.ok, contentType: "application/json", body: Array(data))
  }
}
