import Foundation
import GRPCCore
import NIOHTTP1
import RuntimeProto

/// Who may see the dashboard: the cluster token as `Authorization: Bearer …`,
/// `x-ray-authorization: Bearer …` (what KubeRay sends), or the cookie the login link
/// (`/?token=…`) set. Pure: the server asks it about each request.
public struct DashboardAuth: Sendable {
  public static let cookie = "swiftray_dashboard"
  let auth: ClusterAuth

  public init(_ auth: ClusterAuth) { self.auth = auth }

  public enum Verdict: Equatable, Sendable {
    case allowed
    /// A good login link: set the cookie and send the browser to `location` (the link
    /// without its token, so the token leaves the address bar and the history).
    /// `cookie` is nil when the cluster has no token (nothing to remember).
    case login(location: String, cookie: String?)
    case refused(String)
  }

  public func check(_ r: HTTPRequest) -> Verdict {
    if let presented = r.query["token"] {
      // The cookie carries the cluster's own token, never the text the request brought
      // (which could hold a line break and forge headers).
      guard let token = auth.tokenText else { return .login(location: r.path, cookie: nil) }
      guard auth.accepts(Array(presented.utf8)) else { return .refused("this login link's token is not the cluster's") }
      return .login(location: r.path, cookie: "\(Self.cookie)=\(token); Path=/; HttpOnly; SameSite=Strict")
    }
    if !auth.isEnabled { return .allowed }
    for name in ["authorization", "x-ray-authorization"] {
      if let v = r.headers.first(name: name), auth.accepts(bearer: v) { return .allowed }
    }
    for header in r.headers[canonicalForm: "cookie"] {
      for part in header.split(separator: ";") {
        let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
        if kv.count == 2, kv[0] == Self.cookie, auth.accepts(Array(kv[1].utf8)) { return .allowed }
      }
    }
    return .refused("open the login link that `swiftray start` or `init(include_dashboard=True)` printed, "
      + "or send the cluster token as 'Authorization: Bearer <token>' (`swiftray get-auth-token` prints it)")
  }
}

/// The head's web UI and its JSON API (Ray's `/api/v0/…` state routes), beside the
/// health endpoints KubeRay's probes call without a token (they say "success" and
/// nothing else). Pages are the files of `assets` (shipped in the wheel); every answer
/// forbids loading anything from elsewhere (Content-Security-Policy 'self').
///
/// Threading: `handle` runs on Swift concurrency tasks; it reads the ControlService's
/// tables through their locks (copies, built outside them).
public struct Dashboard: Sendable {
  /// Where to serve it: Ray's default 127.0.0.1:8265. `fallBack`: when the port is
  /// taken, serve on a free one instead (the default port only; a port the user chose
  /// must be theirs).
  public struct Options: Sendable {
    public var host: String
    public var port: Int
    public var assets: String
    public var fallBack: Bool
    public init(host: String = "127.0.0.1", port: Int = 8265, assets: String, fallBack: Bool) {
      self.host = host; self.port = port; self.assets = assets; self.fallBack = fallBack
    }
    /// The UI's files beside the `swiftray` executable of a wheel (`swiftray/_bin/swiftray`
    /// → `swiftray/dashboard/`).
    public static func assets(besideExecutable exe: String) -> String {
      URL(fileURLWithPath: exe).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("dashboard").path
    }
  }

  /// The URL a browser opens to sign in (the token in it; printed to the cluster's user only).
  public static func loginURL(host: String, port: Int, auth: ClusterAuth) -> String {
    let base = "http://\(NodeAddress.hostForURL(host)):\(port)/"
    return auth.tokenText.map { base + "?token=" + $0 } ?? base
  }

  let control: ControlService
  let auth: DashboardAuth
  let assets: String
  /// Runs submitted jobs (the Jobs API); nil: the API answers 404.
  let jobs: JobManager?

  public init(control: ControlService, auth: ClusterAuth, assets: String, jobs: JobManager? = nil) {
    self.control = control; self.auth = DashboardAuth(auth); self.assets = assets; self.jobs = jobs
  }

  /// What a request may send as its body: a package or a job submission once signed
  /// in (`runtime_env_max_package_bytes` and a little), nothing before.
  public func bodyLimit(_ r: HTTPRequest) -> Int {
    guard case .allowed = auth.check(r) else { return 0 }
    return control.config.runtimeEnvMaxPackageBytes + (64 << 10)
  }

  static let healthPaths: Set<String> = ["/api/gcs_healthz", "/api/healthz", "/api/local_raylet_healthz"]
  static let securityHeaders = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"),
  ]
  /// What `/api/v0/<route>` asks the state API for.
  static let routes: [String: StateQuery.Kind] = [
    "tasks": .tasks, "actors": .actors, "nodes": .nodes, "jobs": .jobs, "placement_groups": .placementGroups,
    "tasks/summarize": .summaryTasks, "actors/summarize": .summaryActors, "timeline": .timeline, "workers": .workers,
    "objects": .objects, "objects/summarize": .summaryObjects, "object_events": .objectEvents, "cluster_events": .clusterEvents,
  ]

  public func handle(_ r: HTTPRequest) async -> HTTPResponse {
    var response = await route(r)
    response.headers += Self.securityHeaders
    return response
  }

  func route(_ r: HTTPRequest) async -> HTTPResponse {
    if Self.healthPaths.contains(r.path) { return .text(.ok, "success") }
    switch auth.check(r) {
    case .refused(let why):
      return HTTPResponse(.unauthorized, contentType: "text/html; charset=utf-8",
                          body: Array("<!doctype html><title>swiftray dashboard</title><p>Not signed in: \(Self.escape(why)).</p>".utf8))
    case .login(let location, let cookie):
      let go = ("Location", location.isEmpty ? "/" : location)
      return HTTPResponse(.seeOther, headers: cookie.map { [go, ("Set-Cookie", $0)] } ?? [go])
    case .allowed:
      break
    }
    if let answer = await jobsRoute(r) { return answer }
    if r.path == "/" { return file("index.html") }
    if r.path.hasPrefix("/static/") { return file(String(r.path.dropFirst("/static/".count))) }
    if r.path.hasPrefix("/api/v0/"), let kind = Self.routes[String(r.path.dropFirst("/api/v0/".count))] {
      return await state(kind, r.query)
    }
    if r.path == "/api/v0/logs" || r.path == "/api/v0/logs/file" { return await logs(r.path, r.query) }
    return .text(.notFound, "no such page: \(r.path)")
  }

  /// A file of the UI: a plain name (no folders, nothing hidden) with a known type.
  func file(_ name: String) -> HTTPResponse {
    let types = ["html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"]
    guard !name.hasPrefix("."), name.utf8.allSatisfy({ $0 == 46 || $0 == 45 || $0 == 95 || (48...57).contains($0) || (97...122).contains($0) }),
      let type = types[String(name.split(separator: ".").last ?? "")],
      let data = FileManager.default.contents(atPath: assets + "/" + name)
    else { return .text(.notFound, "no such file: \(name)") }
    return HTTPResponse(.ok, contentType: type, body: Array(data))
  }

  /// Ray's log routes: `/api/v0/logs?node_id=…` lists a node's files
  /// (`{"result": true, "data": {"result": {"<node id>": [{name, size, modified_ms}]}}}`);
  /// `/api/v0/logs/file?node_id=…&filename=…&lines=N` is the file's last N lines as text.
  func logs(_ path: String, _ q: [String: String]) async -> HTTPResponse {
    guard let node = q["node_id"], !node.isEmpty else { return Self.failure(.badRequest, "give node_id (`/api/v0/nodes` lists them)") }
    do {
      if path == "/api/v0/logs" {
        let files = try await control.logFiles(node: node)
        let rows = files.map { f in
          StateValue.object([("name", .string(f.name)), ("size", .int(f.size)), ("modified_ms", .int(f.modifiedMs))])
        }
        return HTTPResponse(.ok, contentType: "application/json",
                            body: Array("{\"result\":true,\"msg\":\"\",\"data\":{\"result\":{\(StateValue.string(node).json):".utf8)
                              + StateJSON.array(rows) + Array("}}}".utf8))
      }
      guard let name = q["filename"], LogFileName.isValid(name) else { return Self.failure(.badRequest, "give filename, one of the node's log files") }
      let lines = q["lines"].flatMap { Int($0) } ?? 1000
      let text = try await control.logTail(node: node, name: name, lines: max(1, min(lines, 100_000)))
      return HTTPResponse(.ok, contentType: "text/plain; charset=utf-8", body: Array(text))
    } catch let e as RPCError {
      return Self.failure(e.code == .notFound ? .notFound : .badRequest, e.message)
    } catch {
      return Self.failure(.badGateway, "\(error)")
    }
  }

  static func failure(_ status: HTTPResponseStatus, _ why: String) -> HTTPResponse {
    HTTPResponse(status, contentType: "application/json", body: Array("{\"result\":false,\"msg\":\(StateValue.string(why).json),\"data\":{}}".utf8))
  }

  /// Ray's state-API answer shape: `{"result": true, "msg": …, "data": {"result": {"total", "result": rows}}}`.
  func state(_ kind: StateQuery.Kind, _ q: [String: String]) async -> HTTPResponse {
    var req = Swiftray_ListStateRequest()
    req.kind = kind.rawValue
    req.limit = Int32(clamping: q["limit"].flatMap { Int($0) } ?? 100)
    req.detail = q["detail"] == "1" || q["detail"] == "true"
    if let key = q["filter_keys"], let value = q["filter_values"] {
      var f = Swiftray_StateFilter()
      f.key = key
      f.op = q["filter_predicates"] ?? "="
      f.value = value
      req.filters = [f]
    }
    do {
      let a = try control.answer(req, fetched: await control.fetchFromNodes(req))
      let warnings = a.warnings.map { StateValue.string($0).json }.joined(separator: ",")
      var body = Array("{\"result\":true,\"msg\":\"\",\"data\":{\"result\":{\"total\":\(a.total),\"warnings\":[\(warnings)],\"result\":".utf8)
      body += a.json
      body += Array("}}}".utf8)
      return HTTPResponse(.ok, contentType: "application/json", body: body)
    } catch {
      return Self.failure(.badRequest, (error as? RPCError)?.message ?? "\(error)")
    }
  }

  static func escape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
      .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "'", with: "&#39;")
  }
}
