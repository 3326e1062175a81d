import NIOCore
import NIOHTTP1
import NIOWebSocket

/// A route an `HTTPServer` serves over a WebSocket (Ray's `/api/jobs/<id>/logs/tail`):
/// server to client text only.
///
/// Threading: `accepts` runs on the connection's event loop for each upgrade request's
/// head: pure and quick (authentication and the path). `serve` then runs on a Swift
/// concurrency task until it returns, when the socket is closed.
public struct WebSocketRoute: Sendable {
  public var accepts: @Sendable (HTTPRequest) -> Bool
  public var serve: @Sendable (HTTPRequest, WebSocketSender) async -> Void
  public init(accepts: @escaping @Sendable (HTTPRequest) -> Bool,
              serve: @escaping @Sendable (HTTPRequest, WebSocketSender) async -> Void) {
    self.accepts = accepts; self.serve = serve
  }

  /// The most a client frame may hold: clients here only answer pings and close.
  static let maxClientFrameBytes = 1 << 14
  /// How often the server pings a quiet socket: the client's pongs are what keep the
  /// connection's idle timeout (`PeerLiveness`) from closing it.
  static let pingEvery: TimeAmount = .seconds(5)

  /// The upgrader for `HTTPServer`'s pipeline: the route's check, then a `WebSocketPeer`.
  func upgrader() -> NIOWebSocketServerUpgrader {
    NIOWebSocketServerUpgrader(
      maxFrameSize: Self.maxClientFrameBytes,
      shouldUpgrade: { channel, head in
        let ok = accepts(HTTPRequest(method: head.method, uri: head.uri, headers: head.headers))
        return channel.eventLoop.makeSucceededFuture(ok ? HTTPHeaders() : nil)
      },
      upgradePipelineHandler: { channel, head in
        let request = HTTPRequest(method: head.method, uri: head.uri, headers: head.headers)
        return channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(WebSocketPeer(route: self, request: request))
        }
      })
  }
}

/// What a WebSocket route sends with. `send` completes once the frame is written (so a
/// route that awaits each send never queues more than one frame), false once the socket
/// has closed.
///
/// Threading: any task.
public final class WebSocketSender: Sendable {
  let channel: Channel
  init(channel: Channel) { self.channel = channel }

  public func send(_ text: String) async -> Bool {
    var buf = channel.allocator.buffer(capacity: text.utf8.count)
    buf.writeString(text)
    let frame = WebSocketFrame(fin: true, opcode: .text, data: buf)
    do {
      try await channel.writeAndFlush(frame).get()
      return true
    } catch {
      return false
    }
  }

  /// A normal close frame, then the connection's end.
  public func close() async {
    var data = channel.allocator.buffer(capacity: 2)
    data.write(webSocketErrorCode: .normalClosure)
    try? await channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)).get()
    try? await channel.close().get()
  }
}

/// One upgraded connection: runs its route, answers the client's pings and close, and
/// pings a quiet client.
///
/// Threading: one per channel, only touched on its event loop.
final class WebSocketPeer: ChannelInboundHandler {
  typealias InboundIn = WebSocketFrame
  typealias OutboundOut = WebSocketFrame
  let route: WebSocketRoute
  let request: HTTPRequest
  var pinger: RepeatedTask?
  var task: Task<Void, Never>?

  init(route: WebSocketRoute, request: HTTPRequest) { self.route = route; self.request = request }

  func handlerAdded(context: ChannelHandlerContext) {
    let channel = context.channel
    pinger = context.eventLoop.scheduleRepeatedTask(initialDelay: WebSocketRoute.pingEvery, delay: WebSocketRoute.pingEvery) { _ in
      channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .ping, data: channel.allocator.buffer(capacity: 0)), promise: nil)
    }
    let route = self.route, request = self.request
    task = Task {
      await route.serve(request, WebSocketSender(channel: channel))
      try? await channel.close().get()
    }
  }

  func handlerRemoved(context: ChannelHandlerContext) { stop() }

  func channelInactive(context: ChannelHandlerContext) {
    stop()
    context.fireChannelInactive()
  }

  func stop() {
    pinger?.cancel()
    pinger = nil
    // The route's next send fails and it returns; cancelling ends its sleeps sooner.
    task?.cancel()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = unwrapInboundIn(data)
    switch frame.opcode {
    case .ping:
      context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
    case .connectionClose:
      var data = context.channel.allocator.buffer(capacity: 2)
      data.write(webSocketErrorCode: .normalClosure)
      let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
      context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)))
        .whenComplete { _ in ctx.value.close(promise: nil) }
    default:
      break  // pongs, and text a client has no reason to send
    }
  }
}
