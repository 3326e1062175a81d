import Foundation
import NIOCore
import NIOPosix
import NIOExtras
import NIOSSL
import RuntimeProto
import Synchronization

/// The data plane (DESIGN §5): persistent connections carrying length-prefixed
/// `DataFrame` protobufs, many requests in flight, replies matched by `id`.
/// Callback-based on purpose: a task push is a write and a dictionary insert, with no
/// async hop on the hot path.
public enum DataPlane {
  /// TLS side of a connection's pipeline.
  enum TLSRole { case none, server(ClusterTLS), client(ClusterTLS) }

  /// `gate`: on a server's connections, the cluster token the peer must show first
  /// (a connection without one is a client's, which sends keep-alives: `PeerLiveness`);
  /// `tls`: the TLS handler that goes before everything (TCP with TLS on).
  static func configure(_ channel: Channel, handler: ChannelHandler, gate: ClusterAuth? = nil,
                        tls: TLSRole = .none) -> EventLoopFuture<Void> {
    channel.eventLoop.makeCompletedFuture {
      let sync = channel.pipeline.syncOperations
      switch tls {
      case .none: break
      case .server(let t): try sync.addHandler(t.serverHandler())
      case .client(let t): try sync.addHandler(t.clientHandler())
      }
      let limits = NetworkLimits.current
      try sync.addHandler(PeerLiveness(keepAlive: .milliseconds(Int64(limits.keepAliveMs)),
                                       idleTimeout: .milliseconds(Int64(limits.idleTimeoutMs)),
                                       pings: gate == nil))
      if let gate { try sync.addHandler(AuthGate(gate, timeout: NetworkLimits.current.handshakeTimeout)) }
      try sync.addHandler(ByteToMessageHandler(BoundedFrameDecoder(max: NetworkLimits.current.maxFrameBytes)))
      try sync.addHandler(LengthFieldPrepender(lengthFieldBitLength: .fourBytes))
      try sync.addHandler(handler)
    }
  }

  static func encode(_ frame: Swiftray_DataFrame, allocator: ByteBufferAllocator) -> ByteBuffer? {
    guard let bytes: [UInt8] = try? frame.serializedBytes() else { return nil }
    return allocator.buffer(bytes: bytes)
  }

  /// Why a frame of `size` bytes may not be sent (the peer would close the connection
  /// on it), or nil.
  static func tooLarge(_ size: Int) -> String? {
    let max = NetworkLimits.current.maxFrameBytes
    guard size > max else { return nil }
    return "a data-plane message of \(size) bytes exceeds max_data_plane_frame_bytes (\(max)): "
      + "pass large values as object refs (swiftray.put) rather than as many inline arguments or returns, "
      + "or raise the limit on every node"
  }

  static func decode(_ buffer: ByteBuffer) -> Swiftray_DataFrame? {
    buffer.withUnsafeReadableBytes { raw in
      try? Swiftray_DataFrame(serializedBytes: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!), count: raw.count, deallocator: .none))
    }
  }
}

/// The first handler of every data-plane connection a server accepts: the peer must
/// first send one length-prefixed preamble (`"SRA1"` and the cluster token; the token is
/// empty when authentication is disabled, and then anything is accepted). Until it has,
/// nothing reaches the frame decoder; a wrong token, anything else first, more than a
/// preamble can hold, or nothing within `timeout` closes the connection. Then the gate
/// leaves the pipeline and passes on what followed the preamble.
///
/// Threading: one per channel, only touched on its event loop.
final class AuthGate: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer
  static let magic: [UInt8] = Array("SRA1".utf8)

  /// What a client sends first (the prepender adds the length).
  static func preamble(_ auth: ClusterAuth) -> [UInt8] { magic + (auth.token ?? []) }

  let auth: ClusterAuth
  let timeout: TimeAmount
  var received: ByteBuffer?
  var timer: ScheduledTimer?
  var passed = false

  init(_ auth: ClusterAuth, timeout: TimeAmount) { self.auth = auth; self.timeout = timeout }

  func handlerAdded(context: ChannelHandlerContext) {
    let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
    timer = Clocks.current.schedule(after: .nanoseconds(timeout.nanoseconds), on: context.eventLoop) { ctx.value.close(promise: nil) }
  }

  func handlerRemoved(context: ChannelHandlerContext) { timer?.cancel() }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    guard !passed else { return context.fireChannelRead(data) }
    var chunk = unwrapInboundIn(data)
    if received == nil { received = chunk } else { received!.writeBuffer(&chunk) }
    guard var buf = received, let length = buf.getInteger(at: buf.readerIndex, as: UInt32.self) else { return }
    guard length >= UInt32(Self.magic.count), length <= UInt32(Self.magic.count + ClusterAuth.maximumLength) else {
      return context.close(promise: nil)
    }
    guard buf.readableBytes >= 4 + Int(length) else { return }  // wait for the rest of it
    buf.moveReaderIndex(forwardBy: 4)
    let body = buf.readBytes(length: Int(length)) ?? []
    guard Array(body.prefix(Self.magic.count)) == Self.magic, auth.accepts(body.dropFirst(Self.magic.count)) else {
      return context.close(promise: nil)
    }
    passed = true
    received = nil
    timer?.cancel()
    // What followed the preamble goes on first, then the gate leaves (reads in between
    // pass through it, `passed`).
    if buf.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(buf)) }
    context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
  }

  func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// Replies to one request. Threading: may be used from any thread, once.
public struct DataPlaneResponder: Sendable {
  /// Where the reply goes: the request's connection, or its `MemoryNetwork` caller.
  enum Peer: Sendable {
    case channel(Channel)
    case memory(MemoryReply)
    /// A lane (`Lane`); `wake` tells its poller when a reply waits for the socket.
    case lane(LaneSocket, wake: Wakeup)
  }
  let peer: Peer
  let id: UInt64

  init(channel: Channel, id: UInt64) { peer = .channel(channel); self.id = id }
  init(memory: MemoryReply) { peer = .memory(memory); id = memory.id }
  init(lane: LaneSocket, id: UInt64, wake: Wakeup) { peer = .lane(lane, wake: wake); self.id = id }

  /// The lane the reply goes by, if it goes by one.
  var laneSocket: LaneSocket? {
    if case .lane(let socket, _) = peer { return socket }
    return nil
  }

  /// The reply's frame as its lane carries it (one that would be too large becomes an
  /// error reply saying so); nil when it cannot be encoded.
  func laneFrame(_ body: Swiftray_DataFrame.OneOf_Body) -> [UInt8]? {
    var f = Swiftray_DataFrame()
    f.id = id
    f.body = body
    guard let bytes = Lane.encode(f) else { return nil }
    guard let why = DataPlane.tooLarge(bytes.count - 4) else { return bytes }
    f.body = .error(.with { $0.message = why })
    return Lane.encode(f)
  }

  public func respond(_ body: Swiftray_DataFrame.OneOf_Body) {
    LockDiscipline.mustNotHoldLock("DataPlaneResponder.respond")
    if case .lane(let socket, let wake) = peer {
      guard let bytes = laneFrame(body) else { return }
      // Written from this thread; what the socket does not take now its poller sends.
      if socket.write(bytes) == .queued { wake.signal() }
      return
    }
    var f = Swiftray_DataFrame()
    f.id = id
    f.body = body
    guard var buf = DataPlane.encode(f, allocator: allocator) else { return }
    if let why = DataPlane.tooLarge(buf.readableBytes) {
      // The requester gets an error it can show instead of a connection its peer closes.
      f.body = .error(.with { $0.message = why })
      guard let small = DataPlane.encode(f, allocator: allocator) else { return }
      buf = small
    }
    switch peer {
    case .channel(let channel): channel.writeAndFlush(NIOAny(buf), promise: nil)
    case .memory(let reply): DataPlane.decode(buf).map { reply.send($0, payload: nil) }
    case .lane: break  // answered above
    }
  }

  /// Runs `cb` once the requester's connection closes (at once if it has; on its
  /// event loop): a subscription's end. Never for a memory peer or a lane, which carry
  /// no subscriptions. No lock held.
  public func onPeerClose(_ cb: @escaping @Sendable () -> Void) {
    LockDiscipline.mustNotHoldLock("DataPlaneResponder.onPeerClose")
    if case .channel(let ch) = peer { ch.closeFuture.whenComplete { _ in cb() } }
  }

  /// Allocates buffers for `respond(_:payload:)` on this connection.
  public var allocator: ByteBufferAllocator {
    switch peer {
    case .channel(let channel): return channel.allocator
    case .memory, .lane: return ByteBufferAllocator()
    }
  }

  /// Replies with raw bytes after the frame (an object chunk): both frames are written
  /// in one event-loop task, so no other reply lands between them.
  public func respond(_ body: Swiftray_DataFrame.OneOf_Body, payload: ByteBuffer) {
    LockDiscipline.mustNotHoldLock("DataPlaneResponder.respond")
    var f = Swiftray_DataFrame()
    f.id = id
    f.body = body
    f.payloadSize = UInt64(max(payload.readableBytes, 1))
    guard case .channel(let ch) = peer else {
      switch peer {
      case .memory(let reply): reply.send(f, payload: payload)
      case .lane: respond(.error(.with { $0.message = "a lane carries no object chunks" }))
      case .channel: break
      }
      return
    }
    guard let header = DataPlane.encode(f, allocator: ch.allocator) else { return }
    // An empty payload still sends one byte so the receiver's frame pairing holds.
    let raw = payload.readableBytes > 0 ? payload : ch.allocator.buffer(bytes: [0])
    ch.eventLoop.execute {
      ch.write(NIOAny(header), promise: nil)
      ch.writeAndFlush(NIOAny(raw), promise: nil)
    }
  }
}

/// Serves requests on a Unix socket or TCP port (or a `MemoryNetwork` name). The handler
/// is called on a NIO event loop thread and must not block: it answers through the
/// responder, now or later.
public final class DataPlaneServer: Sendable {
  public typealias Handler = @Sendable (Swiftray_DataFrame, DataPlaneResponder) -> Void
  /// The listening socket (nil on a memory endpoint).
  let channel: Channel?
  public let endpoint: Endpoint
  /// Caps this listener's open connections (`max_connections_per_listener`).
  let limiter: ConnectionLimiter

  /// A served connection's pipeline on `channel`, for `ForkWarmUp`: keep-alives are
  /// answered, anything else goes nowhere.
  static func configureForWarmUp(_ channel: Channel, auth: ClusterAuth) -> EventLoopFuture<Void> {
    DataPlane.configure(channel, handler: ServerHandler({ _, _ in }), gate: auth)
  }

  private final class ServerHandler: ChannelInboundHandler, @unchecked Sendable {
    // Only touched on the channel's event loop.
    typealias InboundIn = ByteBuffer
    let handler: Handler
    init(_ h: @escaping Handler) { handler = h }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      guard let frame = DataPlane.decode(unwrapInboundIn(data)) else { context.close(promise: nil); return }
      if case .keepAlive? = frame.body {
        // Answered here, on the event loop, so a busy or blocked handler never makes
        // its connection look dead.
        return DataPlaneResponder(channel: context.channel, id: frame.id).respond(.keepAlive(.init()))
      }
      handler(frame, DataPlaneResponder(channel: context.channel, id: frame.id))
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
  }

  /// Every connection must open with `auth`'s token (`AuthGate`) before a frame is read,
  /// and on TCP with `auth.tls` complete a mutual-TLS handshake before that.
  public init(group: EventLoopGroup, endpoint: Endpoint, auth: ClusterAuth, handler: @escaping Handler) throws {
    let tls: DataPlane.TLSRole = auth.tls(for: endpoint).map { .server($0) } ?? .none
    let limiter = ConnectionLimiter(cap: NetworkLimits.current.maxConnectionsPerListener)
    self.limiter = limiter
    let bootstrap = ServerBootstrap(group: group)
      .serverChannelOption(.backlog, value: 256)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
      .childChannelInitializer { ch in
        guard limiter.admit(ch) else { return ch.eventLoop.makeSucceededVoidFuture() }
        return DataPlane.configure(ch, handler: ServerHandler(handler), gate: auth, tls: tls)
      }
    switch endpoint {
    case .unix(let path):
      unlink(path)
      channel = try bootstrap.bind(unixDomainSocketPath: path).wait()
      chmod(path, 0o600)  // this user's processes only (its folder is 0700 too)
      self.endpoint = endpoint
    case .tcp(let host, let port):
      let ch = try bootstrap.bind(host: host, port: port).wait()
      channel = ch
      self.endpoint = .tcp(host: host, port: ch.localAddress?.port ?? port)
    case .memory(let name):
      try MemoryNetwork.shared.serveData(name, loop: group.next(), handler: handler)
      channel = nil
      self.endpoint = endpoint
    }
  }

  public func close() {
    try? channel?.close().wait()
    switch endpoint {
    case .unix(let path): unlink(path)
    case .memory(let name): MemoryNetwork.shared.closeData(name)
    case .tcp: break
    }
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
    /// Called with every frame of its id until the connection closes (then once with
    /// the error): a subscription, such as a registration with a node (`register_worker`).
    case stream(Callback)
    func fail(_ e: SwiftrayError) {
      switch self {
      case .frame(let cb), .stream(let cb): cb(.failure(e))
      case .withPayload(let cb): cb(.failure(e))
      }
    }
    func succeed(_ frame: Swiftray_DataFrame, payload: ByteBuffer?) {
      switch self {
      case .frame(let cb), .stream(let cb): cb(.success(frame))
      case .withPayload(let cb): cb(.success((frame, payload)))
      }
    }
    /// Taken out of its table by the first frame (else it stays for the next).
    var once: Bool {
      if case .stream = self { return false }
      return true
    }
  }
  let channel: Channel
  let state: Locked<State>
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

  /// A connection's pipeline on `channel`, for `ForkWarmUp` (no connection behind it).
  static func configureForWarmUp(_ channel: Channel) -> EventLoopFuture<Void> {
    DataPlane.configure(channel, handler: ClientHandler())
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
    self.channel = channel; self.endpoint = endpoint; self.state = Locked(State())
  }

  /// Connects without blocking; the future completes on the event loop.
  /// Opens a connection that shows `auth`'s token first (`AuthGate.preamble`), inside
  /// mutual TLS on TCP when `auth.tls` is set (writes wait for the handshake).
  public static func connect(group: EventLoopGroup, to endpoint: Endpoint, auth: ClusterAuth) -> EventLoopFuture<DataPlaneConnection> {
    LockDiscipline.mustNotHoldLock("DataPlaneConnection.connect")
    let handler = ClientHandler()
    let tls: DataPlane.TLSRole = auth.tls(for: endpoint).map { .client($0) } ?? .none
    let bootstrap = ClientBootstrap(group: group)
      .channelOption(.socketOption(.tcp_nodelay), value: 1)
      .connectTimeout(.seconds(10))
      .channelInitializer { ch in DataPlane.configure(ch, handler: handler, tls: tls) }
    let f: EventLoopFuture<Channel>
    switch endpoint {
    case .unix(let p): f = bootstrap.connect(unixDomainSocketPath: p)
    case .tcp(let h, let p): f = bootstrap.connect(host: h, port: p)
    case .memory:
      return group.next().makeFailedFuture(SwiftrayError(.system, "\(endpoint) is reached through a DataPlaneClientPool"))
    }
    return f.map { ch in
      // On the event loop, before the connection is handed out: the token goes first.
      ch.writeAndFlush(NIOAny(ch.allocator.buffer(bytes: AuthGate.preamble(auth))), promise: nil)
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
    LockDiscipline.mustNotHoldLock("DataPlaneConnection.request")
    var f = Swiftray_DataFrame()
    f.body = body
    enum Step { case failed(SwiftrayError), queued(schedule: Bool), unencodable, tooLarge(String) }
    let step: Step = state.withLock { s in
      if let e = s.closed { return .failed(e) }
      f.id = s.nextID
      guard let buf = DataPlane.encode(f, allocator: channel.allocator) else { return .unencodable }
      if let why = DataPlane.tooLarge(buf.readableBytes) { return .tooLarge(why) }
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
    case .tooLarge(let why):
      channel.eventLoop.execute { waiter.fail(SwiftrayError(.invalidArgument, why)) }
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
    LockDiscipline.mustNotHoldLock("DataPlaneConnection.onClose")
    let closed: SwiftrayError? = state.withLock { s in
      if s.closed == nil { s.onClose.append(cb) }
      return s.closed
    }
    if let e = closed { cb(e) }
  }

  public func close() {
    LockDiscipline.mustNotHoldLock("DataPlaneConnection.close")
    channel.close(promise: nil)
  }

  /// On the event loop: a reply arrived; its waiter is called back (so no lock may be
  /// held here: one would mean a channel operation ran this inline under it).
  func deliver(_ frame: Swiftray_DataFrame, payload: ByteBuffer?) {
    LockDiscipline.mustNotHoldLock("a data-plane reply callback")
    let waiter = state.withLock { s in
      let w = s.pending.removeValue(forKey: frame.id)
      if let w, !w.once { s.pending[frame.id] = w }
      return w
    }
    waiter?.succeed(frame, payload: payload)
  }

  func failAll(_ error: SwiftrayError) {
    LockDiscipline.mustNotHoldLock("a data-plane failure callback")
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
/// Threading: any thread; callbacks run on event loops, never inline in `request`.
public final class DataPlaneClientPool: Sendable {
  typealias Queued = (Swiftray_DataFrame.OneOf_Body, DataPlaneConnection.Waiter)
  enum Phase {
    /// The connect is in flight (`attempt` tells a stale completion apart).
    case connecting(attempt: UInt64)
    /// Connected, and the requests that waited are being handed to it (outside the
    /// lock); requests made meanwhile still queue behind them, so order holds.
    case draining(DataPlaneConnection)
    case connected(DataPlaneConnection)
  }
  /// An endpoint's connection and the requests waiting for it, in call order (appended
  /// in place: no copy of the queue per request).
  struct Entry {
    var phase: Phase
    var queued: [Queued] = []
  }
  struct State {
    var entries: [Endpoint: Entry] = [:]
    var nextAttempt: UInt64 = 1
  }
  let group: EventLoopGroup
  let auth: ClusterAuth
  let state = Locked(State())
  /// Connections show `auth`'s token first.
  public init(group: EventLoopGroup, auth: ClusterAuth) { self.group = group; self.auth = auth }

  /// Sends a request, connecting first if needed; errors arrive through `callback`.
  public func request(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body,
                      callback: @escaping DataPlaneConnection.Callback) {
    request(endpoint, body, .frame(callback))
  }

  /// Sends `body` and calls `callback` with every frame answering it, until the
  /// connection closes (then once with its error). Callbacks run on an event loop, in
  /// the order the frames came.
  public func subscribe(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body,
                        callback: @escaping DataPlaneConnection.Callback) {
    request(endpoint, body, .stream(callback))
  }

  /// As `request`, for a reply that may carry raw bytes (object chunks). With
  /// `deadline`, a reply that has not come by then fails the request with `.timedOut`
  /// naming the peer (a late reply is then dropped): a peer that accepted the request
  /// and went silent, without closing its connection, holds nothing up.
  public func requestWithPayload(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body,
                                 deadline: TimeAmount? = nil,
                                 callback: @escaping DataPlaneConnection.PayloadCallback) {
    guard let deadline else { return request(endpoint, body, .withPayload(callback)) }
    let once = ReplyOnce()
    Clocks.current.schedule(after: .nanoseconds(deadline.nanoseconds)) {
      guard once.claim() else { return }
      callback(.failure(SwiftrayError(.system,
        "\(endpoint) did not answer within \(deadline.nanoseconds / 1_000_000) ms")))
    }
    request(endpoint, body, .withPayload({ r in if once.claim() { callback(r) } }))
  }

  func request(_ endpoint: Endpoint, _ body: Swiftray_DataFrame.OneOf_Body, _ waiter: DataPlaneConnection.Waiter) {
    LockDiscipline.mustNotHoldLock("DataPlaneClientPool.request")
    if case .memory(let name) = endpoint {
      return MemoryNetwork.shared.request(name, body, waiter, fallback: group.next())
    }
    enum Step { case send(DataPlaneConnection), queued, connect(UInt64) }
    let step: Step = state.withLock { s in
      switch s.entries[endpoint]?.phase {
      case .connected(let c)?:
        return .send(c)
      case .draining?, .connecting?:
        s.entries[endpoint]!.queued.append((body, waiter))
        return .queued
      case nil:
        let attempt = s.nextAttempt
        s.nextAttempt += 1
        s.entries[endpoint] = Entry(phase: .connecting(attempt: attempt), queued: [(body, waiter)])
        return .connect(attempt)
      }
    }
    switch step {
    case .send(let c): c.request(body, waiter)
    case .queued: break
    case .connect(let attempt):
      // Outside the lock: the completion may run inline (a connect that fails or
      // succeeds at once on this event loop) and takes the lock.
      DataPlaneConnection.connect(group: group, to: endpoint, auth: auth).whenComplete { [self] r in
        connectFinished(endpoint, attempt: attempt, r)
      }
    }
  }

  /// Calls `closed` once the connection to `endpoint` closes, connecting first if
  /// needed (at once if that fails). The connection's keep-alives make it close when
  /// the peer stops answering (`data_plane_idle_timeout_ms`) even though its socket
  /// stays open, as a stopped process's does: a lane to that peer uses it as its witness.
  public func watch(_ endpoint: Endpoint, closed: @escaping @Sendable (SwiftrayError) -> Void) {
    request(endpoint, .keepAlive(.init()), .frame({ [self] r in
      if case .failure(let e) = r { return closed(e) }
      let c: DataPlaneConnection? = state.withLock { s in
        switch s.entries[endpoint]?.phase {
        case .connected(let c)?, .draining(let c)?: return c
        default: return nil
        }
      }
      guard let c else { return closed(SwiftrayError(.system, "connection lost")) }
      c.onClose(closed)
    }))
  }

  private func connectFinished(_ endpoint: Endpoint, attempt: UInt64, _ r: Result<DataPlaneConnection, Error>) {
    enum Step { case drain(DataPlaneConnection, [Queued]), fail([Queued], Error), stale(DataPlaneConnection?) }
    let step: Step = state.withLock { s in
      guard let e = s.entries[endpoint], case .connecting(let a) = e.phase, a == attempt else {
        // closeAll ran meanwhile (and failed what was queued).
        if case .success(let c) = r { return .stale(c) }
        return .stale(nil)
      }
      switch r {
      case .success(let c):
        s.entries[endpoint] = Entry(phase: .draining(c))
        return .drain(c, e.queued)
      case .failure(let err):
        s.entries[endpoint] = nil
        return .fail(e.queued, err)
      }
    }
    switch step {
    case .drain(let c, let first):
      c.onClose { [self] _ in drop(endpoint, c) }
      drain(endpoint, c, first)
    case .fail(let queued, let e):
      for (_, w) in queued { w.fail(SwiftrayError(.system, "cannot connect to \(endpoint): \(e)")) }
    case .stale(let c):
      c?.close()
    }
  }

  /// The connection of `endpoint` when it is `c` (draining or connected).
  private static func holds(_ e: Entry?, _ c: DataPlaneConnection) -> Bool {
    switch e?.phase {
    case .draining(let x)?, .connected(let x)?: return x === c
    default: return false
    }
  }

  /// Hands the requests that waited for the connection to it, in order, batch after
  /// batch, until none are left; then the entry is plainly connected.
  private func drain(_ endpoint: Endpoint, _ c: DataPlaneConnection, _ first: [Queued]) {
    var batch = first
    while true {
      for (body, w) in batch { c.request(body, w) }
      let next: [Queued]? = state.withLock { s in
        guard Self.holds(s.entries[endpoint], c) else { return nil }
        let queued = s.entries[endpoint]!.queued
        s.entries[endpoint] = Entry(phase: queued.isEmpty ? .connected(c) : .draining(c))
        return queued.isEmpty ? nil : queued
      }
      guard let next else { return }
      batch = next
    }
  }

  private func drop(_ endpoint: Endpoint, _ c: DataPlaneConnection) {
    let orphans: [Queued] = state.withLock { s in
      guard Self.holds(s.entries[endpoint], c) else { return [] }
      return s.entries.removeValue(forKey: endpoint)?.queued ?? []
    }
    // Requests still queued behind a connection that closed: fail them as it failed its own.
    for (body, w) in orphans { c.request(body, w) }
  }

  /// Closes the connection to `endpoint` (its requests in flight fail, and so do those
  /// waiting for it): the peer is known gone, so nothing should wait out a deadline or
  /// a keep-alive for its silence. A later request connects anew.
  public func close(_ endpoint: Endpoint) {
    LockDiscipline.mustNotHoldLock("DataPlaneClientPool.close")
    guard let e = state.withLock({ $0.entries.removeValue(forKey: endpoint) }) else { return }
    Self.close(e, endpoint, why: ": its node is gone")
  }

  /// Closes every connection; requests still waiting for one fail.
  public func closeAll() {
    let all: [Endpoint: Entry] = state.withLock { s in
      defer { s.entries.removeAll() }
      return s.entries
    }
    for (endpoint, e) in all { Self.close(e, endpoint, why: "") }
  }

  /// Closes a removed entry's connection and fails what waited for it. (A connect
  /// still in flight finds no entry of its attempt when it completes, and closes what
  /// it made.)
  private static func close(_ e: Entry, _ endpoint: Endpoint, why: String) {
    switch e.phase {
    case .connected(let c), .draining(let c):
      c.close()
      for (_, w) in e.queued { w.fail(SwiftrayError(.system, "the connection to \(endpoint) was closed\(why)")) }
    case .connecting:
      for (_, w) in e.queued { w.fail(SwiftrayError(.system, "the connection to \(endpoint) was closed before it was made\(why)")) }
    }
  }
}

/// Lets one of a reply and its deadline through. Threading: any thread.
final class ReplyOnce: Sendable {
  private let done = Atomic<Bool>(false)
  /// True for the first caller only.
  func claim() -> Bool { !done.exchange(true, ordering: .acquiringAndReleasing) }
}
