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

  /// Allocates buffers for `respond(_:payload:)` on this connection.
  public var allocator: ByteBufferAllocator { channel.allocator }

  /// Replies with raw bytes after the frame (an object chunk): both frames are written
  /// in one event-loop task, so no other reply lands between them.
  public func respond(_ body: Swiftray_DataFrame.OneOf_Body, payload: ByteBuffer) {
    var f = Swiftray_DataFrame()
    f.id = id
    f.body = body
    f.payloadSize = UInt64(max(payload.readableBytes, 1))
    guard let header = DataPlane.encode(f, allocator: channel.allocator) else { return }
    // An empty payload still sends one byte so the receiver's frame pairing holds.
    let raw = payload.readableBytes > 0 ? payload : channel.allocator.buffer(bytes: [0])
    let ch = channel
    ch.eventLoop.execute {
      ch.write(NIOAny(header), promise: nil)
      ch.writeAndFlush(NIOAny(raw), promise: nil)
    }
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
  /// A reply with the raw bytes that followed it (`DataPlaneResponder.respond(_:payload:)`).
  public typealias PayloadCallback = @Sendable (Result<(Swiftray_DataFrame, ByteBuffer?), SwiftrayError>) -> Void
  /// Who waits for a reply; two cases so the per-task path wraps no closure.
  public enum Waiter: Sendable {
    case frame(Callback)
    case withPayload(PayloadCallback)
    func fail(_ e: SwiftrayError) {
      switch self {
      case .frame(let cb): cb(.failure(e))
      case .withPayload(let cb): cb(.failure(e))
      }
    }
  }
  let channel: Channel
  let state: Mutex<State>
  public let endpoint: Endpoint

  struct State {
    var nextID: UInt64 = 1
    var pending: [UInt64: Waiter] = [:]
    var closed: SwiftrayError?
    var onClose: [@Sendable (SwiftrayError) -> Void] = []
    /// Frames in the order `request` was called, written by one event-loop task.
    var outbox: [ByteBuffer] = []
    var flushScheduled = false
  }

  private final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    // Only touched on the channel's event loop; `conn` is set before the first read.
    typealias InboundIn = ByteBuffer
    weak var conn: DataPlaneConnection?
    /// A reply whose raw payload is the next frame.
    var awaitingPayload: Swiftray_DataFrame?
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      let buf = unwrapInboundIn(data)
      if let header = awaitingPayload {
        awaitingPayload = nil
        conn?.deliver(header, payload: buf)
        return
      }
      guard let frame = DataPlane.decode(buf) else { context.close(promise: nil); return }
      if frame.payloadSize > 0 { awaitingPayload = frame; return }
      conn?.deliver(frame, payload: nil)
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
  /// the error that closed the connection. Frames leave in the order of `request`
  /// calls across all threads (actor calls rely on it): each is queued under the lock
  /// and one event-loop task writes the queue, batching the writes.
  public func request(_ body: Swiftray_DataFrame.OneOf_Body, callback: @escaping Callback) {
    request(body, .frame(callback))
  }

  /// As `request`, for a reply that may carry raw bytes.
  public func requestWithPayload(_ body: Swiftray_DataFrame.OneOf_Body, callback: @escaping PayloadCallback) {
    request(body, .withPayload(callback))
  }

  func request(_ body: Swiftray_DataFrame.OneOf_Body, _ waiter: Waiter) {
    var f = Swiftray_DataFrame()
    f.body = body
    enum Step { case failed(SwiftrayError), queued(schedule: Bool), unencodable }
    let step: Step = state.withLock { s in
      if let e = s.closed { return .failed(e) }
      f.id = s.nextID
      guard let buf = DataPlane.encode(f, allocator: channel.allocator) else { return .unencodable }
      s.nextID += 1
      s.pending[f.id] = waiter
      s.outbox.append(buf)
      let schedule = !s.flushScheduled
      s.flushScheduled = true
      return .queued(schedule: schedule)
    }
    // Failures are reported from the event loop, never inline: callers may hold locks.
    switch step {
    case .failed(let e): channel.eventLoop.execute { waiter.fail(e) }
    case .unencodable:
      channel.eventLoop.execute { waiter.fail(SwiftrayError(.system, "could not encode a data-plane frame")) }
    case .queued(let schedule):
      if schedule { channel.eventLoop.execute { self.flushOutbox() } }
    }
  }

  /// On the channel's event loop: writes every queued frame, then flushes once.
  private func flushOutbox() {
    let frames = state.withLock { s -> [ByteBuffer] in
      s.flushScheduled = false
      let o = s.outbox
      s.outbox.removeAll(keepingCapacity: true)
      return o
    }
    guard !frames.isEmpty else { return }
    for buf in frames { channel.write(NIOAny(buf), promise: nil) }
    channel.flush()
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

  func deliver(_ frame: Swiftray_DataFrame, payload: ByteBuffer?) {
    switch state.withLock({ $0.pending.removeValue(forKey: frame.id) }) {
    case .frame(let cb)?: cb(.success(frame))
    case .withPayload(let cb)?: cb(.success((frame, payload)))
    case nil: break
    }
  }

  func failAll(_ error: SwiftrayError) {
    let (cbs, closers): ([Waiter], [@Sendable (SwiftrayError) -> Void]) = state.withLock { s in
      if s.closed != nil { return ([], []) }
      s.closed = error
      let c = Array(s.pending.values)
      s.pending.removeAll()
      let o = s.onClose
      s.onClose.removeAll()
      return (c, o)
    }
    for w in cbs { w.fail(error) }
    for c in closers { c(error) }
  }
}

/// One connection per endpoint, made on first use and reused. Requests to one endpoint
/// leave in the order `request` was called, also while the connection is being made.
/// Threading: any thread.
public final class DataPlaneClientPool: Sendable {
  enum Entry {
    case connecting(EventLoopFuture<DataPlaneConnection>, [(Swiftray_DataFrame.OneOf_Body, DataPlaneConnection.Waiter)])
    case connected(DataPlaneConnection)
  }
  let group: EventLoopGroup
  let conns: Mutex<[Endpoint: Entry]> = Mutex([:])
  public init(group: EventLoopGroup) { self.group = group }

  /// The connection to `endpoint`, made if needed.
  public func connection(_ endpoint: Endpoint) -> EventLoopFuture<DataPlaneConnection> {
    conns.withLock { m in
      switch m[endpoint] {
      case .connected(let c)?: return c.channel.eventLoop.makeSucceededFuture(c)
      case .connecting(let f, _)?: return f
      case nil: return connect(endpoint, &m)
      }
    }
  }

  private func connect(_ endpoint: Endpoint, _ m: inout [Endpoint: Entry]) -> EventLoopFuture<DataPlaneConnection> {
    let f = DataPlaneConnection.connect(group: group, to: endpoint)
    m[endpoint] = .connecting(f, [])
    f.whenComplete { [self] r in
      // Requests queued while connecting go out first, in order, before the entry
      // becomes visible as connected (both under the lock).
      let failed: [DataPlaneConnection.Waiter] = conns.withLock { m in
        guard case .connecting(let g, let queued)? = m[endpoint], g === f else { return [] }
        switch r {
        case .success(let c):
          m[endpoint] = .connected(c)
          for (body, w) in queued { c.request(body, w) }
          return []
        case .failure:
          m[endpoint] = nil
          return queued.map(\.1)
        }
      }
      switch r {
      case .success(let c): c.onClose { _ in self.drop(endpoint, c) }
      case .failure(let e):
        for w in failed { w.fail(SwiftrayError(.system, "cannot connect to \(endpoint): \(e)")) }
      }
    }
    return f
  }

  private func drop(_ endpoint: Endpoint, _ c: DataPlaneConnection) {
    conns.withLock { m in if case .connected(let x)? = m[endpoint], x === c { m[endpoint] = nil } }
  }

  /// Sends a request, connecting first if needed; errors arrive through `callback`.
  public func request(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body,
                      callback: @escaping DataPlaneConnection.Callback) {
    request(endpoint, body, .frame(callback))
  }

  /// As `request`, for a reply that may carry raw bytes (object chunks).
  public func requestWithPayload(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body,
                                 callback: @escaping DataPlaneConnection.PayloadCallback) {
    request(endpoint, body, .withPayload(callback))
  }

  func request(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body, _ waiter: DataPlaneConnection.Waiter) {
    let direct: DataPlaneConnection? = conns.withLock { m in
      switch m[endpoint] {
      case .connected(let c)?:
        return c
      case .connecting(let f, var queued)?:
        queued.append((body, waiter))
        m[endpoint] = .connecting(f, queued)
        return nil
      case nil:
        _ = connect(endpoint, &m)
        guard case .connecting(let f, var queued)? = m[endpoint] else { return nil }
        queued.append((body, waiter))
        m[endpoint] = .connecting(f, queued)
        return nil
      }
    }
    direct?.request(body, waiter)
  }

  public func closeAll() {
    let all = conns.withLock { m in let v = Array(m.values); m.removeAll(); return v }
    for e in all {
      switch e {
      case .connected(let c): c.close()
      case .connecting(let f, _): f.whenSuccess { $0.close() }
      }
    }
  }
}
