import Foundation
import GRPCCore
import GRPCProtobuf
import NIOCore
import NIOPosix
import Runtime
import RuntimeProto
import Synchronization
import Testing

/// The runtime's shells over the in-memory network of issue 17's transport seam: the
/// same ControlService, gRPC clients and data-plane pools as on sockets, with links cut
/// and healed, and time moved by hand.
@Suite struct MemoryNetworkTests {
  static func unique(_ what: String) -> String { "\(what)-\(UInt64.random(in: 0 ... .max))" }

  /// A data-plane round trip over memory: `result` of one request.
  static func ask(_ pool: DataPlaneClientPool, _ ep: Endpoint, _ id: Data) async -> Result<Data, SwiftrayError> {
    await withCheckedContinuation { c in
      var req = Swiftray_GetObjectRequest()
      req.objectID = id
      pool.request(ep, .getObject(req)) { r in
        c.resume(returning: r.map { f in
          if case .getObjectReply(let rep)? = f.body { return rep.object.data }
          return Data()
        })
      }
    }
  }

  @Test func dataPlaneRequestsReachAMemoryServerInOrderAndACutFailsThemUntilHealed() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let ep = Endpoint.memory(Self.unique("store"))
    let seen = Mutex<[UInt8]>([])
    let server = try DataPlaneServer(group: group, endpoint: ep, auth: .disabled) { frame, responder in
      guard case .getObject(let req)? = frame.body else { return }
      seen.withLock { $0.append(req.objectID.first ?? 0) }
      var reply = Swiftray_GetObjectReply()
      reply.object.data = req.objectID
      responder.respond(.getObjectReply(reply))
    }
    let pool = DataPlaneClientPool(group: group, auth: .disabled)
    // Requests from one caller arrive in the order made (actor calls rely on it).
    let replies: [Result<Data, SwiftrayError>] = await withCheckedContinuation { c in
      let got = Mutex<[Int: Result<Data, SwiftrayError>]>([:])
      for i in 0..<100 {
        var req = Swiftray_GetObjectRequest()
        req.objectID = Data([UInt8(i)])
        pool.request(ep, .getObject(req)) { r in
          let all: [Result<Data, SwiftrayError>]? = got.withLock { g in
            g[i] = r.map { f in if case .getObjectReply(let rep)? = f.body { return rep.object.data }; return Data() }
            return g.count == 100 ? (0..<100).map { g[$0]! } : nil
          }
          if let all { c.resume(returning: all) }
        }
      }
    }
    #expect(replies.enumerated().allSatisfy { (try? $0.element.get()) == Data([UInt8($0.offset)]) })
    #expect(seen.withLock { $0 } == (0..<100).map(UInt8.init))

    MemoryNetwork.shared.cut(ep)
    guard case .failure(let e) = await Self.ask(pool, ep, Data([1])) else { Issue.record("a cut link answered"); return }
    #expect(e.message.contains("cut off"))
    MemoryNetwork.shared.heal(ep)
    #expect(try await Self.ask(pool, ep, Data([7])).get() == Data([7]))

    // A server that goes away fails what it had not answered, as a closed socket does.
    server.close()
    guard case .failure = await Self.ask(pool, ep, Data([2])) else { Issue.record("a closed server answered"); return }
    pool.closeAll()
    try await group.shutdownGracefully()
  }

  @Test func aRequestInFlightFailsWhenItsLinkIsCut() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let ep = Endpoint.memory(Self.unique("silent"))
    let arrived = AsyncStream<Void>.makeStream()
    let server = try DataPlaneServer(group: group, endpoint: ep, auth: .disabled) { _, _ in arrived.continuation.yield() }
    let pool = DataPlaneClientPool(group: group, auth: .disabled)
    async let answer = Self.ask(pool, ep, Data([3]))
    for await _ in arrived.stream { break }  // handed to the server, which never answers
    MemoryNetwork.shared.cut(ep)
    guard case .failure(let e) = await answer else { Issue.record("no failure"); return }
    #expect(e.message.contains("cut off"))
    MemoryNetwork.shared.heal(ep)
    server.close()
    try await group.shutdownGracefully()
  }

  @Test func theControlServiceAnswersOverTheMemoryNetworkAndACutRefusesItsCalls() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let auth = try ClusterAuth(token: ClusterAuth.generate(), source: "test")
    let control = ControlService(group: group, auth: auth)
    let ep = Endpoint.memory(Self.unique("head"))
    let server = try await ControlPlane.serve([control], at: ep, group: group, auth: auth)
    let conn = try ControlPlane.connect(ep, group: group, auth: auth)
    let client = Swiftray_ControlService.Client(wrapping: conn.client)
    let put = Self.putF
    #expect(try await client.kvPut(put).added)
    MemoryNetwork.shared.cut(ep)
    await #expect(throws: RPCError.self) { _ = try await client.kvPut(put) }
    MemoryNetwork.shared.heal(ep)
    #expect(try await !client.kvPut(put).added, "the head kept what it had")

    // The token is still checked: a client without it is refused.
    let stranger = try ControlPlane.connect(ep, group: group, auth: .disabled)
    let refused = await #expect(throws: RPCError.self) {
      _ = try await Swiftray_ControlService.Client(wrapping: stranger.client).kvPut(put)
    }
    #expect(refused?.code == .unauthenticated)
    try await onOwnThread {
      stranger.shutdown()
      conn.shutdown()
      server.shutdown()
      control.shutdown()
    }
    try await group.shutdownGracefully()
  }

  /// A ControlService served on a Unix socket of this process (and so by its twin too),
  /// and a connection to it from this process.
  static func controlOnSocket(_ tag: String) async throws
    -> (MultiThreadedEventLoopGroup, ClusterAuth, ControlService, Endpoint, ControlPlane.Server, ControlPlane.Connection) {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let auth = try ClusterAuth(token: ClusterAuth.generate(), source: "test")
    let control = ControlService(group: group, auth: auth)
    let ep = Endpoint.unix(NSTemporaryDirectory() + "\(tag)-\(UInt32.random(in: 0 ... .max)).sock")
    let server = try await ControlPlane.serve([control], at: ep, group: group, auth: auth)
    return (group, auth, control, ep, server, try ControlPlane.connect(ep, group: group, auth: auth))
  }

  @Test func aSocketServedByThisProcessIsCalledThroughItsInProcessTwin() async throws {
    let (group, auth, control, ep, server, conn) = try await Self.controlOnSocket("twin")
    #expect(conn.inProcess, "a client in the server's process calls through memory")
    let client = Swiftray_ControlService.Client(wrapping: conn.client)
    let put = Self.putF
    #expect(try await client.kvPut(put).added)

    // The same service answers on the socket, for other processes: what the twin
    // changed is there.
    let socket = try ControlPlane.connect(ep, group: group, auth: auth, viaTwin: false)
    #expect(!socket.inProcess)
    #expect(try await !Swiftray_ControlService.Client(wrapping: socket.client).kvPut(put).added)

    // The token is checked on the twin too.
    let stranger = try ControlPlane.connect(ep, group: group, auth: .disabled)
    let refused = await #expect(throws: RPCError.self) {
      _ = try await Swiftray_ControlService.Client(wrapping: stranger.client).kvPut(put)
    }
    #expect(refused?.code == .unauthenticated)

    // The twin goes with its server: calls fail as on a closed socket, and a later
    // client of the endpoint uses the socket.
    try await onOwnThread { server.shutdown() }
    await #expect(throws: RPCError.self) { _ = try await client.kvPut(put) }
    let later = try ControlPlane.connect(ep, group: group, auth: auth)
    #expect(!later.inProcess)
    try await onOwnThread {
      for c in [conn, socket, stranger, later] { c.shutdown() }
      control.shutdown()
    }
    try await group.shutdownGracefully()
  }

  /// A client of a socket this process serves calls the service itself (`LocalCall`:
  /// no streams, no server task) with gRPC's outcomes: the reply, the same state as the
  /// socket's callers see, and — for a method that waits — the call's deadline and the
  /// caller's cancellation, which answer the caller at once. A memory endpoint keeps
  /// gRPC (tests cut its links); once the server stops, calls go by gRPC and fail.
  @Test func aServiceThisProcessServesIsCalledDirectlyWithGRPCsOutcomes() async throws {
    let (group, auth, control, ep, server, conn) = try await Self.controlOnSocket("direct")
    let direct = conn.controlService
    #expect(direct is LocalControlServiceClient)
    let put = Self.putF
    #expect(try await direct.kvPut(put).added)
    let socket = try ControlPlane.connect(ep, group: group, auth: auth, viaTwin: false)
    #expect(!(socket.controlService is LocalControlServiceClient))
    #expect(try await !socket.controlService.kvPut(put).added, "one service behind both")

    // An actor announced and never placed: a wait for its next state is a long poll.
    var spec = Swiftray_TaskSpec()
    let actor = TaskID(prefix: 7, counter: 1, job: 1)
    spec.taskID = Data(actor.binary)
    spec.actorID = Data(actor.binary)
    spec.actorCreation.className = "Waits"
    _ = try await direct.createActor(.with { $0.spec = spec; $0.awaitingArguments = true })
    let wait = Swiftray_WaitActorStateRequest.with { $0.actorID = spec.actorID; $0.afterVersion = 1_000; $0.timeoutMs = 60_000 }
    let late = await #expect(throws: RPCError.self) {
      _ = try await direct.waitActorState(wait, options: ControlPlane.deadline(milliseconds: 100))
    }
    #expect(late?.code == .deadlineExceeded)
    let waiter = Task { try await direct.waitActorState(wait) }
    try await Task.sleep(for: .milliseconds(50))
    waiter.cancel()
    let cancelled = await #expect(throws: RPCError.self) { _ = try await waiter.value }
    // (Had either waited for the poll's own end, it would have been answered, not thrown at.)
    #expect(cancelled?.code == .cancelled)

    // The twin goes with its server: so do direct calls.
    let memory = try ControlPlane.connect(.memory(Self.unique("nothing")), group: group, auth: auth)
    #expect(!(memory.controlService is LocalControlServiceClient))
    try await onOwnThread { server.shutdown() }
    #expect(!(conn.controlService is LocalControlServiceClient))
    await #expect(throws: RPCError.self) { _ = try await conn.controlService.kvPut(put) }
    try await onOwnThread {
      for c in [conn, socket, memory] { c.shutdown() }
      control.shutdown()
    }
    try await group.shutdownGracefully()
  }

  /// One key-value write, the same each time (the second is refused: the key exists).
  static let putF: Swiftray_KVPutRequest = {
    var put = Swiftray_KVPutRequest()
    put.namespace = "fun"
    put.key = Data("f".utf8)
    put.value = Data([1])
    return put
  }()

  /// A NodeManager that answers health checks only (the head's one call on its own).
  final class HealthOnlyNode: RegistrableRPCService {
    let answered = Mutex(0)
    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
      router.registerHandler(forMethod: Swiftray_NodeManagerService.Method.GetNodeStats.descriptor,
                             deserializer: ProtobufDeserializer<Swiftray_GetNodeStatsRequest>(),
                             serializer: ProtobufSerializer<Swiftray_GetNodeStatsReply>()) { [self] _, _ in
        answered.withLock { $0 += 1 }
        return StreamingServerResponse(single: ServerResponse(message: Swiftray_GetNodeStatsReply()))
      }
    }
  }

  /// The head's health checks on virtual time: a node answering stays alive however long
  /// time runs; cut off, it is declared dead after `failureThreshold` periods, and not
  /// before (no real second passes).
  @Test func theHeadDeclaresANodeDeadOnVirtualTimeOnceItsLinkIsCut() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let clock = ManualClock()
    var config = Config()
    config.healthCheckPeriodMs = 1_000
    config.healthCheckFailureThreshold = 3
    let auth = try ClusterAuth(token: ClusterAuth.generate(), source: "test")
    let control = ControlService(group: group, config: config, auth: auth, clock: clock)
    let headEP = Endpoint.memory(Self.unique("head"))
    let nodeEP = Endpoint.memory(Self.unique("node"))
    let head = try await ControlPlane.serve([control], at: headEP, group: group, auth: auth)
    let stub = HealthOnlyNode()
    let nodeServer = try await ControlPlane.serve([stub], at: nodeEP, group: group, auth: auth)
    let conn = try ControlPlane.connect(headEP, group: group, auth: auth)
    let client = Swiftray_ControlService.Client(wrapping: conn.client)
    var node = Swiftray_NodeInfo()
    node.nodeID = Data(NodeID.random().binary)
    node.total = ResourceSet(units: ["CPU": 1]).proto
    node.nodeManagerEndpoint = nodeEP.description
    node.nodeManagerAddress = nodeEP.description
    _ = try await client.registerNode(.with { $0.node = node })

    func alive() async throws -> Bool? {
      try await client.getAllNodes(Swiftray_GetAllNodesRequest()).nodes.first { $0.nodeID == node.nodeID }?.alive
    }
    /// Moves virtual time one period at a time, letting the checks it starts finish
    /// (real milliseconds: the checks run in tasks) before the next.
    func run(periods: Int) async throws {
      for _ in 0..<periods {
        clock.advance(by: .milliseconds(1_000))
        try await Task.sleep(for: .milliseconds(30))
      }
    }
    try await run(periods: 10)
    #expect(stub.answered.withLock { $0 } >= 5, "checked every period")
    #expect(try await alive() == true)

    MemoryNetwork.shared.cut(nodeEP)
    try await run(periods: 2)
    #expect(try await alive() == true, "two missed checks are not yet a death")
    var periods = 0
    while try await alive() == true, periods < 10 {
      try await run(periods: 1)
      periods += 1
    }
    #expect(try await alive() == false, "declared dead after the threshold of missed checks")
    let dead = try await client.getAllNodes(Swiftray_GetAllNodesRequest()).nodes.first { $0.nodeID == node.nodeID }
    #expect(dead?.deathDetail.isEmpty == false)
    MemoryNetwork.shared.heal(nodeEP)
    try await onOwnThread {
      conn.shutdown()
      nodeServer.shutdown()
      head.shutdown()
      control.shutdown()
    }
    try await group.shutdownGracefully()
  }
}
