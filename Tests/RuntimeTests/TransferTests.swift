import Foundation
import NIOPosix
import Runtime
import Testing

private let mib = 1 << 20

@Suite struct PullQueueTests {
  var gen = TaskIDGenerator(job: JobID(1))
  mutating func oid() -> ObjectID { ObjectID.forPut(by: gen.next(), index: 1) }

  static func requests(_ actions: [PullQueue.Action]) -> [PullQueue.Chunk] {
    actions.compactMap { if case .request(let c) = $0 { return c } else { return nil } }
  }

  @Test mutating func chunksCoverTheObjectWithinTheBytesInFlightBudget() {
    var q = PullQueue(config: .init(chunkSize: 4 * mib, maxBytesInFlight: 10 * mib))
    let a = oid()
    var sent = Self.requests(q.started(a, size: 17 * mib + 3, source: "tcp:h:1"))
    #expect(sent.map(\.offset) == [0, 4 * mib])  // a third 4 MiB chunk would pass 10 MiB
    #expect(q.bytesInFlight == 8 * mib)
    var all = sent
    var done = false
    while let c = sent.first {
      sent.removeFirst()
      let acts = q.chunkArrived(a, offset: c.offset, length: c.length)
      #expect(q.bytesInFlight <= 10 * mib)
      sent += Self.requests(acts)
      all += Self.requests(acts)
      if acts.contains(.complete(a)) { done = true }
    }
    #expect(done && !q.isActive(a) && q.bytesInFlight == 0)
    #expect(all.map(\.offset) == [0, 4, 8, 12, 16].map { $0 * mib })
    #expect(all.map(\.length) == [4 * mib, 4 * mib, 4 * mib, 4 * mib, mib + 3])
  }

  @Test mutating func theOldestPullIsServedFirstAndAChunkLargerThanTheBudgetStillGoes() {
    var q = PullQueue(config: .init(chunkSize: 8 * mib, maxBytesInFlight: 5 * mib))
    let a = oid(), b = oid()
    let first = Self.requests(q.started(a, size: 16 * mib, source: "tcp:h:1"))
    #expect(first.count == 1 && first[0].length == 8 * mib)
    #expect(q.started(b, size: mib, source: "tcp:h:2").isEmpty)  // budget taken by a
    let next = Self.requests(q.chunkArrived(a, offset: 0, length: 8 * mib))
    #expect(next.map(\.id) == [a])  // a's second chunk before b's first
    let acts = q.chunkArrived(a, offset: 8 * mib, length: 8 * mib)
    #expect(acts.first == .complete(a) && Self.requests(acts).map(\.id) == [b])
  }

  @Test mutating func aFailedPullSettlesOnlyAfterItsChunksInFlightReturn() {
    var q = PullQueue(config: .init(chunkSize: mib, maxBytesInFlight: 3 * mib))
    let a = oid()
    #expect(Self.requests(q.started(a, size: 10 * mib, source: "tcp:h:1")).count == 3)
    #expect(q.chunkFailed(a, length: mib, reason: "gone").isEmpty, "two chunks may still be written")
    #expect(q.chunkArrived(a, offset: mib, length: mib).isEmpty, "no more chunks are asked for")
    #expect(q.chunkFailed(a, length: mib, reason: "also gone") == [.fail(a, "gone")])
    #expect(!q.isActive(a) && q.bytesInFlight == 0)
  }
}

/// Two real stores on loopback TCP, as on two nodes: a reader of one pulls an object
/// that only the other holds.
private let testAuth = try! ClusterAuth(token: ClusterAuth.generate(), source: "test")

@Suite(.serialized) struct TransferTests {
  /// Two stores, each with both in its cluster view (and `extra`, as a node's would be).
  static func stores(_ group: MultiThreadedEventLoopGroup, pull: PullQueue.Config,
                     extra: Set<String> = []) throws -> [(ObjectStore, StoreClient, String)] {
    let made = try (0..<2).map { i in
      let dir = NSTemporaryDirectory() + "xfer-\(i)-\(UInt32.random(in: 0 ... .max))"
      try FileManager.default.createDirectory(atPath: dir + "/sockets", withIntermediateDirectories: true)
      let store = try ObjectStore(options: .init(capacity: 64 * mib, sessionDir: dir, remoteHost: "127.0.0.1", pull: pull),
                                  group: group, auth: testAuth, warn: { _ in })
      return (store, try StoreClient(endpoint: store.endpoint, pool: DataPlaneClientPool(group: group, auth: testAuth)), dir)
    }
    let view = Set(made.map { $0.0.remoteAddress }).union(extra)
    for (store, _, _) in made { store.setPullSources(view) }
    return made
  }

  @Test func anObjectPulledInChunksArrivesIntactAsAnEvictableCopy() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let nodes = try await onOwnThread { try Self.stores(group, pull: .init(chunkSize: mib, maxBytesInFlight: 3 * mib)) }
    let (a, ca, _) = nodes[0], (_, cb, _) = nodes[1]
    var gen = TaskIDGenerator(job: JobID(2))
    let id = ObjectID.forPut(by: gen.next(), index: 1)
    let size = 20 * mib + 12_345
    let created = try await onOwnThread { () throws -> Bool in
      guard let buf = try ca.create(id, size: size, ownerPid: getpid()) else { return false }
      for i in 0..<size { buf[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 12) }
      try ca.seal(id)
      return true
    }
    #expect(created)
    let withoutSource = try await onOwnThread { try cb.pin(id) == nil }
    #expect(withoutSource, "without a source the reader's store does not have it")
    let (count, intact) = try await onOwnThread { () throws -> (Int, Bool) in
      guard let got = try cb.pin(id, pullFrom: a.remoteAddress, size: size) else { return (-1, false) }
      return (got.count, (0..<size).allSatisfy { got[$0] == UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) })
    }
    #expect(count == size && intact)
    let (st, sourcePins) = try await onOwnThread { (try cb.stats(), try ca.stats().numPinned) }
    #expect(st.numSecondary == 1 && st.bytesPulledTotal == UInt64(size))
    #expect(sourcePins == 0, "the source holds no pin after the transfer")
    cb.unpin([id])
    try await onOwnThread { for (s, _, d) in nodes { s.close(); try? FileManager.default.removeItem(atPath: d) } }
  }

  @Test func aPullOfAnObjectTheSourceLacksFailsWithTheReason() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let nodes = try await onOwnThread { try Self.stores(group, pull: .init(), extra: ["tcp:127.0.0.1:1"]) }
    var gen = TaskIDGenerator(job: JobID(3))
    let id = ObjectID.forPut(by: gen.next(), index: 1)
    let source = nodes[0].0.remoteAddress
    let missing = try await onOwnThread { () -> Result<Bool, SwiftrayError> in
      do { return .success(try nodes[1].1.pin(id, pullFrom: source, size: 3 * mib) != nil) } catch let e as SwiftrayError { return .failure(e) } catch { return .failure(SwiftrayError(.system, "\(error)")) }
    }
    guard case .failure(let e1) = missing else { Issue.record("pin of a missing remote object succeeded"); return }
    #expect(e1.code == .objectLost)
    #expect(e1.message.contains("no longer in the object store at \(source)"))
    let used = try await onOwnThread { try nodes[1].1.stats().used }
    #expect(used == 0, "the reserved extent is released")
    // A source that is not there at all.
    let dead = try await onOwnThread { () -> Result<Bool, SwiftrayError> in
      do { return .success(try nodes[1].1.pin(id, pullFrom: "tcp:127.0.0.1:1", size: mib) != nil) } catch let e as SwiftrayError { return .failure(e) } catch { return .failure(SwiftrayError(.system, "\(error)")) }
    }
    guard case .failure(let e2) = dead else { Issue.record("pin from a dead source succeeded"); return }
    #expect(e2.code == .objectLost && e2.message.contains("unreachable"))
    try await onOwnThread { for (s, _, d) in nodes { s.close(); try? FileManager.default.removeItem(atPath: d) } }
  }

  @Test func aPullFromAStoreOutsideTheClusterViewIsRefusedOnceViewsHaveNotShownIt() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let nodes = try await onOwnThread { try Self.stores(group, pull: .init()) }
    var gen = TaskIDGenerator(job: JobID(4))
    let id = ObjectID.forPut(by: gen.next(), index: 1)
    let view = Set(nodes.map { $0.0.remoteAddress })
    // Two more views come (as a NodeManager refreshes every 200 ms) without the address.
    let refresher = Task.detached {
      for _ in 0..<2 { try? await Task.sleep(for: .milliseconds(100)); nodes[1].0.setPullSources(view) }
    }
    let got = try await onOwnThread { () -> Result<Bool, SwiftrayError> in
      do { return .success(try nodes[1].1.pin(id, pullFrom: "tcp:127.0.0.1:9", size: mib) != nil) } catch let e as SwiftrayError { return .failure(e) } catch { return .failure(SwiftrayError(.system, "\(error)")) }
    }
    await refresher.value
    guard case .failure(let e) = got else { Issue.record("pulled from a store outside the cluster"); return }
    #expect(e.message.contains("not the object store of a node alive"), "\(e.message)")
    let used = try await onOwnThread { try nodes[1].1.stats().used }
    #expect(used == 0, "nothing was reserved for it")
    try await onOwnThread { for (s, _, d) in nodes { s.close(); try? FileManager.default.removeItem(atPath: d) } }
  }
}
