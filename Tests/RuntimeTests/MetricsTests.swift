import Foundation
import NIOHTTP1
import NIOPosix
import Runtime
import RuntimeProto
import Testing

/// User metrics from a process to the head, the head's task counts, the host's figures,
/// and the HTTP server of `/metrics` (DESIGN §13).
@Suite struct MetricsTests {
  static func counter(_ name: String = "done", keys: [String] = ["kind"]) -> MetricDefinition {
    MetricDefinition(kind: .counter, name: name, description: "d", tagKeys: keys)
  }

  @Test func definitionsAreCheckedWithReasonsAUserCanAct() {
    #expect(Self.counter().problem == nil)
    #expect(MetricDefinition(kind: .gauge, name: "").problem == "a metric needs a name")
    #expect(MetricDefinition(kind: .gauge, name: "9lives").problem?.contains("invalid metric name") == true)
    #expect(MetricDefinition(kind: .gauge, name: "tasks").problem?.contains("taken by swiftray's own metric ray_tasks") == true)
    #expect(MetricDefinition(kind: .counter, name: "x", tagKeys: ["a", "a"]).problem?.contains("twice") == true)
    #expect(MetricDefinition(kind: .counter, name: "x", tagKeys: ["__a"]).problem?.contains("invalid tag key") == true)
    #expect(MetricDefinition(kind: .histogram, name: "h", tagKeys: ["le"], boundaries: [1]).problem?.contains("'le'") == true)
    #expect(MetricDefinition(kind: .histogram, name: "h").problem?.contains("needs boundaries") == true)
    #expect(MetricDefinition(kind: .histogram, name: "h", boundaries: [1, 1]).problem?.contains("strictly increasing") == true)
    #expect(MetricDefinition(kind: .histogram, name: "h", boundaries: [.nan]).problem != nil)
    #expect(MetricDefinition(kind: .gauge, name: "g", boundaries: [1]).problem?.contains("only a histogram") == true)
    #expect(MetricDefinition(kind: .counter, name: "c").exportedName == "ray_c_total")
    #expect(MetricDefinition(kind: .gauge, name: "g").exportedName == "ray_g")
  }

  @Test func aProcessSumsCountersKeepsTheLastGaugeAndEveryObservation() throws {
    var b = UserMetricsBuffer()
    let c = try b.define(Self.counter()).get()
    let again = try b.define(Self.counter()).get()
    #expect(again == c)  // the same definition, the same handle
    let g = try b.define(MetricDefinition(kind: .gauge, name: "depth")).get()
    let h = try b.define(MetricDefinition(kind: .histogram, name: "size", boundaries: [1, 10])).get()
    let kept = [b.record(handle: c, tags: ["a"], value: 1), b.record(handle: c, tags: ["a"], value: 2.5),
                b.record(handle: c, tags: ["b"], value: 1),
                b.record(handle: c, tags: ["a"], value: 0),  // a counter only goes up
                b.record(handle: c, tags: [], value: 1),  // one value per key
                b.record(handle: 99, tags: [], value: 1)]
    #expect(kept == [true, true, true, false, false, false])
    b.record(handle: g, tags: [], value: 3)
    b.record(handle: g, tags: [], value: 7)
    for v in [0.5, 5, 50] { b.record(handle: h, tags: [], value: v) }
    let taken = b.take()
    #expect(taken.dropped == 0 && b.isEmpty)
    let by = Dictionary(uniqueKeysWithValues: taken.samples.map { ("\($0.name)\($0.tagValues)", $0) })
    #expect(by["done[\"a\"]"]?.value == 3.5 && by["done[\"b\"]"]?.value == 1)
    #expect(by["depth[]"]?.value == 7 && by["depth[]"]?.kind == .gauge)
    #expect(by["size[]"]?.observations == [0.5, 5, 50] && by["size[]"]?.boundaries == [1, 10])
  }

  @Test func aProcessBoundsItsSeriesAndObservationsAndCountsWhatItDrops() throws {
    var b = UserMetricsBuffer()
    let c = try b.define(Self.counter()).get()
    for i in 0..<(UserMetricsBuffer.maxSeries + 5) { b.record(handle: c, tags: ["\(i)"], value: 1) }
    let h = try b.define(MetricDefinition(kind: .histogram, name: "size", boundaries: [1])).get()
    b.record(handle: h, tags: [], value: 1)  // no room for a new series either
    let full = b.take()
    #expect(full.samples.count == UserMetricsBuffer.maxSeries && full.dropped == 6)
    for _ in 0..<(UserMetricsBuffer.maxObservations + 3) { b.record(handle: h, tags: [], value: 1) }
    let many = b.take()
    #expect(many.samples.first?.observations.count == UserMetricsBuffer.maxObservations && many.dropped == 3)
    guard case .failure(.invalid(let why)) = b.define(MetricDefinition(kind: .gauge, name: "bad name")) else {
      Issue.record("a bad name was defined"); return
    }
    #expect(why.contains("invalid metric name"))
  }

  @Test func whatAReportCouldNotDeliverGoesBackUnderNewerRecords() throws {
    var b = UserMetricsBuffer()
    let c = try b.define(Self.counter()).get()
    let g = try b.define(MetricDefinition(kind: .gauge, name: "depth")).get()
    let h = try b.define(MetricDefinition(kind: .histogram, name: "size", boundaries: [1])).get()
    b.record(handle: c, tags: ["a"], value: 2)
    b.record(handle: g, tags: [], value: 1)
    b.record(handle: h, tags: [], value: 1)
    let lost = b.take()
    b.record(handle: c, tags: ["a"], value: 3)
    b.record(handle: g, tags: [], value: 9)  // newer than the undelivered 1
    b.record(handle: h, tags: [], value: 2)
    b.putBack(lost.samples, dropped: 4)
    let again = b.take()
    let by = Dictionary(uniqueKeysWithValues: again.samples.map { ($0.name, $0) })
    #expect(by["done"]?.value == 5 && by["depth"]?.value == 9 && by["size"]?.observations == [1, 2])
    #expect(again.dropped == 4)
  }

  static func sample(_ d: MetricDefinition, tags: [String] = [], value: Double = 1, observations: [Double] = []) -> Swiftray_MetricSample {
    var s = Swiftray_MetricSample()
    s.kind = Swiftray_MetricSample.Kind(rawValue: d.kind.rawValue)!
    s.name = d.name
    s.description_p = d.description
    s.tagKeys = d.tagKeys
    s.tagValues = tags
    s.boundaries = d.boundaries
    s.value = value
    s.observations = observations
    return s
  }

  @Test func theHeadKeepsTheFirstDefinitionOfANameAndRefusesBadSamples() {
    var cat = UserMetricCatalog()
    let c = Self.counter()
    let ok1 = cat.admit(Self.sample(c, tags: ["a"]))
    #expect(ok1)
    // The same name as a gauge, or with other keys or help: Prometheus would reject the family.
    let ok2 = cat.admit(Self.sample(MetricDefinition(kind: .gauge, name: "done", description: "d", tagKeys: ["kind"]), tags: ["a"]))
    #expect(!ok2)
    #expect(cat.lastProblem?.contains("defined differently") == true)
    let ok3 = cat.admit(Self.sample(MetricDefinition(kind: .counter, name: "done", description: "other", tagKeys: ["kind"]), tags: ["a"]))
    #expect(!ok3)
    let ok4 = cat.admit(Self.sample(c, tags: []))
    #expect(!ok4)  // a value per key
    let ok5 = cat.admit(Self.sample(c, tags: ["a"], value: -1))
    #expect(!ok5)
    let ok6 = cat.admit(Self.sample(c, tags: ["a"], value: .infinity))
    #expect(!ok6)
    let ok7 = cat.admit(Self.sample(MetricDefinition(kind: .gauge, name: "tasks")))
    #expect(!ok7)
    var unknownKind = Self.sample(c, tags: ["a"])
    unknownKind.kind = .UNRECOGNIZED(7)
    let ok8 = cat.admit(unknownKind)
    #expect(!ok8)
    cat.sendersDropped(10)
    #expect(cat.dropped == 7 + 10)
  }

  @Test func theHeadBoundsItsSeries() {
    var cat = UserMetricCatalog()
    let c = Self.counter()
    for i in 0..<UserMetricCatalog.maxSeries {
      let ok = cat.admit(Self.sample(c, tags: ["\(i)"]))
      #expect(ok)
    }
    let ok9 = cat.admit(Self.sample(c, tags: ["one more"]))
    #expect(!ok9)
    let ok10 = cat.admit(Self.sample(c, tags: ["0"]))
    #expect(ok10)  // a known series still counts
  }

  @Test func theSinkSumsProcessesIntoOnePrometheusExposition() async {
    let sink = UserMetricsSink()
    let c = Self.counter()
    let h = MetricDefinition(kind: .histogram, name: "size", description: "sizes", boundaries: [1, 10])
    await sink.apply([Self.sample(c, tags: ["a"], value: 2), Self.sample(h, observations: [0.5, 5])], dropped: 0)
    await sink.apply([Self.sample(c, tags: ["a"], value: 3), Self.sample(h, observations: [50]),
                      Self.sample(MetricDefinition(kind: .gauge, name: "done", description: "d", tagKeys: ["kind"]), tags: ["a"])],
                     dropped: 2)
    var out: [UInt8] = []
    await sink.emit(into: &out)
    let text = String(decoding: out, as: UTF8.self)
    #expect(text.contains("# TYPE ray_done_total counter"))
    #expect(text.contains("ray_done_total{kind=\"a\"} 5"))
    #expect(text.contains("ray_size_bucket{le=\"1.0\"} 1") && text.contains("ray_size_bucket{le=\"10.0\"} 2"))
    #expect(text.contains("ray_size_count 3"))
    #expect(!text.contains("# TYPE ray_done gauge"))
    #expect(await sink.dropped == 3)
  }

  @Test func theHeadCountsAttemptsByTheirLatestStateOnce() {
    var t = TaskEventTable(capacity: 2)
    let pending = TaskEventTests.event(1, .pendingNodeAssignment, info: true)
    t.apply(TaskEventTests.batch([pending]))
    let f = TaskEventTable.CountKey(state: .pendingNodeAssignment, name: "f", isRetry: false)
    #expect(t.stateCounts[f] == 1)
    // The same state again (a report sent twice) changes nothing.
    t.apply(TaskEventTests.batch([pending]))
    #expect(t.stateCounts[f] == 1)
    t.apply(TaskEventTests.batch([TaskEventTests.event(1, .finished, at: 900)]))
    let done = TaskEventTable.CountKey(state: .finished, name: "f", isRetry: false)
    #expect(t.stateCounts[f] == 0 && t.stateCounts[done] == 1)
    t.apply(TaskEventTests.batch([TaskEventTests.event(1, .finished, at: 900, attempt: 1, info: true)]))
    #expect(t.stateCounts[TaskEventTable.CountKey(state: .finished, name: "f", isRetry: true)] == 1)
    // Evicted attempts stay counted: a finished count only grows.
    for n in 2...4 { t.apply(TaskEventTests.batch([TaskEventTests.event(UInt64(n), .finished, info: true)])) }
    #expect(t.count == 2 && t.stateCounts[done] == 4)
  }

  @Test func hostFiguresParseFromProcFiles() {
    let a = HostStats.parseCPU("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    #expect(a == HostStats.CPUTimes(busy: 150, total: 1000))
    let b = HostStats.parseCPU("cpu  200 0 100 1550 150 0 0 0 0 0\n")!
    #expect(HostStats.utilization(from: a!, to: b) == 15)
    #expect(HostStats.utilization(from: b, to: a!) == 0)  // a counter that went back
    #expect(HostStats.parseCPU("garbage") == nil)
    let m = HostStats.parseMemory("MemTotal:       1000 kB\nMemFree: 10 kB\nMemAvailable:    250 kB\n")
    #expect(m == HostStats.Memory(total: 1_024_000, available: 256_000) && m?.used == 768_000)
    #expect(HostStats.parseMemory("MemTotal: 99999999999999999999 kB\nMemAvailable: 1 kB") == nil)
    var sampler = HostCPUSampler(start: a)
    let first = sampler.sample(b), second = sampler.sample(b)
    #expect(first == 15 && second == 0)
  }

  /// One request on a fresh connection; the whole answer (the server closes it).
  static func exchange(_ port: Int, _ request: String) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard ok == 0 else { throw POSIXError(.ECONNREFUSED) }
    _ = request.utf8CString.withUnsafeBufferPointer { send(fd, $0.baseAddress, $0.count - 1, 0) }
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = recv(fd, &buf, buf.count, 0)
      if n <= 0 { break }
      out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
  }

  @Test func theHTTPServerAnswersGetsAndRefusesTheRest() async throws {
    let server = try await HTTPServer.serve(host: "127.0.0.1", port: 0, group: MultiThreadedEventLoopGroup.singleton) { r in
      r.path == "/metrics" ? HTTPResponse(body: Array("up \(r.query["x"] ?? "-")".utf8)) : .text(.notFound, "no")
    }
    // shutdown() waits for the channel to close: on a thread of its own, never this task's.
    var failure: (any Error)?
    do { try await Self.exchanges(server.port) } catch { failure = error }
    try await onOwnThread { server.shutdown() }
    if let failure { throw failure }
  }

  static func exchanges(_ port: Int) async throws {
    let got = try await onOwnThread { try Self.exchange(port, "GET /metrics?x=a%20b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n") }
    #expect(got.hasPrefix("HTTP/1.1 200 OK") && got.hasSuffix("\r\n\r\nup a b"))
    let head = try await onOwnThread { try Self.exchange(port, "HEAD /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n") }
    #expect(head.hasPrefix("HTTP/1.1 200 OK") && head.hasSuffix("\r\n\r\n"))
    let missing = try await onOwnThread { try Self.exchange(port, "GET /nope HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n") }
    #expect(missing.hasPrefix("HTTP/1.1 404"))
    let post = try await onOwnThread { try Self.exchange(port, "POST /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n") }
    #expect(post.hasPrefix("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"))
    let body = try await onOwnThread {
      try Self.exchange(port, "PUT /metrics HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n" + String(repeating: "x", count: 10_000))
    }
    #expect(body.hasPrefix("HTTP/1.1 413"))
    // Two requests on one kept-alive connection, answered in order.
    let two = try await onOwnThread {
      try Self.exchange(port, "GET /metrics?x=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /metrics?x=2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    }
    #expect(two.components(separatedBy: "HTTP/1.1 200 OK").count == 3 && two.hasSuffix("up 2"))
    #expect(two.range(of: "up 1")!.lowerBound < two.range(of: "up 2")!.lowerBound)
  }
}

/// Who may see the dashboard (DESIGN §13): the token in either header, the login link's
/// cookie, and nothing else.
@Suite struct DashboardAuthTests {
  static let token = "t0k3n-of-the-cluster-0123456789abcdef"
  static let auth = DashboardAuth(try! ClusterAuth(token: token, source: "test"))

  static func request(_ uri: String, _ headers: [(String, String)] = []) -> HTTPRequest {
    HTTPRequest(method: .GET, uri: uri, headers: HTTPHeaders(headers))
  }

  @Test func eitherBearerHeaderOrTheCookieSignsIn() {
    #expect(Self.auth.check(Self.request("/", [("Authorization", "Bearer \(Self.token)")])) == .allowed)
    #expect(Self.auth.check(Self.request("/", [("x-ray-authorization", "Bearer \(Self.token)")])) == .allowed)
    #expect(Self.auth.check(Self.request("/", [("Cookie", "a=b; \(DashboardAuth.cookie)=\(Self.token)")])) == .allowed)
    for bad in [[], [("Authorization", "Bearer nope")], [("Authorization", Self.token)],
                [("Cookie", "\(DashboardAuth.cookie)=nope")], [("Cookie", "other=\(Self.token)")]] {
      guard case .refused = Self.auth.check(Self.request("/api/v0/tasks", bad)) else {
        Issue.record("signed in with \(bad)"); continue
      }
    }
  }

  @Test func aLoginLinkSetsTheCookieAndDropsTheToken() {
    #expect(Self.auth.check(Self.request("/?token=\(Self.token)"))
      == .login(location: "/", cookie: "\(DashboardAuth.cookie)=\(Self.token); Path=/; HttpOnly; SameSite=Strict"))
    guard case .refused = Self.auth.check(Self.request("/?token=wrong")) else { Issue.record("a wrong link signed in"); return }
  }

  @Test func withoutATokenALoginLinkSetsNoCookie() {
    // Whatever the link carried (here a line break and a forged header) never reaches a header.
    let open = DashboardAuth(ClusterAuth.disabled)
    #expect(open.check(Self.request("/?token=x%0d%0aSet-Cookie:%20evil=1")) == .login(location: "/", cookie: nil))
  }
}

/// The driver's deduplication of workers' output (`LogDedup`).
@Suite struct LogDedupTests {
  static func line(_ pid: Int32, _ text: String) -> LogDedup.Line { .init(pid: pid, text: text, isErr: false) }

  @Test func wordsWithDigitsAreTheSameAndNumbersAloneAreNeverHeld() {
    #expect(LogDedup.key("loaded 12 rows in 0.5s") == LogDedup.key("loaded 7 rows in 1.25s"))
    #expect(LogDedup.key("loaded 12 rows") != LogDedup.key("loaded 12 files"))
    #expect(LogDedup.key("12 3.5") == "")
  }

  @Test func otherWorkersRepeatsAreSummedUpWhenTheWindowEnds() {
    var d = LogDedup(windowNs: 100)
    #expect(d.arrived([Self.line(1, "loading weights 1")], now: 0) == [Self.line(1, "loading weights 1")])
    #expect(d.arrived([Self.line(2, "loading weights 2"), Self.line(3, "loading weights 3")], now: 10).isEmpty)
    // Its own repeat is shown at once; numbers-only lines too.
    #expect(d.arrived([Self.line(1, "loading weights 9"), Self.line(2, "42")], now: 20)
      == [Self.line(1, "loading weights 9"), Self.line(2, "42")])
    #expect(d.windowsEnded(now: 50).isEmpty)
    #expect(d.windowsEnded(now: 100) == [Self.line(3, "loading weights 3 [repeated 2x across cluster]")])
    // A new window starts with the next line; a line past the window ends the old one first.
    #expect(d.arrived([Self.line(4, "loading weights 4")], now: 200) == [Self.line(4, "loading weights 4")])
    _ = d.arrived([Self.line(5, "loading weights 5")], now: 210)
    #expect(d.arrived([Self.line(6, "loading weights 6")], now: 400)
      == [Self.line(5, "loading weights 5 [repeated 1x across cluster]"), Self.line(6, "loading weights 6")])
    _ = d.arrived([Self.line(7, "loading weights 7")], now: 410)
    #expect(d.windowsEnded(now: .max) == [Self.line(7, "loading weights 7 [repeated 1x across cluster]")])
    var off = LogDedup(windowNs: 100, enabled: false)
    let all = [Self.line(1, "x"), Self.line(2, "x")]
    #expect(off.arrived(all, now: 0) == all)
  }
}
