import Foundation
import GRPCCore
import NIOCore
import GRPCNIOTransportHTTP2
import NIOPosix
import RuntimeProto
import Synchronization

/// The control plane (DESIGN §5): gRPC servers and clients over Unix sockets or TCP
/// (or a `MemoryNetwork` in one process: `ControlClientTransport`).
/// The one place that turns RPC failures into `SwiftrayError`s.
public enum ControlPlane {
  public typealias Client = GRPCClient<ControlClientTransport>
  public typealias Transport = ControlClientTransport

  /// A running gRPC server. Threading: any thread.
  public final class Server: Sendable {
    let server: GRPCServer<ControlServerTransport>
    let task: Task<Void, Never>
    public let endpoint: Endpoint
    let memory: MemoryServerTransport?
    /// The same services for clients in this process (`inProcessTwin`).
    let twin: Server?

    /// Stops accepting, lets in-flight RPCs finish (bounded), removes the socket.
    /// Blocks: call from a thread of your own, never from a Task or an event loop.
    public func shutdown() {
      LockDiscipline.mayBlock("ControlPlane.Server.shutdown")
      twin?.shutdown()
      server.beginGracefulShutdown()
      let t = task
      _ = try? blockingAwait(timeout: .seconds(2)) { await t.value }
      switch endpoint {
      case .unix(let p): unlink(p)
      case .memory(let name): memory.map { MemoryNetwork.shared.closeControl(name, $0) }
      case .tcp: break
      }
    }

    init(server: GRPCServer<ControlServerTransport>, task: Task<Void, Never>, endpoint: Endpoint,
         memory: MemoryServerTransport? = nil, twin: Server? = nil) {
      self.server = server; self.task = task; self.endpoint = endpoint; self.memory = memory; self.twin = twin
    }
  }

  /// The name under which this process serves `endpoint`'s services in its
  /// `MemoryNetwork` too. A client in the same process (a driver and the head and node
  /// it started, a node and its head) then calls through memory instead of HTTP/2 over
  /// a socket: about a quarter of the CPU and a fifth of the thread wake-ups per call.
  /// The token is checked the same way; nothing outside the process can reach it.
  static func inProcessTwin(of endpoint: Endpoint) -> String? {
    switch endpoint {
    case .unix, .tcp: return "twin|" + endpoint.description
    case .memory: return nil
    }
  }

  /// The memory server a client of `endpoint` calls: the endpoint's own name, or the
  /// in-process twin of a socket this process serves now (nil: use the socket).
  static func memoryName(for endpoint: Endpoint, viaTwin: Bool) -> String? {
    if case .memory(let name) = endpoint { return name }
    guard viaTwin else { return nil }
    return inProcessTwin(of: endpoint).flatMap { MemoryNetwork.shared.servesControl($0) ? $0 : nil }
  }

  /// A memory server for `services` named `name` (the process's `MemoryNetwork`).
  static func serveInMemory(_ services: [any RegistrableRPCService], name: String, auth: ClusterAuth) throws -> Server {
    let memory = MemoryServerTransport(services: services)
    try MemoryNetwork.shared.serveControl(name, memory)
    let server = GRPCServer(transport: ControlServerTransport(kind: .memory(memory)), services: services,
                            interceptors: [BearerTokenCheck(auth: auth)])
    return Server(server: server, task: Task { _ = try? await server.serve() }, endpoint: .memory(name), memory: memory)
  }

  /// Starts serving `services` and returns once bound (with the real port for port 0).
  /// Every call must carry `auth`'s token (checked before its request is decoded); on
  /// TCP with `auth.tls`, every connection must be mutual TLS with the cluster's CA.
  public static func serve(_ services: [any RegistrableRPCService], at endpoint: Endpoint,
                           group: MultiThreadedEventLoopGroup, auth: ClusterAuth) async throws -> Server {
    let address: GRPCNIOTransportCore.SocketAddress
    switch endpoint {
    case .unix(let p):
      unlink(p)
      address = .unixDomainSocket(path: p)
    case .tcp(let h, let p): address = .ipv4(host: h, port: p)
    case .memory(let name):
      return try serveInMemory(services, name: name, auth: auth)
    }
    let transport = HTTP2ServerTransport.Posix(address: address,
                                               transportSecurity: auth.tls(for: endpoint)?.grpcServerSecurity ?? .plaintext,
                                               config: serverConfig(NetworkLimits.current),
                                               eventLoopGroup: group)
    let server = GRPCServer(transport: ControlServerTransport(kind: .http2(transport)), services: services,
                            interceptors: [BearerTokenCheck(auth: auth)])
    let task = Task { _ = try? await server.serve() }
    let bound = try await transport.listeningAddress
    if case .unix(let p) = endpoint { chmod(p, 0o600) }  // this user's processes only
    var actual = endpoint
    if case .tcp(let h, _) = endpoint, let v4 = bound.ipv4 { actual = .tcp(host: h, port: v4.port) }
    // Without a twin (its name taken by a server of this process that did not stop) the
    // process's clients use the socket like any other.
    let twin = inProcessTwin(of: actual).flatMap { try? serveInMemory(services, name: $0, auth: auth) }
    return Server(server: server, task: task, endpoint: actual, twin: twin)
  }

  /// Bounds on what one peer makes a server hold: a connection cap per listener and a
  /// handshake deadline (`limits`), concurrent streams per connection, request size, and
  /// connections without calls closed after a while (clients reconnect on their next call).
  static func serverConfig(_ limits: NetworkLimits) -> HTTP2ServerTransport.Posix.Config {
    var config = HTTP2ServerTransport.Posix.Config.defaults
    config.http2.maxConcurrentStreams = maxConcurrentStreams
    config.rpc.maxRequestPayloadSize = maxRequestBytes
    config.connection.maxIdleTime = .seconds(300)
    // A client that holds a call open and stops answering (hung, cut off without a FIN)
    // is found out; clients' own pings (every keep-alive time, calls or not) are welcome.
    config.connection.keepalive = .init(time: .milliseconds(limits.grpcKeepaliveTimeMs),
                                        timeout: .milliseconds(limits.grpcKeepaliveTimeoutMs),
                                        clientBehavior: .init(minPingIntervalWithoutCalls: .milliseconds(limits.grpcKeepaliveTimeMs / 2),
                                                              allowWithoutCalls: true))
    config.connection.maxGraceTime = .milliseconds(limits.grpcKeepaliveTimeoutMs)
    // An unanswered server ping only starts a graceful close that waits for the client to
    // acknowledge it (grpc-swift-nio-transport 2.x), so a stopped client would hold its
    // calls forever. `PeerLiveness` closes a connection silent for two keep-alive rounds
    // instead: swiftray's clients ping, with or without calls, so only a dead one is that
    // quiet.
    let silentLimit = TimeAmount.milliseconds(Int64(2 * (limits.grpcKeepaliveTimeMs + limits.grpcKeepaliveTimeoutMs)))
    let check = TimeAmount.milliseconds(Int64(limits.grpcKeepaliveTimeMs))
    let limiter = ConnectionLimiter(cap: limits.maxConnectionsPerListener)
    let timeout = limits.handshakeTimeout
    config.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
      guard limiter.admit(channel) else { return channel.eventLoop.makeSucceededVoidFuture() }
      return channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(PeerLiveness(keepAlive: check, idleTimeout: silentLimit, pings: false),
                                                       position: .first)
        try channel.pipeline.syncOperations.addHandler(HandshakeDeadline(timeout: timeout), position: .first)
      }
    }
    return config
  }

  /// Streams (calls) one connection may have open at once: an owner's lease requests
  /// to a node are bounded well below this by `max_pending_lease_requests_per_shape`.
  static let maxConcurrentStreams = 1024
  /// Largest request a server decodes (gRPC's default): node reports and placement
  /// groups are far smaller; objects never travel on gRPC.
  static let maxRequestBytes = 4 << 20

  /// Options of a call that fails (`deadlineExceeded`) when no answer came within
  /// `milliseconds`: every call to a peer that may hang gets one.
  public static func deadline(milliseconds: Int) -> CallOptions {
    var options = CallOptions.defaults
    options.timeout = .milliseconds(Int64(milliseconds))
    return options
  }

  /// A client whose connections start on its first call and run in the background
  /// until `shutdown`. A process that never calls a peer never connects to it: a
  /// worker's node-local calls go by the data plane (`CoreWorker.registerWithNode`), so
  /// most workers open no HTTP/2 connection at all, the larger part of a new worker's
  /// start-up cost.
  /// Threading: any thread.
  public final class Connection: Sendable {
    public let endpoint: Endpoint
    /// Calls go through this process's `MemoryNetwork` (a memory endpoint, or the
    /// in-process twin of a socket served here), not a socket.
    public let inProcess: Bool
    /// Builds the client (its transport's types are a cost of their own for a new
    /// worker that never calls: nothing is built before the first use).
    private let make: @Sendable () -> Client
    enum Run { case idle, starting(Client), running(Client, Task<Void, Never>), stopped(Client?) }
    private let run = Locked(Run.idle)

    /// The in-process twin this connection's calls go to (nil: a socket, or a memory
    /// endpoint — those keep gRPC, with the cuts and heals tests make on them).
    let twin: String?
    init(endpoint: Endpoint, inProcess: Bool = false, twin: String? = nil, make: @escaping @Sendable () -> Client) {
      self.make = make; self.endpoint = endpoint; self.inProcess = inProcess; self.twin = twin
    }

    /// The head's ControlService: called directly (`LocalCall`) while this process
    /// serves it through the twin, else by gRPC.
    public var controlService: any Swiftray_ControlService.ClientProtocol {
      if let twin, let s = MemoryNetwork.shared.localService(twin, (any Swiftray_ControlService.SimpleServiceProtocol).self) {
        return LocalControlServiceClient(service: s, connection: self)
      }
      return Swiftray_ControlService.Client(wrapping: client)
    }

    /// A node's NodeManagerService, as `controlService`.
    public var nodeManagerService: any Swiftray_NodeManagerService.ClientProtocol {
      if let twin, let s = MemoryNetwork.shared.localService(twin, (any Swiftray_NodeManagerService.SimpleServiceProtocol).self) {
        return LocalNodeManagerServiceClient(service: s, connection: self)
      }
      return Swiftray_NodeManagerService.Client(wrapping: client)
    }

    /// The client, built and its connections started on first use. No lock held: may
    /// start a Task.
    public var client: Client {
      enum Step { case use(Client), start(Client), closed(Client) }
      // Built under the lock (a constructor that calls nothing back), so every caller
      // gets the same client; started after it.
      let step: Step = run.withLock { r in
        switch r {
        case .idle:
          let c = make()
          r = .starting(c)
          return .start(c)
        case .starting(let c), .running(let c, _), .stopped(let c?): return .use(c)
        case .stopped(nil):
          let c = make()
          r = .stopped(c)
          return .closed(c)
        }
      }
      switch step {
      case .use(let c): return c
      case .closed(let c):
        // Closed before its first use: a client that never runs; its calls fail.
        c.beginGracefulShutdown()
        return c
      case .start(let c):
        LockDiscipline.mustNotHoldLock("ControlPlane.Connection.client")
        let t = Task { _ = try? await c.runConnections() }
        let stoppedMeanwhile = run.withLock { r -> Bool in
          guard case .starting = r else { return true }
          r = .running(c, t)
          return false
        }
        // Closed while starting: closed here (its calls then fail as on a closed client).
        if stoppedMeanwhile { c.beginGracefulShutdown() }
        return c
      }
    }

    /// Closes the connections once in-flight RPCs finish (bounded). Blocks: call from
    /// a thread of your own, never from a Task or an event loop (use `close()` there).
    public func shutdown() {
      LockDiscipline.mayBlock("ControlPlane.Connection.shutdown")
      guard let t = stop() else { return }
      _ = try? blockingAwait(timeout: .seconds(2)) { await t.value }
    }

    /// Begins closing (in-flight RPCs finish) without waiting for it. Any thread or
    /// task; no lock held.
    public func close() {
      LockDiscipline.mustNotHoldLock("ControlPlane.Connection.close")
      _ = stop()
    }

    /// The running task to wait for; nil when the client never ran (nothing to close)
    /// or is starting (its starter closes it).
    private func stop() -> Task<Void, Never>? {
      let running = run.withLock { r -> (Client, Task<Void, Never>)? in
        switch r {
        case .idle: r = .stopped(nil); return nil
        case .starting(let c): r = .stopped(c); return nil
        case .running(let c, let t): r = .stopped(c); return (c, t)
        case .stopped: return nil
        }
      }
      guard let (c, t) = running else { return nil }
      c.beginGracefulShutdown()
      return t
    }
  }

  /// Starts a client (its connections run in a Task) whose calls carry `auth`'s token:
  /// through the server's in-process twin when this process serves `endpoint` now
  /// (unless `viaTwin` is false: the socket, as another process would).
  /// No lock held: it starts a Task.
  public static func connect(_ endpoint: Endpoint, group: MultiThreadedEventLoopGroup, auth: ClusterAuth,
                             viaTwin: Bool = true) throws -> Connection {
    LockDiscipline.mustNotHoldLock("ControlPlane.connect")
    let interceptors: [any ClientInterceptor] = auth.bearer.map { [BearerToken(value: $0)] } ?? []
    if let name = memoryName(for: endpoint, viaTwin: viaTwin) {
      let twin: String? = if case .memory = endpoint { nil } else { name }
      return Connection(endpoint: endpoint, inProcess: true, twin: twin) {
        GRPCClient(transport: ControlClientTransport(kind: .memory(MemoryClientTransport(name: name, network: .shared))),
                   interceptors: interceptors)
      }
    }
    if case .memory(let name) = endpoint { throw SwiftrayError(.system, "nothing serves memory:\(name)") }  // memoryName answers for these
    // A call in flight to a server that stopped answering (a hung node: a lease
    // waiting there could otherwise wait forever) fails once a ping goes unanswered; the
    // pings go on between calls too, so the server can tell a quiet client from a dead one.
    var config = HTTP2ClientTransport.Posix.Config.defaults
    let limits = NetworkLimits.current
    config.connection.keepalive = .init(time: .milliseconds(limits.grpcKeepaliveTimeMs),
                                        timeout: .milliseconds(limits.grpcKeepaliveTimeoutMs), allowWithoutCalls: true)
    let security = auth.tls(for: endpoint)?.grpcClientSecurity
    let settings = config
    let build: @Sendable () throws -> Client = {
      let transport = try HTTP2ClientTransport.Posix(target: grpcTarget(endpoint), transportSecurity: security ?? .plaintext,
                                                     config: settings, eventLoopGroup: group)
      return GRPCClient(transport: ControlClientTransport(kind: .http2(transport)), interceptors: interceptors)
    }
    // With TLS the transport is built now, so a certificate it cannot load fails here.
    if security != nil {
      let client = try build()
      return Connection(endpoint: endpoint) { client }
    }
    // Plaintext to a target of a kind gRPC resolves: nothing in the build can fail (should
    // it, the client's calls fail naming the endpoint).
    return Connection(endpoint: endpoint) {
      (try? build()) ?? GRPCClient(transport: ControlClientTransport(kind: .memory(
        MemoryClientTransport(name: "could not build a gRPC client for \(endpoint)", network: .shared))))
    }
  }

  /// gRPC's target for a socket endpoint. (A memory endpoint never gets here: `connect`
  /// serves it through the `MemoryNetwork`.)
  static func grpcTarget(_ endpoint: Endpoint) -> any ResolvableTarget {
    switch endpoint {
    case .unix(let p), .memory(let p): return .unixDomainSocket(path: p)
    case .tcp(let h, let p):
      // An IP literal as such: a DNS target would put it in TLS's SNI, which refuses IPs.
      var probe = in_addr()
      return inet_pton(AF_INET, h, &probe) == 1 ? .ipv4(address: h, port: p) : .dns(host: h, port: p)
    }
  }

  /// Runs `body` again while its peer is unavailable (a head restarting: Ray's clients
  /// wait `gcs_rpc_server_reconnect_timeout_s` for it), backing off from 100 ms to 1 s,
  /// for at most `patience`; then throws the last error. Only for idempotent calls.
  /// `orTimedOut`: a call whose own deadline passed (a head that hangs, TCP open) is
  /// tried again too.
  /// Threading: any task; sleeps between tries.
  public static func whileUnavailable<T: Sendable>(patience: Duration, orTimedOut: Bool = false,
                                                   _ body: @Sendable () async throws -> T) async throws -> T {
    let clock = Clocks.current
    let deadline = clock.deadline(after: patience)
    var pause = Duration.milliseconds(100)
    while true {
      do { return try await body() }
      catch let e as RPCError where e.code == .unavailable || (orTimedOut && e.code == .deadlineExceeded) {
        guard clock.deadline(after: pause) < deadline else { throw e }
        await Clocks.current.sleep(for: pause)
        try Task.checkCancellation()
        pause = min(pause * 2, .seconds(1))
      }
    }
  }

  /// Maps a failed RPC to the runtime's error, naming the peer.
  public static func error(_ e: any Error, calling method: String, at endpoint: Endpoint) -> SwiftrayError {
    if let s = e as? SwiftrayError { return s }
    if let rpc = e as? RPCError {
      if rpc.code == .unauthenticated {
        return SwiftrayError(.authentication, "\(method) to \(endpoint) was refused: the cluster did not accept this "
          + "process's token (\(rpc.message)). " + ClusterAuth.whereToLook())
      }
      let code: SwiftrayError.Code = rpc.code == .unavailable ? .localRayletDied : .system
      return SwiftrayError(code, "\(method) to \(endpoint) failed: \(rpc.code): \(rpc.message)" + tlsHint(rpc))
    }
    return SwiftrayError(.system, "\(method) to \(endpoint) failed: \(e)")
  }
}

/// A connection closed before gRPC's preface, or a TLS failure, is most often the two
/// ends disagreeing about TLS: say so, since gRPC's own words do not.
func tlsHint(_ rpc: RPCError) -> String {
  var text = rpc.message
  var cause = rpc.cause
  while let c = cause {
    text += " \(c)"
    cause = (c as? RPCError)?.cause ?? (c as? RuntimeError)?.cause
  }
  guard text.contains("preface") || text.contains("SSL") || text.contains("TLS") || text.contains("handshake") else { return "" }
  return ". The peer closed the connection during set-up: one side may use mutual TLS and the other not "
    + "(SWIFTRAY_USE_TLS=1 with SWIFTRAY_TLS_SERVER_CERT, SWIFTRAY_TLS_SERVER_KEY and SWIFTRAY_TLS_CA_CERT must be set "
    + "alike on every node and driver), or this process's certificate is not signed by the cluster's CA"
}

/// Refuses every call that does not carry this cluster's token, with `UNAUTHENTICATED`
/// and nothing else: the handler never runs and the request is never decoded.
/// Threading: any task (stateless).
struct BearerTokenCheck: ServerInterceptor {
  let auth: ClusterAuth

  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>, context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    var presented: String?
    for v in request.metadata[stringValues: "authorization"] { presented = v; break }
    guard auth.accepts(bearer: presented) else {
      throw RPCError(code: .unauthenticated, message: presented == nil ? "no cluster token was sent" : "wrong cluster token")
    }
    return try await next(request, context)
  }
}

/// Adds this cluster's token to every call. Threading: any task (immutable).
struct BearerToken: ClientInterceptor {
  let value: String

  func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingClientRequest<Input>, context: ClientContext,
    next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
  ) async throws -> StreamingClientResponse<Output> {
    var request = request
    request.metadata.replaceOrAddString(value, forKey: "authorization")
    return try await next(request, context)
  }
}

/// Runs async work from a synchronous caller thread (never a cooperative-pool thread)
/// and waits for it. Threading: blocks the calling thread.
public func blockingAwait<T: Sendable>(timeout: Duration? = nil, _ body: @escaping @Sendable () async throws -> T) throws -> T {
  LockDiscipline.mayBlock("blockingAwait")
  let box = Locked<Result<T, any Error>?>(nil)
  let sem = DispatchSemaphore(value: 0)
  let task = Task {
    let r: Result<T, any Error>
    do { r = .success(try await body()) } catch { r = .failure(error) }
    box.withLock { $0 = r }
    sem.signal()
  }
  if let timeout {
    let ns = timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000
    if sem.wait(timeout: .now() + .nanoseconds(Int(ns))) == .timedOut {
      task.cancel()
      throw SwiftrayError(.system, "timed out after \(timeout)")
    }
  } else {
    sem.wait()
  }
  return try box.withLock { $0! }.get()
}
