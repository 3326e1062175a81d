import Foundation
import NIOCore
import NIOPosix
import NIOExtras
import RuntimeProto
import Synchronization

/// The data plane (DESIGN §5): persistent connections carrying length-prefixed
/// `DataFrame` protobufs, many requests in flight, replies matched by `id`.
/// Callback-based on purpose: a task push is a write and a dictionary insert, with no
/// async hop on the hot path.
public enum DataPlane {
  static func configure(_ channel: Channel, handler: ChannelHandler) -> EventLoopFuture<Void> {
    channel.eventLoop.makeCompletedFuture {
      let sync = channel.pipeline.syncOperations
      try sync.addHandler(ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .fourBytes)))
      try sync.addHandler(LengthFieldPrepender(lengthFieldBitLength: .fourBytes))
      try sync.addHandler(handler)
    }
  }

  static func encode(_ frame: Swiftray_DataFrame, allocator: ByteBufferAllocator) -> ByteBuffer? {
    guard let bytes: [UInt8] = try? frame.serializedBytes() else { return nil }
    return allocator.buffer(bytes: bytes)
  }

  static func decode(_ buffer: ByteBuffer) -> Swiftray_DataFrame? {
    buffer.withUnsafeReadableBytes { raw in
      try? Swiftray_DataFrame(serializedBytes: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!), count: raw.count, deallocator: .none))
    }
  }
}

/// Replies to one request. Threading: may be used from any thread, once.
public struct DataPlaneResponder: Sendable {
  let channel: Channel
  let id: UInt64
  public func respond(_ body: Swiftray_DataFrame.OneOf_Body) {
    var f = Swiftray_DataFrame()
    f.id = id
    f.body = body
    guard let buf = DataPlane.encode(f, allocator: channel.allocator) else { return }
    channel.writeAndFlush(NIOAny(buf), promise: nil)
  }
}

/// Serves requests on a Unix socket or TCP port. The handler is called on a NIO event
/// loop thread and must not block: it answers through the responder, now or later.
public final class DataPlaneServer: Sendable {
  public typealias Handler = @Sendable (Swiftray_DataFrame, DataPlaneResponder) -> Void
  let channel: Channel
  public let endpoint: Endpoint

  private final class ServerHandler: ChannelInboundHandler, @unchecked Sendable {
    // Only touched on the channel's event loop.
    typealias InboundIn = ByteBuffer
    let handler: Handler
    init(_ h: @escaping Handler) { handler = h }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      guard let frame = DataPlane.decode(unwrapInboundIn(data)) else { context.close(promise: nil); return }
      handler(frame, DataPlaneResponder(channel: context.channel, id: frame.id))
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
  }

  public init(group: EventLoopGroup, endpoint: Endpoint, handler: @escaping Handler) throws {
    let bootstrap = ServerBootstrap(group: group)
      .serverChannelOption(.backlog, value: 256)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
      .childChannelInitializer { ch in DataPlane.configure(ch, handler: ServerHandler(handler)) }
    switch endpoint {
    case .unix(let path):
      unlink(path)
      channel = try bootstrap.bind(unixDomainSocketPath: path).wait()
      self.endpoint = endpoint
    case .tcp(let host, let port):
      channel = try bootstrap.bind(host: host, port: port).wait()
      self.endpoint = .tcp(host: host, port: channel.localAddress?.port ?? port)
    }
  }

  public func close() {
    try? channel.close().wait()
    if case .unix(let path) = endpoint { unlink(path) }
  }
}

/// A client connection with requests in flight. Threading: any thread.
public final class DataPlaneConnection: Sendable {
  public typealias Callback = @Sendable (Result<Swiftray_DataFrame, SwiftrayError>) -> Void
  let channel: Channel
  let state: Mutex<State>
  public let endpoint: Endpoint

  struct State {
    var nextID: UInt64 = 1
    var pending: [UInt64: Callback] = [:]
    var closed: SwiftrayError?
    var onClose: [@Sendable (SwiftrayError) -> Void] = []
  }

  private final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    // Only touched on the channel's event loop; `conn` is set before the first read.
    typealias InboundIn = ByteBuffer
    weak var conn: DataPlaneConnection?
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      guard let frame = DataPlane.decode(unwrapInboundIn(data)) else { context.close(promise: nil); return }
      conn?.deliver(frame)
    }
    func channelInactive(context: ChannelHandlerContext) {
      conn?.failAll(SwiftrayError(.system, "connection lost"))
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
  }

  init(channel: Channel, endpoint: Endpoint) {
    self.channel = channel; self.endpoint = endpoint; self.state = Mutex(State())
  }

  /// Connects without blocking; the future completes on the event loop.
  public static func connect(group: EventLoopGroup, to endpoint: Endpoint) -> EventLoopFuture<DataPlaneConnection> {
    let handler = ClientHandler()
    let bootstrap = ClientBootstrap(group: group)
      .channelOption(.socketOption(.tcp_nodelay), value: 1)
      .connectTimeout(.seconds(10))
      .channelInitializer { ch in DataPlane.configure(ch, handler: handler) }
    let f: EventLoopFuture<Channel>
    switch endpoint {
    case .unix(let p): f = bootstrap.connect(unixDomainSocketPath: p)
    case .tcp(let h, let p): f = bootstrap.connect(host: h, port: p)
    }
    return f.map { ch in
      let c = DataPlaneConnection(channel: ch, endpoint: endpoint)
      handler.conn = c
      if !ch.isActive { c.failAll(SwiftrayError(.system, "connection lost")) }
      return c
    }
  }

  public var isClosed: Bool { state.withLock { $0.closed != nil } }

  /// Sends a request; `callback` runs once, on an event loop thread, with the reply or
  /// the error that closed the connection.
  public func request(_ body: Swiftray_DataFrame.OneOf_Body, callback: @escaping Callback) {
    let r: Result<UInt64, SwiftrayError> = state.withLock { s in
      if let e = s.closed { return .failure(e) }
      let id = s.nextID
      s.nextID += 1
      s.pending[id] = callback
      return .success(id)
    }
    switch r {
    case .failure(let e): callback(.failure(e))
    case .success(let id):
      var f = Swiftray_DataFrame()
      f.id = id
      f.body = body
      guard let buf = DataPlane.encode(f, allocator: channel.allocator) else {
        let cb = state.withLock { $0.pending.removeValue(forKey: id) }
        cb?(.failure(SwiftrayError(.system, "could not encode a data-plane frame")))
        return
      }
      channel.writeAndFlush(NIOAny(buf), promise: nil)
    }
  }

  /// Called once when the connection closes (immediately if it already has).
  public func onClose(_ cb: @escaping @Sendable (SwiftrayError) -> Void) {
    let closed: SwiftrayError? = state.withLock { s in
      if s.closed == nil { s.onClose.append(cb) }
      return s.closed
    }
    if let e = closed { cb(e) }
  }

  public func close() { channel.close(promise: nil) }

  func deliver(_ frame: Swiftray_DataFrame) {
    let cb = state.withLock { $0.pending.removeValue(forKey: frame.id) }
    cb?(.success(frame))
  }

  func failAll(_ error: SwiftrayError) {
    let (cbs, closers): ([Callback], [@Sendable (SwiftrayError) -> Void]) = state.withLock { s in
      if s.closed != nil { return ([], []) }
      s.closed = error
      let c = Array(s.pending.values)
      s.pending.removeAll()
      let o = s.onClose
      s.onClose.removeAll()
      return (c, o)
    }
    for cb in cbs { cb(.failure(error)) }
    for c in closers { c(error) }
  }
}

/// One connection per endpoint, made on first use and reused. Threading: any thread.
public final class DataPlaneClientPool: Sendable {
  let group: EventLoopGroup
  let conns: Mutex<[Endpoint: EventLoopFuture<DataPlaneConnection>]> = Mutex([:])
  public init(group: EventLoopGroup) { self.group = group }

  public func connection(_ endpoint: Endpoint) -> EventLoopFuture<DataPlaneConnection> {
    conns.withLock { m in
      if let f = m[endpoint] { return f }
      let f = DataPlaneConnection.connect(group: group, to: endpoint)
      m[endpoint] = f
      f.whenComplete { [self] r in
        switch r {
        case .success(let c): c.onClose { _ in self.drop(endpoint, f) }
        case .failure: self.drop(endpoint, f)
        }
      }
      return f
    }
  }

  private func drop(_ endpoint: Endpoint, _ f: EventLoopFuture<DataPlaneConnection>) {
    conns.withLock { m in if m[endpoint] === f { m[endpoint] = nil } }
  }

  /// Sends a request, connecting first if needed; errors arrive through `callback`.
  public func request(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body,
                      callback: @escaping DataPlaneConnection.Callback) {
    connection(endpoint).whenComplete { r in
      switch r {
      case .success(let c): c.request(body, callback: callback)
      case .failure(let e):
        callback(.failure(SwiftrayError(.system, "cannot connect to \(endpoint): \(e)")))
      }
    }
  }

  public func closeAll() {
    let all = conns.withLock { m in let v = Array(m.values); m.removeAll(); return v }
    for f in all { f.whenSuccess { $0.close() } }
  }
}
