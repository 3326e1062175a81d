import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import Synchronization

/// The control plane's transports (issue 17's seam): gRPC over HTTP/2 on sockets in
/// production, or over a `MemoryNetwork` in one process. One concrete type each way, so
/// every client and server in the runtime is the same generic instance whichever runs
/// underneath; a call costs one `switch` more than HTTP/2 alone.
///
/// Threading: any task (each case is).
public struct ControlClientTransport: ClientTransport {
  public typealias Bytes = GRPCNIOTransportBytes
  enum Kind: Sendable {
    case http2(HTTP2ClientTransport.Posix)
    case memory(MemoryClientTransport)
  }
  let kind: Kind

  public var retryThrottle: RetryThrottle? {
    switch kind {
    case .http2(let t): return t.retryThrottle
    case .memory: return nil
    }
  }

  public func connect() async throws {
    switch kind {
    case .http2(let t): try await t.connect()
    case .memory(let t): await t.connect()
    }
  }

  public func beginGracefulShutdown() {
    switch kind {
    case .http2(let t): t.beginGracefulShutdown()
    case .memory(let t): t.beginGracefulShutdown()
    }
  }

  public func withStream<T: Sendable>(
    descriptor: MethodDescriptor, options: CallOptions,
    _ closure: (_ stream: RPCStream<Inbound, Outbound>, _ context: ClientContext) async throws -> T
  ) async throws -> T {
    switch kind {
    case .http2(let t): return try await t.withStream(descriptor: descriptor, options: options, closure)
    case .memory(let t): return try await t.withStream(descriptor: descriptor, closure)
    }
  }

  public func config(forMethod descriptor: MethodDescriptor) -> MethodConfig? {
    switch kind {
    case .http2(let t): return t.config(forMethod: descriptor)
    case .memory: return nil
    }
  }
}

/// The server side of `ControlClientTransport`. Threading: any task.
public struct ControlServerTransport: ServerTransport {
  public typealias Bytes = GRPCNIOTransportBytes
  enum Kind: Sendable {
    case http2(HTTP2ServerTransport.Posix)
    case memory(MemoryServerTransport)
  }
  let kind: Kind

  public func listen(streamHandler: @escaping @Sendable (_ stream: RPCStream<Inbound, Outbound>,
                                                          _ context: ServerContext) async -> Void) async throws {
    switch kind {
    case .http2(let t): try await t.listen(streamHandler: streamHandler)
    case .memory(let t): await t.listen(streamHandler: streamHandler)
    }
  }

  public func beginGracefulShutdown() {
    switch kind {
    case .http2(let t): t.beginGracefulShutdown()
    case .memory(let t): t.beginGracefulShutdown()
    }
  }
}

/// A gRPC client of a server on a `MemoryNetwork`: each call is a pair of in-memory
/// streams handed to the server. Threading: any task.
public final class MemoryClientTransport: Sendable {
  public typealias Bytes = GRPCNIOTransportBytes
  typealias Inbound = RPCAsyncSequence<RPCResponsePart<Bytes>, any Error>
  typealias Outbound = RPCWriter<RPCRequestPart<Bytes>>.Closable
  let name: String
  let network: MemoryNetwork
  let closed: AsyncStream<Void>
  let closer: AsyncStream<Void>.Continuation

  init(name: String, network: MemoryNetwork) {
    self.name = name
    self.network = network
    (closed, closer) = AsyncStream<Void>.makeStream()
  }

  /// Runs until `beginGracefulShutdown` (there is no connection to keep).
  func connect() async { for await _ in closed {} }

  func beginGracefulShutdown() { closer.finish() }

  func withStream<T: Sendable>(
    descriptor: MethodDescriptor,
    _ closure: (_ stream: RPCStream<Inbound, Outbound>, _ context: ClientContext) async throws -> T
  ) async throws -> T {
    let (requests, toServer) = AsyncThrowingStream<RPCRequestPart<Bytes>, any Error>.makeStream()
    let (responses, toClient) = AsyncThrowingStream<RPCResponsePart<Bytes>, any Error>.makeStream()
    let cancellation = ServerContext.RPCCancellationHandle()
    let endpoint = "memory:\(name)"
    // A cut link or a server that closes fails the call as a reset connection would.
    let abort: @Sendable () -> Void = {
      toClient.finish(throwing: RPCError(code: .unavailable, message: "\(endpoint) was cut off or closed"))
      toServer.finish(throwing: RPCError(code: .unavailable, message: "the client was cut off"))
      cancellation.cancel()
    }
    guard let (server, id) = network.openCall(name, abort: abort) else {
      throw RPCError(code: .unavailable, message: "cannot connect to \(endpoint): nothing serves it, or it is cut off")
    }
    defer {
      network.closeCall(name, id)
      toServer.finish()
      // The caller is done with the call (answered, or gave up at its deadline).
      cancellation.cancel()
    }
    let context = ServerContext(descriptor: descriptor, remotePeer: "memory:client", localPeer: endpoint,
                                cancellation: cancellation)
    try server.accept(RPCStream(descriptor: descriptor, inbound: RPCAsyncSequence(wrapping: requests),
                                outbound: RPCWriter.Closable(wrapping: StreamWriter(toClient))), context)
    let stream = RPCStream(descriptor: descriptor, inbound: RPCAsyncSequence(wrapping: responses),
                           outbound: RPCWriter.Closable(wrapping: StreamWriter(toServer)))
    return try await closure(stream, ClientContext(descriptor: descriptor, remotePeer: endpoint, localPeer: "memory:client"))
  }
}

/// A gRPC server on a `MemoryNetwork`: the calls clients open, each run by the handler
/// in a task of its own. Threading: any task.
public final class MemoryServerTransport: Sendable {
  public typealias Bytes = GRPCNIOTransportBytes
  typealias Inbound = RPCAsyncSequence<RPCRequestPart<Bytes>, any Error>
  typealias Outbound = RPCWriter<RPCResponsePart<Bytes>>.Closable
  typealias Call = (RPCStream<Inbound, Outbound>, ServerContext)
  let calls: AsyncStream<Call>
  let incoming: AsyncStream<Call>.Continuation
  /// The services it serves, for callers in this process that call them directly
  /// (`LocalCall`) until it begins to shut down.
  let services: [any Sendable]
  let open = Atomic<Bool>(true)

  init(services: [any Sendable] = []) {
    (calls, incoming) = AsyncStream<Call>.makeStream()
    self.services = services
  }

  func accept(_ stream: RPCStream<Inbound, Outbound>, _ context: ServerContext) throws {
    if case .terminated = incoming.yield((stream, context)) {
      throw RPCError(code: .unavailable, message: "\(context.localPeer) is shutting down")
    }
  }

  func listen(streamHandler: @escaping @Sendable (_ stream: RPCStream<Inbound, Outbound>,
                                                   _ context: ServerContext) async -> Void) async {
    await withDiscardingTaskGroup { group in
      for await (stream, context) in calls {
        group.addTask { await streamHandler(stream, context) }
      }
    }
  }

  func beginGracefulShutdown() {
    open.store(false, ordering: .releasing)
    incoming.finish()
  }
}

/// Writes a call's messages into the stream its peer reads. Threading: any task.
struct StreamWriter<Element: Sendable>: ClosableRPCWriterProtocol {
  let continuation: AsyncThrowingStream<Element, any Error>.Continuation
  init(_ c: AsyncThrowingStream<Element, any Error>.Continuation) { continuation = c }

  func write(_ element: Element) async throws {
    if case .terminated = continuation.yield(element) {
      throw RPCError(code: .unavailable, message: "the peer is gone")
    }
  }

  func write(contentsOf elements: some Sequence<Element>) async throws {
    for e in elements { try await write(e) }
  }

  func finish() async { continuation.finish() }
  func finish(throwing error: any Error) async { continuation.finish(throwing: error) }
}
