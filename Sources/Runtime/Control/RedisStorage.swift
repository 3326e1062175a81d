import DequeModule
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// `ControlStorage` on a real Redis (Ray's GCS fault tolerance): each table is one Redis
/// hash, `swiftray:<table>`, so a restarted head finds its KV, jobs, nodes and actors.
/// RESP over one SwiftNIO connection, pipelined (Redis answers in order), reconnected
/// on demand; `AUTH` first when a password is set. `rediss://HOST:PORT` speaks TLS,
/// trusting `SWIFTRAY_REDIS_CA_CERT` (else the system's roots) and showing
/// `SWIFTRAY_REDIS_CLIENT_CERT`/`_KEY` when Redis asks for a client certificate (Ray's
/// `RAY_REDIS_*` names too).
///
/// Threading: any task; the connection's reply queue is behind a lock.
public final class RedisControlStorage: ControlStorage {
  public let host: String
  public let port: Int
  let password: String?
  let group: EventLoopGroup
  /// Set for `rediss://`: the context every connection's TLS handler is made from.
  let tls: NIOSSLContext?
  let current = Locked<Conn?>(nil)
  /// Deadline of each command (`redis_command_timeout_ms`).
  let commandTimeoutMs: Int

  public init(address: String, password: String? = nil, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
              environment: [String: String] = ProcessInfo.processInfo.environment,
              commandTimeoutMs: Int = Config().redisCommandTimeoutMs) throws(SwiftrayError) {
    self.commandTimeoutMs = commandTimeoutMs
    var rest = Substring(address)
    var useTLS = false
    if rest.hasPrefix("rediss://") { rest = rest.dropFirst(9); useTLS = true }
    else if rest.hasPrefix("redis://") { rest = rest.dropFirst(8) }
    guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
      (1...65535).contains(port), colon > rest.startIndex
    else {
      throw SwiftrayError(.invalidArgument, "bad Redis address '\(address)': use HOST:PORT (e.g. 127.0.0.1:6379), "
        + "or rediss://HOST:PORT for TLS")
    }
    self.host = String(rest[..<colon])
    self.port = port
    self.password = password?.isEmpty == false ? password : nil
    self.group = group
    self.tls = useTLS ? try Self.tlsContext(environment) : nil
  }

  /// The client TLS context for `rediss://`: the server's certificate must chain to the
  /// CA given (or the system's roots) and name the host or IP address connected to.
  static func tlsContext(_ environment: [String: String]) throws(SwiftrayError) -> NIOSSLContext {
    func value(_ name: String) -> String? {
      for key in ["SWIFTRAY_" + name, "RAY_" + name] { if let v = environment[key], !v.isEmpty { return v } }
      return nil
    }
    var config = TLSConfiguration.makeClientConfiguration()
    do {
      if let ca = value("REDIS_CA_CERT") { config.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
      switch (value("REDIS_CLIENT_CERT"), value("REDIS_CLIENT_KEY")) {
      case (let cert?, let key?):
        config.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
        config.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
      case (nil, nil): break
      default:
        throw SwiftrayError(.invalidArgument, "set both SWIFTRAY_REDIS_CLIENT_CERT and SWIFTRAY_REDIS_CLIENT_KEY, or neither")
      }
      return try NIOSSLContext(configuration: config)
    } catch let e as SwiftrayError {
      throw e
    } catch {
      throw SwiftrayError(.invalidArgument, "cannot set up TLS to Redis (SWIFTRAY_REDIS_CA_CERT, _CLIENT_CERT, _CLIENT_KEY): \(error)")
    }
  }

  /// Connects (and authenticates) now, so a wrong address or password fails at start.
  public func check() async throws {
    guard case .simple("PONG") = try await call(RESP.command("PING")) else {
      throw SwiftrayError(.system, "Redis at \(host):\(port) did not answer PING")
    }
  }

  static func key(_ table: String) -> Data { Data(("swiftray:" + table).utf8) }

  public func put(_ table: String, _ key: Data, _ value: Data, overwrite: Bool) async throws -> Bool {
    let cmd = Data((overwrite ? "HSET" : "HSETNX").utf8)
    let r = try await call(RESP.command([cmd, Self.key(table), key, value]))
    guard case .integer(let n) = r else { throw SwiftrayError(.system, "unexpected Redis reply \(r)") }
    return overwrite || n == 1
  }

  public func get(_ table: String, _ key: Data) async throws -> Data? {
    let r = try await call(RESP.command([Data("HGET".utf8), Self.key(table), key]))
    guard case .bulk(let v) = r else { throw SwiftrayError(.system, "unexpected Redis reply \(r)") }
    return v
  }

  public func delete(_ table: String, _ key: Data) async throws {
    _ = try await call(RESP.command([Data("HDEL".utf8), Self.key(table), key]))
  }

  public func getAll(_ table: String) async throws -> [Data: Data] {
    let r = try await call(RESP.command([Data("HGETALL".utf8), Self.key(table)]))
    guard case .array(let items?) = r, items.count % 2 == 0 else { throw SwiftrayError(.system, "unexpected Redis reply \(r)") }
    var out: [Data: Data] = [:]
    for i in stride(from: 0, to: items.count, by: 2) {
      if case .bulk(let k?) = items[i], case .bulk(let v?) = items[i + 1] { out[k] = v }
    }
    return out
  }

  /// Sends one command and waits for its reply; a Redis error reply throws.
  func call(_ command: [UInt8]) async throws -> RESPValue {
    let conn = try await connection()
    let r = try await conn.send(command)
    if case .error(let e) = r { throw SwiftrayError(.system, "Redis at \(host):\(port): \(e)") }
    return r
  }

  enum Conn { case connecting(EventLoopFuture<RedisConnection>), ready(RedisConnection) }

  func connection() async throws -> RedisConnection {
    enum Next { case ready(RedisConnection), wait(EventLoopFuture<RedisConnection>), connect(EventLoopPromise<RedisConnection>) }
    var next: Next
    while true {
      next = current.withLock { c in
        switch c {
        case .ready(let conn)?: return .ready(conn)
        case .connecting(let f)?: return .wait(f)
        case nil:
          // A promise only, here: the connect starts once the lock is released.
          let p = group.next().makePromise(of: RedisConnection.self)
          c = .connecting(p.futureResult)
          return .connect(p)
        }
      }
      // A closed connection is forgotten (checked outside this lock: locks are leaves),
      // and the next round makes or waits for a new one.
      guard case .ready(let conn) = next, conn.isClosed else { break }
      current.withLock { c in if case .ready(let x)? = c, x === conn { c = nil } }
    }
    let f: EventLoopFuture<RedisConnection>
    switch next {
    case .ready(let conn): return conn
    case .wait(let g): f = g
    case .connect(let p):
      RedisConnection.connect(group: group, host: host, port: port, password: password, tls: tls,
                              replyTimeout: .milliseconds(Int64(commandTimeoutMs))).cascade(to: p)
      f = p.futureResult
    }
    do {
      let conn = try await f.get()
      current.withLock { c in if case .connecting(let g)? = c, g === f { c = .ready(conn) } }
      return conn
    } catch {
      current.withLock { c in if case .connecting(let g)? = c, g === f { c = nil } }
      throw SwiftrayError(.system, "cannot reach Redis at \(host):\(port): \(error)")
    }
  }
}

/// One pipelined RESP connection: replies are matched to requests in order.
final class RedisConnection: Sendable {
  let channel: Channel
  /// How long a reply may take: a Redis that stops answering (without closing TCP) has
  /// its connection closed, which fails every command waiting on it; the next command
  /// connects again. (A pipelined connection cannot skip one late reply.)
  let replyTimeout: TimeAmount
  struct State {
    var waiting: Deque<CheckedContinuation<RESPValue, Error>> = []
    /// Commands sent and replies delivered so far: a deadline checks its command's turn.
    var sent: UInt64 = 0
    var delivered: UInt64 = 0
    /// Commands in the order their waiters were queued, written by one event-loop task.
    var outbox: [[UInt8]] = []
    var flushScheduled = false
    var closed = false
  }
  let state = Locked(State())

  init(channel: Channel, replyTimeout: TimeAmount) { self.channel = channel; self.replyTimeout = replyTimeout }

  var isClosed: Bool { state.withLock { $0.closed } }

  static func connect(group: EventLoopGroup, host: String, port: Int, password: String?,
                      tls: NIOSSLContext?, replyTimeout: TimeAmount) -> EventLoopFuture<RedisConnection> {
    let handler = ReplyHandler()
    // SNI takes a host name only; for an IP address NIOSSL checks the certificate
    // against the address connected to.
    let isIP = host.allSatisfy { $0.isHexDigit || $0 == "." || $0 == ":" }
    return ClientBootstrap(group: group)
      .channelOption(.socketOption(.tcp_nodelay), value: 1)
      .connectTimeout(.seconds(5))
      .channelInitializer { ch in
        ch.eventLoop.makeCompletedFuture {
          if let tls {
            try ch.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: isIP ? nil : host))
          }
          try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(Decoder()))
          try ch.pipeline.syncOperations.addHandler(handler)
        }
      }
      .connect(host: host, port: port)
      .flatMap { ch in
        let c = RedisConnection(channel: ch, replyTimeout: replyTimeout)
        handler.conn = c
        guard let password else { return ch.eventLoop.makeSucceededFuture(c) }
        let p = ch.eventLoop.makePromise(of: RedisConnection.self)
        p.completeWithTask {
          let r = try await c.send(RESP.command("AUTH", password))
          if case .error(let e) = r { c.close(); throw SwiftrayError(.invalidArgument, "Redis refused the password: \(e)") }
          return c
        }
        return p.futureResult
      }
  }

  func send(_ command: [UInt8]) async throws -> RESPValue {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<RESPValue, Error>) in
      // Waiter and command queued in one critical section, written in that order by
      // the event loop: replies come back in write order.
      enum Step { case closed, queued(flush: Bool, turn: UInt64) }
      let step: Step = state.withLock { s in
        if s.closed { return .closed }
        s.waiting.append(c)
        s.outbox.append(command)
        s.sent += 1
        defer { s.flushScheduled = true }
        return .queued(flush: !s.flushScheduled, turn: s.sent)
      }
      switch step {
      case .closed: c.resume(throwing: SwiftrayError(.system, "the Redis connection is closed"))
      case .queued(let flush, let turn):
        if flush { channel.eventLoop.execute { self.flushOutbox() } }
        Clocks.current.schedule(after: .nanoseconds(replyTimeout.nanoseconds), on: channel.eventLoop) { [self] in
          guard state.withLock({ $0.delivered < turn && !$0.closed }) else { return }
          failAll("Redis did not answer within \(replyTimeout.nanoseconds / 1_000_000) ms")
          close()
        }
      }
    }
  }

  /// On the channel's event loop: writes every queued command, then flushes once.
  private func flushOutbox() {
    let commands = state.withLock { s in
      s.flushScheduled = false
      defer { s.outbox.removeAll(keepingCapacity: true) }
      return s.outbox
    }
    for command in commands { channel.write(NIOAny(channel.allocator.buffer(bytes: command)), promise: nil) }
    channel.flush()
  }

  func close() { channel.close(promise: nil) }

  func deliver(_ v: RESPValue) {
    state.withLock { s in
      s.delivered += 1
      return s.waiting.popFirst()
    }?.resume(returning: v)
  }

  func failAll(_ why: String) {
    let w = state.withLock { s -> Deque<CheckedContinuation<RESPValue, Error>> in
      s.closed = true
      s.outbox.removeAll()
      let w = s.waiting
      s.waiting.removeAll()
      return w
    }
    for c in w { c.resume(throwing: SwiftrayError(.system, why)) }
  }

  struct Decoder: ByteToMessageDecoder {
    typealias InboundOut = RESPValue
    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
      guard let (v, n) = try RESP.parse(buffer.readableBytesView) else { return .needMoreData }
      buffer.moveReaderIndex(forwardBy: n)
      context.fireChannelRead(NIOAny(v))
      return .continue
    }
    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
      try decode(context: context, buffer: &buffer)
    }
  }

  final class ReplyHandler: ChannelInboundHandler, @unchecked Sendable {
    // Only touched on the channel's event loop; `conn` is set before the first read.
    typealias InboundIn = RESPValue
    weak var conn: RedisConnection?
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { conn?.deliver(unwrapInboundIn(data)) }
    func channelInactive(context: ChannelHandlerContext) { conn?.failAll("the Redis connection closed") }
    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
  }
}
