import Foundation
import NIOCore
import Synchronization
import RuntimeProto

/// What one peer may make a listener hold: the largest data-plane frame, connections
/// per listener, and how long a new connection may take to show who it is. Set once per
/// process from its `Config` (`install`), read by every listener and connection.
///
/// Threading: any thread (atomics).
public struct NetworkLimits: Sendable, Equatable {
  /// Largest data-plane frame a peer may send or be sent (`max_data_plane_frame_bytes`):
  /// a longer length prefix closes the connection before any of it is buffered.
  public var maxFrameBytes: Int
  /// Connections one listener keeps open at once (`max_connections_per_listener`);
  /// more are closed as they are accepted.
  public var maxConnectionsPerListener: Int
  /// A new connection must show the cluster token (data plane) or start its HTTP/2
  /// or TLS handshake (gRPC) within this (`connection_handshake_timeout_ms`).
  public var handshakeTimeoutMs: Int
  /// A data-plane client sends a keep-alive this often on each connection it holds
  /// (`data_plane_keepalive_ms`); the server answers it.
  public var keepAliveMs: Int
  /// A data-plane connection on which nothing arrived for this long is closed, on
  /// either side (`data_plane_idle_timeout_ms`): an authenticated peer that went silent
  /// (hung, stopped, or cut off without a FIN) holds neither a slot nor a caller.
  public var idleTimeoutMs: Int

  /// gRPC clients ping a connection with calls in flight after this long without
  /// reading from it (`grpc_client_keepalive_time_ms`); servers ping their clients as
  /// often. A peer that does not answer within `grpcKeepaliveTimeoutMs`
  /// (`grpc_client_keepalive_timeout_ms`) has its connection closed and its calls failed:
  /// a long call (a lease that waits for resources) to a hung node ends.
  public var grpcKeepaliveTimeMs: Int
  public var grpcKeepaliveTimeoutMs: Int

  public init(maxFrameBytes: Int = 16 << 20, maxConnectionsPerListener: Int = 1024, handshakeTimeoutMs: Int = 5000,
              keepAliveMs: Int = 5000, idleTimeoutMs: Int = 30_000,
              grpcKeepaliveTimeMs: Int = 30_000, grpcKeepaliveTimeoutMs: Int = 20_000) {
    self.maxFrameBytes = maxFrameBytes
    self.maxConnectionsPerListener = maxConnectionsPerListener
    self.handshakeTimeoutMs = handshakeTimeoutMs
    self.keepAliveMs = keepAliveMs
    self.idleTimeoutMs = idleTimeoutMs
    self.grpcKeepaliveTimeMs = grpcKeepaliveTimeMs
    self.grpcKeepaliveTimeoutMs = grpcKeepaliveTimeoutMs
  }

  // Atomics, not a lock: `current` is read under other locks (a frame's size check).
  private static let frame = Atomic<Int>(NetworkLimits().maxFrameBytes)
  private static let connections = Atomic<Int>(NetworkLimits().maxConnectionsPerListener)
  private static let handshake = Atomic<Int>(NetworkLimits().handshakeTimeoutMs)
  private static let keepAlive = Atomic<Int>(NetworkLimits().keepAliveMs)
  private static let idle = Atomic<Int>(NetworkLimits().idleTimeoutMs)
  private static let grpcTime = Atomic<Int>(NetworkLimits().grpcKeepaliveTimeMs)
  private static let grpcTimeout = Atomic<Int>(NetworkLimits().grpcKeepaliveTimeoutMs)

  /// This process's limits (the defaults until `install`).
  public static var current: NetworkLimits {
    NetworkLimits(maxFrameBytes: frame.load(ordering: .relaxed),
                  maxConnectionsPerListener: connections.load(ordering: .relaxed),
                  handshakeTimeoutMs: handshake.load(ordering: .relaxed),
                  keepAliveMs: keepAlive.load(ordering: .relaxed), idleTimeoutMs: idle.load(ordering: .relaxed),
                  grpcKeepaliveTimeMs: grpcTime.load(ordering: .relaxed),
                  grpcKeepaliveTimeoutMs: grpcTimeout.load(ordering: .relaxed))
  }

  /// Makes `limits` this process's; listeners and connections made before keep the
  /// ones they read.
  public static func install(_ limits: NetworkLimits) {
    frame.store(limits.maxFrameBytes, ordering: .relaxed)
    connections.store(limits.maxConnectionsPerListener, ordering: .relaxed)
    handshake.store(limits.handshakeTimeoutMs, ordering: .relaxed)
    keepAlive.store(limits.keepAliveMs, ordering: .relaxed)
    idle.store(limits.idleTimeoutMs, ordering: .relaxed)
    grpcTime.store(limits.grpcKeepaliveTimeMs, ordering: .relaxed)
    grpcTimeout.store(limits.grpcKeepaliveTimeoutMs, ordering: .relaxed)
  }

  var handshakeTimeout: TimeAmount { .milliseconds(Int64(handshakeTimeoutMs)) }
}

/// Whether a data-plane connection has heard from its peer lately: it records when
/// bytes last arrived and, on each tick, says whether to send a keep-alive or to give
/// the connection up. Pure (time passed in), so its rules are tested without a clock.
public struct LivenessClock: Sendable, Equatable {
  public enum Action: Sendable, Equatable { case none, sendKeepAlive, close }
  /// Nanoseconds of silence after which the connection is closed.
  public let idleLimit: Int64
  /// Whether this side sends keep-alives (clients do; servers answer them).
  public let pings: Bool
  public private(set) var lastHeard: Int64

  public init(idleLimit: Int64, pings: Bool, now: Int64) { self.idleLimit = idleLimit; self.pings = pings; lastHeard = now }

  /// Bytes arrived (any bytes: a long transfer in progress is life).
  public mutating func heard(at now: Int64) { lastHeard = Swift.max(lastHeard, now) }

  /// The periodic check.
  public func tick(at now: Int64) -> Action {
    let (silence, overflow) = now.subtractingReportingOverflow(lastHeard)
    if !overflow && silence >= idleLimit { return .close }
    return pings ? .sendKeepAlive : .none
  }
}

/// Keeps a connection honest about its peer (`LivenessClock`): a data-plane client
/// writes a `KeepAlive` frame every `keepAlive`; either side closes the connection once
/// nothing has arrived for `idleTimeout`, which fails the requests in flight on it. It
/// sits first in the pipeline so every arriving byte counts. gRPC servers use it too
/// (`pings: false`), with HTTP/2 pings as the clients' keep-alives.
///
/// Threading: one per channel, only touched on its event loop.
final class PeerLiveness: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer
  let period: TimeAmount
  var clock: LivenessClock
  var timer: ScheduledTimer?
  var stopped = false

  /// `pings`: a client's side. A server checks as often as a client pings, so it
  /// notices silence within `idleTimeout` plus one period.
  init(keepAlive: TimeAmount, idleTimeout: TimeAmount, pings: Bool) {
    period = keepAlive
    clock = LivenessClock(idleLimit: idleTimeout.nanoseconds, pings: pings, now: Self.now())
  }

  static func now() -> Int64 { Int64(clamping: Clocks.current.now()) }

  func handlerAdded(context: ChannelHandlerContext) { arm(context) }

  /// One check per period, each arming the next (on the channel's loop) until the
  /// connection closes or the handler leaves.
  func arm(_ context: ChannelHandlerContext) {
    guard !stopped else { return }
    let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
    let me = NIOLoopBound(self, eventLoop: context.eventLoop)
    timer = Clocks.current.schedule(after: .nanoseconds(period.nanoseconds), on: context.eventLoop) {
      let liveness = me.value
      guard !liveness.stopped else { return }
      switch liveness.clock.tick(at: Self.now()) {
      case .none: break
      case .close:
        liveness.stopped = true
        return ctx.value.close(promise: nil)
      case .sendKeepAlive:
        var f = Swiftray_DataFrame()
        f.body = .keepAlive(.init())
        // Through the whole pipeline (the length prepender is behind this handler).
        if let buf = DataPlane.encode(f, allocator: ctx.value.channel.allocator) {
          ctx.value.channel.writeAndFlush(NIOAny(buf), promise: nil)
        }
      }
      liveness.arm(ctx.value)
    }
  }

  func stop() {
    stopped = true
    timer?.cancel()
  }

  func handlerRemoved(context: ChannelHandlerContext) { stop() }

  func channelInactive(context: ChannelHandlerContext) {
    stop()
    context.fireChannelInactive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    clock.heard(at: Self.now())
    context.fireChannelRead(data)
  }
}


/// Counts one listener's open connections and refuses those beyond its cap, so a flood
/// of connections holds at most `cap` file descriptors of the listener's process.
///
/// Threading: any thread (an atomic counter); `admit` runs on the new channel's loop.
final class ConnectionLimiter: Sendable {
  let cap: Int
  private let open = Atomic<Int>(0)
  /// Connections closed at once because the listener was full (for logs and tests).
  let refused = Atomic<Int>(0)

  init(cap: Int) { self.cap = max(1, cap) }

  var openConnections: Int { open.load(ordering: .relaxed) }

  /// Takes a slot for `channel` until it closes; false (and the channel is being
  /// closed) when the listener is full.
  func admit(_ channel: Channel) -> Bool {
    let now = open.add(1, ordering: .relaxed).newValue
    guard now <= cap else {
      open.subtract(1, ordering: .relaxed)
      refused.add(1, ordering: .relaxed)
      channel.close(promise: nil)
      return false
    }
    channel.closeFuture.whenComplete { [self] _ in _ = open.subtract(1, ordering: .relaxed) }
    return true
  }
}

/// The first handler of a gRPC connection: a peer that has not sent `bytes` bytes (the
/// HTTP/2 preface, or a TLS ClientHello) within `timeout` is closed, so a connection
/// that never starts talking holds its slot only that long. Leaves the pipeline once
/// the bytes came.
///
/// Threading: one per channel, only touched on its event loop.
final class HandshakeDeadline: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer
  let timeout: TimeAmount
  var remaining: Int
  var timer: ScheduledTimer?

  init(bytes: Int = 24, timeout: TimeAmount) { self.remaining = bytes; self.timeout = timeout }

  func handlerAdded(context: ChannelHandlerContext) {
    let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
    timer = Clocks.current.schedule(after: .nanoseconds(timeout.nanoseconds), on: context.eventLoop) { ctx.value.close(promise: nil) }
  }

  func handlerRemoved(context: ChannelHandlerContext) { timer?.cancel() }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    remaining -= unwrapInboundIn(data).readableBytes
    context.fireChannelRead(data)
    if remaining <= 0 {
      timer?.cancel()
      context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
  }
}

/// A length-prefixed (4 bytes, big-endian) frame decoder that refuses, before buffering
/// anything of it, a frame longer than `max`: the connection is closed (`errorCaught`).
/// NIOExtras' decoder has no such bound, so a 2^31-1 prefix made it buffer 2 GiB.
///
/// Threading: one per channel, only touched on its event loop.
struct BoundedFrameDecoder: ByteToMessageDecoder {
  typealias InboundOut = ByteBuffer
  struct FrameTooLarge: Error, CustomStringConvertible {
    let length: UInt32, max: Int
    var description: String { "a data-plane frame of \(length) bytes exceeds max_data_plane_frame_bytes (\(max))" }
  }
  let max: Int

  mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
    guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
    guard UInt64(length) <= UInt64(max) else { throw FrameTooLarge(length: length, max: max) }
    guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
    buffer.moveReaderIndex(forwardBy: 4)
    context.fireChannelRead(wrapInboundOut(buffer.readSlice(length: Int(length))!))
    return .continue
  }

  mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
    try decode(context: context, buffer: &buffer)
  }
}
