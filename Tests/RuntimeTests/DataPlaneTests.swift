import Foundation
import NIOPosix
import Runtime
import RuntimeProto
import Synchronization
import Testing

@Suite struct DataPlaneTests {
  /// Echo server answering GetObject with the id it was asked for, out of order for
  /// even ids (answered later), so matching by id is exercised.
  @Test func manyRequestsInFlightAreMatchedToTheirRepliesOverAUnixSocket() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let path = NSTemporaryDirectory() + "dp-\(UInt32.random(in: 0 ... .max)).sock"
    let server = try DataPlaneServer(group: group, endpoint: .unix(path), auth: .disabled) { frame, responder in
      guard case .getObject(let req)? = frame.body else { return }
      var reply = Swiftray_GetObjectReply()
      reply.object.data = req.objectID
      let delay = req.objectID.last! % 2 == 0 ? 2 : 0
      group.next().scheduleTask(in: .milliseconds(Int64(delay))) { responder.respond(.getObjectReply(reply)) }
    }
    let pool = DataPlaneClientPool(group: group, auth: .disabled)
    let n = 500
    let results = try await withThrowingTaskGroup(of: Bool.self) { g in
      for i in 0..<n {
        g.addTask {
          try await withCheckedThrowingContinuation { (c: CheckedContinuation<Bool, Error>) in
            var req = Swiftray_GetObjectRequest()
            req.objectID = Data([UInt8(i & 0xFF), UInt8(i >> 8)])
            let sent = req.objectID
            pool.request(.unix(path), .getObject(req)) { r in
              switch r {
              case .success(let f):
                guard case .getObjectReply(let rep)? = f.body else { c.resume(returning: false); return }
                c.resume(returning: rep.object.data == sent)
              case .failure(let e): c.resume(throwing: e)
              }
            }
          }
        }
      }
      var all: [Bool] = []
      for try await r in g { all.append(r) }
      return all
    }
    #expect(results.count == n)
    #expect(results.allSatisfy { $0 })
    pool.closeAll()
    server.close()
    try await group.shutdownGracefully()
  }

  @Test func pendingRequestsFailWhenTheServerGoesAway() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let path = NSTemporaryDirectory() + "dp-\(UInt32.random(in: 0 ... .max)).sock"
    let received = DispatchSemaphore(value: 0)
    let server = try DataPlaneServer(group: group, endpoint: .unix(path), auth: .disabled) { _, _ in received.signal() /* never answers */ }
    let pool = DataPlaneClientPool(group: group, auth: .disabled)
    let result: Result<Swiftray_DataFrame, SwiftrayError> = await withCheckedContinuation { c in
      pool.request(.unix(path), .getObject(Swiftray_GetObjectRequest())) { c.resume(returning: $0) }
      DispatchQueue.global().async {
        _ = received.wait(timeout: .now() + 10)
        pool.closeAll()
        server.close()
      }
    }
    guard case .failure(let e) = result else { Issue.record("expected failure"); return }
    #expect(e.message.contains("connection lost"))
    try await group.shutdownGracefully()
  }

  /// The issue-14 crash: a request made on an event loop thread to an endpoint whose
  /// connect completes at once ran the pool's completion inline, under the pool's lock,
  /// which took the lock again (SIGILL). Many such requests, from the loop itself, to a
  /// socket that refuses at once and to one that accepts: each is called back once.
  @Test func requestsMadeOnAnEventLoopToEndpointsThatAnswerAtOnceAreCalledBack() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let path = NSTemporaryDirectory() + "dp-\(UInt32.random(in: 0 ... .max)).sock"
    let server = try DataPlaneServer(group: group, endpoint: .unix(path), auth: .disabled) { frame, responder in
      responder.respond(.ack(.init()))
    }
    let missing = Endpoint.unix(NSTemporaryDirectory() + "dp-missing-\(UInt32.random(in: 0 ... .max)).sock")
    let pool = DataPlaneClientPool(group: group, auth: .disabled)
    let n = 200
    let outcomes: [Bool] = await withTaskGroup(of: Bool.self) { g in
      for i in 0..<n {
        g.addTask {
          await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            group.next().execute {
              pool.request(i % 2 == 0 ? missing : .unix(path), .ack(.init())) { r in
                if case .success = r { c.resume(returning: true) } else { c.resume(returning: false) }
              }
            }
          }
        }
      }
      var all: [Bool] = []
      for await o in g { all.append(o) }
      return all
    }
    #expect(outcomes.count == n)
    #expect(outcomes.filter { $0 }.count == n / 2)  // the refused half fails, the other half is answered
    pool.closeAll()
    server.close()
    try await group.shutdownGracefully()
  }
}

@Suite struct LivenessClockTests {
  let second: Int64 = 1_000_000_000

  @Test func aClientPingsUntilItsPeerHasBeenSilentForTheIdleLimitThenCloses() {
    var c = LivenessClock(idleLimit: 3 * second, pings: true, now: 10 * second)
    #expect(c.tick(at: 11 * second) == .sendKeepAlive)
    #expect(c.tick(at: 12 * second + second / 2) == .sendKeepAlive)
    #expect(c.tick(at: 13 * second) == .close)
    c.heard(at: 12 * second)  // an answer came: silence counts from it
    #expect(c.tick(at: 14 * second) == .sendKeepAlive)
    #expect(c.tick(at: 15 * second) == .close)
  }

  @Test func aServerNeverPingsAndClosesOnlyAfterSilence() {
    var c = LivenessClock(idleLimit: 3 * second, pings: false, now: 0)
    #expect(c.tick(at: 2 * second) == LivenessClock.Action.none)
    c.heard(at: 2 * second)
    #expect(c.tick(at: 4 * second) == LivenessClock.Action.none)
    #expect(c.tick(at: 5 * second) == .close)
  }

  @Test func clockReadingsOutOfOrderOrAtTheExtremesDoNotTrap() {
    var c = LivenessClock(idleLimit: second, pings: true, now: 5 * second)
    c.heard(at: 1)  // an older reading never moves the last-heard time back
    #expect(c.lastHeard == 5 * second)
    #expect(c.tick(at: Int64.min) == .sendKeepAlive)  // overflowing difference: not silence
    #expect(c.tick(at: Int64.max) == .close)
  }
}

@Suite struct SubscriptionTests {
  /// A registration with a node: one request answered, then more frames on its id
  /// (deaths) as they happen; other requests on the same connection are answered as
  /// usual meanwhile, the server learns when the subscriber's connection closes, and the
  /// subscriber hears of its end.
  @Test func aSubscriptionGetsEveryFrameOfItsIdUntilItsConnectionCloses() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let path = NSTemporaryDirectory() + "dp-\(UInt32.random(in: 0 ... .max)).sock"
    let subscriber = Locked<DataPlaneResponder?>(nil)
    let peerClosed = DispatchSemaphore(value: 0)
    let server = try DataPlaneServer(group: group, endpoint: .unix(path), auth: .disabled) { frame, responder in
      switch frame.body {
      case .registerWorker?:
        subscriber.withLock { $0 = responder }
        responder.onPeerClose { peerClosed.signal() }
        responder.respond(.registerWorkerReply(.init()))
      default:
        responder.respond(.ack(.init()))
      }
    }
    let pool = DataPlaneClientPool(group: group, auth: .disabled)
    let got = Locked<[String]>([])
    let ended = DispatchSemaphore(value: 0)
    pool.subscribe(.unix(path), .registerWorker(.init())) { r in
      switch r {
      case .success(let f):
        switch f.body {
        case .registerWorkerReply?: got.withLock { $0.append("registered") }
        case .nodeDeath(let d)?: got.withLock { $0.append(d.detail) }
        default: got.withLock { $0.append("other") }
        }
      case .failure: ended.signal()
      }
    }
    func waitFor(_ n: Int) async {
      for _ in 0..<500 where got.withLock({ $0.count }) < n { try? await Task.sleep(for: .milliseconds(10)) }
    }
    await waitFor(1)
    let push = subscriber.withLock { $0 }
    for i in 1...3 { push?.respond(.nodeDeath(.with { $0.detail = "death \(i)" })) }
    await waitFor(4)
    #expect(got.withLock { $0 } == ["registered", "death 1", "death 2", "death 3"])
    // A one-shot request on the same connection is still answered once.
    let acked: Bool = await withCheckedContinuation { c in
      pool.request(.unix(path), .storeStats(.init())) { r in
        if case .success(let f) = r, case .ack? = f.body { c.resume(returning: true) } else { c.resume(returning: false) }
      }
    }
    #expect(acked)
    pool.closeAll()
    #expect(ended.wait(timeout: .now() + 10) == .success)
    #expect(peerClosed.wait(timeout: .now() + 10) == .success)
    // Nothing more reaches a subscription that ended.
    push?.respond(.nodeDeath(.with { $0.detail = "late" }))
    try await Task.sleep(for: .milliseconds(50))
    #expect(got.withLock { $0.count } == 4)
    server.close()
    try await group.shutdownGracefully()
  }
}

@Suite struct NodeKVCacheTests {
  @Test func keepsOnlyFoundValuesOfTheNamespacesThatNeverChangeWithinItsBounds() {
    var c = NodeKVCache(maxEntries: 3, maxBytes: 100)
    let k = { (i: Int) in Data([UInt8(i)]) }
    c.found("user", k(1), Data([1]))  // a namespace whose values may change: not kept
    #expect(c.get("user", k(1)) == nil)
    c.found("fn", k(1), Data(repeating: 1, count: 9))
    c.found("job", k(1), Data([7]))
    #expect(c.get("fn", k(1))?.count == 9)
    #expect(c.get("job", k(1)) == Data([7]))
    #expect(c.get("fn", k(2)) == nil)
    // Entries: the oldest goes first.
    c.found("fn", k(2), Data([2]))
    c.found("fn", k(3), Data([3]))
    #expect(c.count == 3)
    #expect(c.get("fn", k(1)) == nil)
    #expect(c.get("fn", k(3)) == Data([3]))
    // Bytes: a large value pushes out what it must; one larger than the cache is not kept.
    c.found("fn", k(4), Data(repeating: 4, count: 95))
    #expect(c.bytes <= 100)
    #expect(c.get("fn", k(4))?.count == 95)
    c.found("fn", k(5), Data(repeating: 5, count: 200))
    #expect(c.get("fn", k(5)) == nil)
    #expect(c.bytes <= 100)
    // A value already kept is not replaced (they never change).
    c.found("fn", k(4), Data([0]))
    #expect(c.get("fn", k(4))?.count == 95)
  }
}
