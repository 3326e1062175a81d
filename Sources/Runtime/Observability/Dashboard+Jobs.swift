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
    if parts.isEmpty && method == .GET { return Self.json(jobs.jobs.map(Self.details)) }
    if parts.isEmpty && method == .POST { return submit(r.body, jobs) }
    if parts.count == 1 && method == .GET {
      guard let job = jobs.job(parts[0]) else { return Self.failure(.notFound, "Job \(parts[0]) does not exist") }
      return Self.json(Self.details(job))
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

  /// `POST /api/jobs/`: Ray's `JobSubmitRequest` (entrypoint, submission_id, runtime_env,
  /// metadata, entrypoint_num_cpus/_gpus/_resources).
  func submit(_ body: [UInt8], _ jobs: JobManager) -> HTTPResponse {
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
    if let env = req["runtime_env"] as? [String: Any], !env.isEmpty {
      do { record.runtime_env = try Self.canonicalRuntimeEnv(env) } catch { return Self.failure(.badRequest, error.message) }
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

  /// A record as Ray's `JobDetails`.
  static func details(_ r: JobSubmissions.Record) -> [String: Any] {
    var d: [String: Any] = [
      "type": "SUBMISSION", "job_id": NSNull(), "submission_id": r.submission_id, "driver_info": NSNull(),
      "status": r.status.rawValue, "entrypoint": r.entrypoint, "message": r.message,
      "error_type": r.error_type ?? NSNull(), "start_time": r.start_time, "end_time": r.end_time ?? NSNull(),
      "metadata": r.metadata, "driver_exit_code": r.driver_exit_code.map { Int($0) } ?? NSNull(),
      "entrypoint_num_cpus": r.entrypoint_num_cpus, "entrypoint_num_gpus": r.entrypoint_num_gpus,
      "entrypoint_resources": r.entrypoint_resources, "driver_agent_http_address": NSNull(), "driver_node_id": NSNull(),
    ]
    d["runtime_env"] = r.runtime_env.isEmpty ? [String: Any]()
      : (try? JSONSerialization.jsonObject(with: Data(r.runtime_env.utf8))) ?? [String: Any]()
    return d
  }

  /// `GET` (is it there?) and `PUT` (store it) of `/api/packages/pkg/<sha256>.zip`.
  func package(_ r: HTTPRequest) async -> HTTPResponse {
    let name = String(r.path.dropFirst("/api/packages/".count))
    guard name.hasPrefix("pkg/") else {
      return Self.failure(.badRequest, "packages are named pkg/<sha256 of the zip>.zip (swiftray's job client uploads them)")
    }
    let uri = "pkg://" + name.dropFirst(4)
    do {
      switch r.method {
      case .GET, .HEAD:
        guard let p = RuntimeEnv.Package(uri: uri) else { return Self.failure(.badRequest, "not a package name: \(name)") }
        let found = try await control.getKV(.with { $0.namespace = PackageStore.namespace; $0.key = PackageStore.manifestKey(p) }).found
        return found ? Self.json(["result": true]) : Self.failure(.notFound, "package \(uri) is not in the store")
      case .PUT:
        let data = Data(r.body)
        let p = try PackageStore.checked(uri: uri, data, maxBytes: control.config.runtimeEnvMaxPackageBytes)
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
