import Foundation
import NIOPosix
import Runtime
import RuntimeProto
import Testing

/// Seeded fuzzing of what peers send (issue 16): valid messages mutated (bit flips,
/// truncation, huge and negative numbers, repeated fields, junk) and fed to the decoders
/// and the state machines behind the handlers, and, over a real socket, to a running
/// object store. Nothing may trap; a failure prints its seed, and
/// `SWIFTRAY_FUZZ_SEED=<seed>` replays the run. Each suite prints its cases per second.

// `SeededRandom` (SplitMix64, in Runtime) is shared with the other seeded tests and the simulator.

enum Fuzz {
  /// The run's seed: `SWIFTRAY_FUZZ_SEED`, else a fresh one (printed with every failure).
  static let seed: UInt64 = {
    if let s = ProcessInfo.processInfo.environment["SWIFTRAY_FUZZ_SEED"], let v = UInt64(s) { return v }
    return UInt64.random(in: 0 ... .max)
  }()

  /// Numbers that break careless arithmetic, as varints.
  static let edgeNumbers: [UInt64] = [0, 1, 0x7F, 0x80, UInt64(Int32.max), UInt64(UInt32.max), 1 << 31, 1 << 62,
                                      1 << 63, UInt64(Int64.max), .max, .max - 1, UInt64(bitPattern: -1 << 40)]

  static func varint(_ v: UInt64) -> [UInt8] {
    var v = v, out: [UInt8] = []
    repeat {
      let b = UInt8(v & 0x7F)
      v >>= 7
      out.append(v == 0 ? b : b | 0x80)
    } while v != 0
    return out
  }

  /// One mutation of `bytes`.
  static func mutate(_ bytes: [UInt8], _ r: inout SeededRandom) -> [UInt8] {
    var b = bytes
    let at = b.isEmpty ? 0 : Int(r.next() % UInt64(b.count + 1))
    switch r.next() % 8 {
    case 0:  // bit flips
      for _ in 0..<(1 + r.next() % 8) where !b.isEmpty { b[Int(r.next() % UInt64(b.count))] ^= UInt8(1 << (r.next() % 8)) }
    case 1:  // truncation
      b = Array(b.prefix(at))
    case 2:  // a huge or negative number where a field could start
      b.insert(contentsOf: [UInt8(truncatingIfNeeded: (r.next() % 40) << 3)] + varint(edgeNumbers.randomElement(using: &r)!), at: at)
    case 3:  // a field repeated
      let len = Int(r.next() % UInt64(max(1, b.count - at) + 1))
      let repeated = Array(b[at..<min(b.count, at + len)])
      b.insert(contentsOf: repeated, at: at)
    case 4:  // a length claiming more than there is
      b.insert(contentsOf: [UInt8(truncatingIfNeeded: (r.next() % 40) << 3 | 2)] + varint(edgeNumbers.randomElement(using: &r)!), at: at)
    case 5:  // junk
      b.insert(contentsOf: (0..<(r.next() % 64)).map { _ in UInt8(truncatingIfNeeded: r.next()) }, at: at)
    case 6:  // bytes overwritten with 0xFF (varints that never end)
      for i in at..<min(b.count, at + 10) { b[i] = 0xFF }
    default:  // two mutations
      b = mutate(mutate(b, &r), &r)
    }
    return b
  }

  /// Runs `cases` cases of `body`, each from its own generator derived from the seed,
  /// and prints the rate.
  static func run(_ name: String, cases: Int, _ body: (inout SeededRandom, Int) throws -> Void) rethrows {
    let start = ContinuousClock.now
    var r = SeededRandom(seed: seed)
    for i in 0..<cases { try body(&r, i) }
    let s = (ContinuousClock.now - start) / .milliseconds(1) / 1000
    print("fuzz \(name): \(cases) cases in \(String(format: "%.2f", s)) s (\(Int(Double(cases) / max(s, 0.001)))/s), "
      + "seed \(seed) (replay: SWIFTRAY_FUZZ_SEED=\(seed))")
  }
}

@Suite struct FuzzTests {
  @Test func respRepliesMutatedParseOrFailButNeverTrapOrOverrun() throws {
    let corpus = ["+OK\r\n", "-ERR no\r\n", ":42\r\n", "$5\r\nhello\r\n", "$-1\r\n", "*2\r\n$1\r\nx\r\n:7\r\n", "*-1\r\n",
                  "*3\r\n*1\r\n:1\r\n$0\r\n\r\n+PONG\r\n", "$9223372036854775807\r\n", ":-9223372036854775808\r\n"]
      .map { Array($0.utf8) }
    Fuzz.run("RESP", cases: 30_000) { r, i in
      let input = Fuzz.mutate(corpus.randomElement(using: &r)! + corpus.randomElement(using: &r)!, &r)
      var rest = input[...]
      var values = 0
      while values < 64 {
        guard let (_, n) = try? RESP.parse(rest) else { break }
        #expect(n > 0 && n <= rest.count, "case \(i), seed \(Fuzz.seed): consumed \(n) of \(rest.count)")
        guard n > 0, n <= rest.count else { break }
        rest = rest.dropFirst(n)
        values += 1
      }
    }
  }

  @Test func controlRequestsMutatedAreCheckedBeforeTheSchedulerSeesThem() throws {
    var lease = Swiftray_RequestWorkerLeaseRequest()
    lease.leaseRequestID = 7
    lease.resources.quantities = ["CPU": 10_000, "GPU": 5_000, "custom": 1]
    lease.taskName = "f"
    var group = Swiftray_CreatePlacementGroupRequest()
    group.group.placementGroupID = Data(repeating: 1, count: 18)
    group.group.strategy = "SPREAD"
    group.group.bundles = [.with { $0.quantities = ["CPU": 10_000] }, .with { $0.quantities = ["GPU": 20_000] }]
    let leaseBytes: [UInt8] = try lease.serializedBytes()
    let groupBytes: [UInt8] = try group.serializedBytes()
    var queue = LeaseQueue(total: ResourceSet(units: ["CPU": 4, "GPU": 2, "custom": 1]),
                           limits: .init(maxStartingWorkers: 4, maxWorkers: 8))
    let total = queue.available
    for _ in 0..<8 {
      let w = WorkerID.random()
      _ = queue.workerStarting(w)
      _ = queue.workerRegistered(w)
    }
    var granted: [UInt64] = []
    Fuzz.run("control requests", cases: 20_000) { r, i in
      if r.next() % 2 == 0 {
        guard let req = try? Swiftray_RequestWorkerLeaseRequest(serializedBytes: Fuzz.mutate(leaseBytes, &r)),
          let shape = try? ResourceSet.checked(fixedPoint: req.resources.quantities, field: "resources")
        else { return }
        let actions = queue.leaseRequested(.init(id: req.leaseRequestID, shape: shape, owner: WorkerID.random()))
        for case .grant(_, let lease) in actions { granted.append(lease.id) }
      } else {
        guard let req = try? Swiftray_CreatePlacementGroupRequest(serializedBytes: Fuzz.mutate(groupBytes, &r)) else { return }
        let bundles = req.group.bundles.compactMap { try? ResourceSet.checked(fixedPoint: $0.quantities, field: "bundle") }
        _ = BundlePlacement.place(bundles, BundlePlacement.Strategy(rawValue: req.group.strategy) ?? .pack, placed: bundles.map { _ in nil },
                                  nodes: [.init(id: Data([1]), address: "a", total: total, available: queue.available, alive: true, startTimeMs: 0)])
      }
      if granted.count > 2, r.next() % 3 == 0 { _ = queue.leaseReturned(granted.removeFirst(), disconnect: false) }
      // Whatever came, the node never has more free than it has, nor less than nothing.
      #expect(total.contains(queue.available), "case \(i), seed \(Fuzz.seed)")
      #expect(queue.available.asUnits.values.allSatisfy { $0 >= 0 }, "case \(i), seed \(Fuzz.seed)")
    }
  }

  @Test func aRunningObjectStoreAnswersMutatedFramesAndKeepsServing() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let dir = NSTemporaryDirectory() + "fuzz-\(UInt32.random(in: 0 ... .max))"
    try FileManager.default.createDirectory(atPath: dir + "/sockets", withIntermediateDirectories: true)
    let auth = try ClusterAuth(token: ClusterAuth.generate(), source: "test")
    let (store, client) = try await onOwnThread {
      let store = try ObjectStore(options: .init(capacity: 16 << 20, sessionDir: dir), group: group, auth: auth, warn: { _ in })
      return (store, try StoreClient(endpoint: store.endpoint, pool: DataPlaneClientPool(group: group, auth: auth)))
    }
    guard case .unix(let path) = store.endpoint else { Issue.record("a store on a Unix socket"); return }
    // Valid frames of every request the store handles, to mutate.
    var gen = TaskIDGenerator(job: JobID(1))
    let id = ObjectID.forPut(by: gen.next(), index: 1)
    let oid = Data(id.binary)
    let bodies: [Swiftray_DataFrame.OneOf_Body] = [
      .createObject(.with { $0.objectID = oid; $0.size = 4096; $0.creatorPid = 1; $0.ownerPid = 1 }),
      .sealObject(.with { $0.objectID = oid }),
      .pinObject(.with { $0.objectID = oid; $0.readerPid = 1; $0.size = 4096 }),
      .unpinObjects(.with { $0.objectIds = [oid]; $0.readerPid = 1 }),
      .deleteObjects(.with { $0.objectIds = [oid] }),
      .readChunk(.with { $0.objectID = oid; $0.offset = 0; $0.length = 4096 }),
      .promoteObjects(.with { $0.objectIds = [oid]; $0.ownerPid = 1 }),
      .storeStats(.init()),
    ]
    let frames: [[UInt8]] = try bodies.enumerated().map { i, b in
      try Swiftray_DataFrame.with { $0.id = UInt64(i + 1); $0.body = b }.serializedBytes()
    }
    let preamble = Array("SRA1".utf8) + (auth.token ?? [])
    let cases = 20_000
    try await onOwnThread {
      var sock: Int32 = -1
      var delivered = 0, connections = 0
      func send(_ bytes: [UInt8]) {
        if sock < 0 {
          sock = Self.connectUnix(path)
          connections += 1
          _ = Self.write(sock, Self.lengthPrefixed(preamble))
        }
        if Self.write(sock, bytes) { delivered += 1 } else { close(sock); sock = -1 }
      }
      try Fuzz.run("store frames", cases: cases) { r, i in
        let body = Fuzz.mutate(frames.randomElement(using: &r)!, &r)
        // Mostly a right length prefix (the body reaches the handler), else a wrong one.
        var framed = Self.lengthPrefixed(body)
        if r.next() % 8 == 0 { framed.replaceSubrange(0..<4, with: withUnsafeBytes(of: UInt32(truncatingIfNeeded: r.next()).bigEndian, Array.init)) }
        send(framed)
        if i % 100 == 99 {
          // Drain what the store answered, and make sure it still serves a good client.
          if sock >= 0 { Self.drain(sock) }
          do { _ = try client.stats() } catch {
            Issue.record("case \(i), seed \(Fuzz.seed): the store stopped serving: \(error)")
            throw error
          }
        }
      }
      if sock >= 0 { close(sock) }
      print("fuzz store frames: \(delivered) delivered on \(connections) connections (the store closes one on a bad frame)")
      #expect(delivered >= cases / 2, "the frames reached the store")
    }
    try await onOwnThread { store.close() }
    try? FileManager.default.removeItem(atPath: dir)
    try await group.shutdownGracefully()
  }

  static func lengthPrefixed(_ b: [UInt8]) -> [UInt8] {
    withUnsafeBytes(of: UInt32(b.count).bigEndian, Array.init) + b
  }

  static func connectUnix(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { p in
      for (i, c) in path.utf8.prefix(p.count - 1).enumerated() { p[i] = c }
    }
    let ok = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    var tv = timeval(tv_sec: 0, tv_usec: 20_000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return ok == 0 ? fd : { close(fd); return -1 }()
  }

  /// False when the peer closed the connection.
  static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    guard fd >= 0 else { return false }
    var off = 0
    while off < bytes.count {
      let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      if n <= 0 { return false }
      off += n
    }
    return true
  }

  static func drain(_ fd: Int32) {
    var buf = [UInt8](repeating: 0, count: 65536)
    while recv(fd, &buf, buf.count, 0) > 0 {}
  }
}
