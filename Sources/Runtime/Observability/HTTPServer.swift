import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// One request as the handler sees it: GET or HEAD only (others are answered 405 before
/// the handler runs), no body.
public struct HTTPRequest: Sendable {
  public var method: HTTPMethod
  /// The path without its query (`/metrics`).
  public var path: String
  /// The query's parameters, percent-decoded (the first of a repeated name).
  public var query: [String: String]
  public var headers: HTTPHeaders
  /// The request's body (POST and PUT, on a server that takes bodies).
  public var body: [UInt8] = []

  public init(method: HTTPMethod, uri: String, headers: HTTPHeaders, body: [UInt8] = []) {
    self.method = method
    self.headers = headers
    self.body = body
    let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
    path = parts.first.map(String.init) ?? "/"
    var q: [String: String] = [:]
    if parts.count == 2 {
      for pair in parts[1].split(separator: "&") {
        let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        guard let k = String(kv[0]).removingPercentEncoding, q[k] == nil else { continue }
        let v = kv.count == 2 ? String(kv[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding : ""
        q[k] = v ?? ""
      }
    }
    query = q
  }
}

public struct HTTPResponse: Sendable {
  public var status: HTTPResponseStatus
  public var headers: [(String, String)]
  public var body: [UInt8]

  public init(_ status: HTTPResponseStatus = .ok, contentType: String = "text/plain; charset=utf-8",
              headers: [(String, String)] = [], body: [UInt8] = []) {
    self.status = status
    self.headers = [("Content-Type", contentType)] + headers
    self.body = body
  }

  public static func text(_ status: HTTPResponseStatus, _ text: String) -> HTTPResponse {
    HTTPResponse(status, body: Array((text + "\n").utf8))
  }
}

/// A small HTTP/1.1 server for `/metrics` (and the dashboard): each request's head goes
/// to an async handler whose answer is written back in order (NIO's pipelining helper).
/// Bounded like every listener here: at most `max_connections_per_listener` connections,
/// a connection silent for `data_plane_idle_timeout_ms` is closed, a request head is at
/// most NIO's 80 KiB, and a body is taken only by a server given `bodyLimit` (the
/// dashboard's Jobs API), up to the size it gives for the request's head (0 for one not
/// signed in: nothing is buffered before authentication): a larger one, or one sent to
/// a server that takes none, is answered 413 and its connection closed without the rest
/// being kept.
///
/// Threading: `serve`/`shutdown` from any thread (not an event loop); the handler runs on
/// a Swift concurrency task, never on an event loop.
public final class HTTPServer: Sendable {
  public typealias Handler = @Sendable (HTTPRequest) async -> HTTPResponse
  let channel: Channel
  /// The bound port (the one picked when 0 was asked for).
  public let port: Int
  public let host: String

  init(channel: Channel, host: String) {
    self.channel = channel
    self.host = host
    port = channel.localAddress?.port ?? 0
  }

  /// The most body bytes a request (its head: method, path, headers) may send.
  /// Runs on an event loop: pure and quick.
  public typealias BodyLimit = @Sendable (HTTPRequest) -> Int

  /// `webSocket`: a route upgraded to a WebSocket when it accepts the request's head
  /// (others go to `handler` as plain requests).
  public static func serve(host: String, port: Int, group: EventLoopGroup, bodyLimit: BodyLimit? = nil,
                           webSocket: WebSocketRoute? = nil, handler: @escaping Handler) async throws -> HTTPServer {
    let limits = NetworkLimits.current
    let limiter = ConnectionLimiter(cap: limits.maxConnectionsPerListener)
    let channel = try await ServerBootstrap(group: group)
      .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
      .serverChannelOption(ChannelOptions.backlog, value: 256)
      .childChannelInitializer { channel in
        guard limiter.admit(channel) else { return channel.eventLoop.makeSucceededVoidFuture() }
        return channel.eventLoop.makeCompletedFuture {
          let ops = channel.pipeline.syncOperations
          try ops.addHandler(PeerLiveness(keepAlive: .milliseconds(Int64(limits.keepAliveMs)),
                                          idleTimeout: .milliseconds(Int64(limits.idleTimeoutMs)), pings: false))
          // An upgraded connection leaves HTTP: the upgrader removes NIO's handlers, this
          // removes ours.
          let upgrade: NIOHTTPServerUpgradeConfiguration? = webSocket.map { route in
            (upgraders: [route.upgrader()], completionHandler: { context in
              context.pipeline.syncOperations.removeHandler(name: HTTPRequestHandler.name, promise: nil)
            })
          }
          try ops.configureHTTPServerPipeline(withPipeliningAssistance: true, withServerUpgrade: upgrade, withErrorHandling: true)
          try ops.addHandler(HTTPRequestHandler(handler: handler, bodyLimit: bodyLimit), name: HTTPRequestHandler.name)
        }
      }
      .bind(host: host, port: port).get()
    return HTTPServer(channel: channel, host: host)
  }

  public func shutdown() { try? channel.close().wait() }
}

/// Reads a request's head and end, runs the handler off the loop, writes its answer.
///
/// Threading: one per connection, only touched on its event loop.
final class HTTPRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart
  let handler: HTTPServer.Handler
  let bodyLimit: HTTPServer.BodyLimit?
  /// The current request's body bound (`bodyLimit` of its head).
  var maxBodyBytes = 0
  var head: HTTPRequestHead?
  var body: [UInt8] = []
  var refused = false
  static let methodsWithBody: [HTTPMethod] = [.POST, .PUT]
  static let name = "swiftray.http"

  init(handler: @escaping HTTPServer.Handler, bodyLimit: HTTPServer.BodyLimit?) { self.handler = handler; self.bodyLimit = bodyLimit }

  var allowed: [HTTPMethod] { bodyLimit != nil ? [.DELETE, .GET, .HEAD, .POST, .PUT] : [.GET, .HEAD] }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let h):
      head = h
      body = []
      refused = false
      maxBodyBytes = Self.methodsWithBody.contains(h.method)
        ? max(0, bodyLimit?(HTTPRequest(method: h.method, uri: h.uri, headers: h.headers)) ?? 0) : 0
    case .body(let chunk):
      guard !refused, let h = head else { return }
      // Kept only up to the bound, and only for the methods that carry one: refused at
      // the first byte past it, the rest never kept.
      guard body.count + chunk.readableBytes <= maxBodyBytes else {
        refused = true
        body = []
        return write(context, version: h.version, keepAlive: false, head: h.method == .HEAD,
                     .text(.payloadTooLarge, bodyLimit == nil ? "this server takes no request body"
                       : "a request body may have at most \(maxBodyBytes) bytes here (sign in first)"))
      }
      body += chunk.readableBytesView
    case .end:
      guard let h = head, !refused else { return }
      head = nil
      guard allowed.contains(h.method) else {
        let names = allowed.map { $0.rawValue }.joined(separator: ", ")
        return write(context, version: h.version, keepAlive: h.isKeepAlive, head: false,
                     HTTPResponse.text(.methodNotAllowed, "only \(names)").adding(("Allow", names)))
      }
      let request = HTTPRequest(method: h.method, uri: h.uri, headers: h.headers, body: body)
      body = []
      let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
      let me = NIOLoopBound(self, eventLoop: context.eventLoop)
      let loop = context.eventLoop
      let handler = self.handler
      Task {
        let response = await handler(request)
        loop.execute {
          me.value.write(ctx.value, version: h.version, keepAlive: h.isKeepAlive, head: h.method == .HEAD, response)
        }
      }
    }
  }

  func write(_ context: ChannelHandlerContext, version: HTTPVersion, keepAlive: Bool, head: Bool, _ r: HTTPResponse) {
    guard context.channel.isActive else { return }
    var headers = HTTPHeaders(r.headers)
    headers.replaceOrAdd(name: "Content-Length", value: String(r.body.count))
    headers.replaceOrAdd(name: "Connection", value: keepAlive ? "keep-alive" : "close")
    context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: r.status, headers: headers))), promise: nil)
    if !head, !r.body.isEmpty {
      var buf = context.channel.allocator.buffer(capacity: r.body.count)
      buf.writeBytes(r.body)
      context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
    }
    let done = context.eventLoop.makePromise(of: Void.self)
    context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: done)
    if !keepAlive {
      let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
      done.futureResult.whenComplete { _ in ctx.value.close(promise: nil) }
    }
  }
}

extension HTTPResponse {
  func adding(_ header: (String, String)) -> HTTPResponse {
    var r = self
    r.headers.append(header)
    return r
  }
}
