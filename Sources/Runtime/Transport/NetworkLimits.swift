import Foundation
import NIOCore
import Synchronization

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

  public init(maxFrameBytes: Int = 16 << 20, maxConnectionsPerListener: Int = 1024, handshakeTimeoutMs: Int = 5000) {
    self.maxFrameBytes = maxFrameBytes
    self.maxConnectionsPerListener = maxConnectionsPerListener
    self.handshakeTimeoutMs = handshakeTimeoutMs
  }

  private static let frame = Atomic<Int>(NetworkLimits().maxFrameBytes)
  private static let connections = Atomic<Int>(NetworkLimits().maxConnectionsPerListener)
  private static let handshake = Atomic<Int>(NetworkLimits().handshakeTimeoutMs)

  /// This process's limits (the defaults until `install`).
  public static var current: NetworkLimits {
    NetworkLimits(maxFrameBytes: frame.load(ordering: .relaxed),
                  maxConnectionsPerListener: connections.load(ordering: .relaxed),
                  handshakeTimeoutMs: handshake.load(ordering: .relaxed))
  }

  /// Makes `limits` this process's; listeners made before keep the ones they read.
  public static func install(_ limits: NetworkLimits) {
    frame.store(limits.maxFrameBytes, ordering: .relaxed)
    connections.store(limits.maxConnectionsPerListener, ordering: .relaxed)
    handshake.store(limits.handshakeTimeoutMs, ordering: .relaxed)
  }

  var handshakeTimeout: TimeAmount { .milliseconds(Int64(handshakeTimeoutMs)) }
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
  var timer: Scheduled<Void>?

  init(bytes: Int = 24, timeout: TimeAmount) { self.remaining = bytes; self.timeout = timeout }

  func handlerAdded(context: ChannelHandlerContext) {
    let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
    timer = context.eventLoop.scheduleTask(in: timeout) { ctx.value.close(promise: nil) }
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
