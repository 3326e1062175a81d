import Foundation
import Runtime
import Testing

@Suite struct RESPTests {
  @Test func commandsAreArraysOfBulkStrings() {
    #expect(RESP.command("HGET", "k", "") == Array("*3\r\n$4\r\nHGET\r\n$1\r\nk\r\n$0\r\n\r\n".utf8))
  }

  @Test func repliesParseWholeOrNotAtAllWithTheBytesTaken() throws {
    let wire = Array("+OK\r\n-ERR no\r\n:42\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n$1\r\nx\r\n:7\r\n*-1\r\n".utf8)
    var rest = wire[...]
    var got: [RESPValue] = []
    while let (v, n) = try RESP.parse(rest) {
      got.append(v)
      rest = rest.dropFirst(n)
    }
    #expect(got == [.simple("OK"), .error("ERR no"), .integer(42), .bulk(Data("a\r\nb".utf8)), .bulk(nil),
                    .array([.bulk(Data("x".utf8)), .integer(7)]), .array(nil)])
    #expect(rest.isEmpty)
    // Every strict prefix of a value is incomplete, never an error.
    let one = Array("*2\r\n$5\r\nhello\r\n$0\r\n\r\n".utf8)
    for cut in 0..<one.count { #expect(try RESP.parse(one[..<cut]) == nil) }
    #expect(throws: RESP.ParseError.self) { try RESP.parse(Array("?x\r\n".utf8)) }
  }

  @Test func repliesClaimingHugeOrNegativeLengthsOrDeepNestingAreErrorsNotTraps() throws {
    for bad in ["$9223372036854775807\r\n", "$9223372036854775806\r\nab\r\n", "$-2\r\n", "$99999999999999999999\r\n",
                "*9223372036854775807\r\n", "*-5\r\n", "$\(RESP.maxBulk + 1)\r\n", "*\(RESP.maxArray + 1)\r\n",
                String(repeating: "*1\r\n", count: RESP.maxDepth + 2) + ":1\r\n",
                "+" + String(repeating: "x", count: RESP.maxLine + 1)] {
      #expect(throws: RESP.ParseError.self, "\(bad.prefix(30))") { try RESP.parse(Array(bad.utf8)) }
    }
    // Within the bounds, a claimed length is only waited for.
    #expect(try RESP.parse(Array("*1000000\r\n:1\r\n".utf8)) == nil)
  }
}

/// A real redis-server on a loopback port, for as long as the test runs.
final class RedisServer {
  let port = Int.random(in: 20_000 ... 40_000)
  let process = Process()
  init(password: String? = nil) throws {
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    var args = ["redis-server", "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if let password { args += ["--requirepass", password] }
    process.arguments = args
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    for _ in 0..<100 {  // up when it accepts connections
      let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
      var a = sockaddr_in()
      a.sin_family = sa_family_t(AF_INET)
      a.sin_port = in_port_t(UInt16(port).bigEndian)
      a.sin_addr.s_addr = inet_addr("127.0.0.1")
      let ok = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
      close(fd)
      if ok { return }
      usleep(20_000)
    }
  }
  /// SIGKILL: the test process may block SIGTERM, and the child inherits its mask.
  func stop() { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
}

@Suite(.serialized) struct RedisStorageTests {
  @Test func tablesLiveInRedisAndSurviveANewClient() async throws {
    let server = try RedisServer()
    defer { server.stop() }
    let a = try RedisControlStorage(address: "127.0.0.1:\(server.port)")
    try await a.check()
    let k = Data([0, 1, 2, 255])  // binary keys and values
    #expect(try await a.put("kv:ns", k, Data([9]), overwrite: false))
    #expect(try await !a.put("kv:ns", k, Data([8]), overwrite: false))
    #expect(try await a.put(ControlTable.nodes, Data("n1".utf8), Data(repeating: 7, count: 100_000), overwrite: true))
    // A second client (a restarted head) sees the same tables.
    let b = try RedisControlStorage(address: "127.0.0.1:\(server.port)")
    #expect(try await b.get("kv:ns", k) == Data([9]))
    #expect(try await b.getAll(ControlTable.nodes)[Data("n1".utf8)]?.count == 100_000)
    try await b.delete("kv:ns", k)
    #expect(try await a.get("kv:ns", k) == nil)
    // Many requests in flight at once come back matched to their senders.
    try await withThrowingTaskGroup(of: Void.self) { g in
      for i in 0..<200 {
        g.addTask {
          let key = Data("k\(i)".utf8)
          _ = try await a.put("many", key, Data("v\(i)".utf8), overwrite: true)
          #expect(try await a.get("many", key) == Data("v\(i)".utf8))
        }
      }
      try await g.waitForAll()
    }
    #expect(try await b.getAll("many").count == 200)
  }

  @Test func aWrongPasswordOrAddressFailsClearly() async throws {
    let server = try RedisServer(password: "s3cret")
    defer { server.stop() }
    await #expect(throws: SwiftrayError.self) { try await RedisControlStorage(address: "127.0.0.1:\(server.port)", password: "nope").check() }
    try await RedisControlStorage(address: "127.0.0.1:\(server.port)", password: "s3cret").check()
    do {
      try await RedisControlStorage(address: "127.0.0.1:1").check()
      Issue.record("connected to a closed port")
    } catch let e as SwiftrayError {
      #expect(e.message.contains("cannot reach Redis at 127.0.0.1:1"))
    }
    #expect(throws: SwiftrayError.self) { try RedisControlStorage(address: "no-port") }
  }

  @Test func aRedisThatStopsAnsweringFailsTheCommandWithinItsDeadline() async throws {
    // A listener that accepts and never answers (as a hung Redis would).
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    listen(fd, 4)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    let port = Int(UInt16(bigEndian: addr.sin_port))
    let start = ContinuousClock.now
    do {
      try await RedisControlStorage(address: "127.0.0.1:\(port)", commandTimeoutMs: 300).check()
      Issue.record("a silent Redis answered")
    } catch let e as SwiftrayError {
      #expect(e.message.contains("did not answer within 300 ms"), "\(e.message)")
    }
    #expect(ContinuousClock.now - start < .seconds(5))
  }
}
