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
    let server = try DataPlaneServer(group: group, endpoint: .unix(path)) { frame, responder in
      guard case .getObject(let req)? = frame.body else { return }
      var reply = Swiftray_GetObjectReply()
      reply.object.data = req.objectID
      let delay = req.objectID.last! % 2 == 0 ? 2 : 0
      group.next().scheduleTask(in: .milliseconds(Int64(delay))) { responder.respond(.getObjectReply(reply)) }
    }
    let pool = DataPlaneClientPool(group: group)
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
    let server = try DataPlaneServer(group: group, endpoint: .unix(path)) { _, _ in /* never answers */ }
    let pool = DataPlaneClientPool(group: group)
    let conn = try await pool.connection(.unix(path)).get()
    let result: Result<Swiftray_DataFrame, SwiftrayError> = await withCheckedContinuation { c in
      conn.request(.getObject(Swiftray_GetObjectRequest())) { c.resume(returning: $0) }
      server.close()
      conn.close()
    }
    guard case .failure(let e) = result else { Issue.record("expected failure"); return }
    #expect(e.message.contains("connection lost"))
    try await group.shutdownGracefully()
  }
}
