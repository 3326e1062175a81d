import Foundation
import NIOCore
import NIOEmbedded
import RuntimeProto

/// What a fork server does once before it forks anything: the code every worker runs
/// as it starts, run here without its sockets or threads, so the Swift runtime's
/// caches (type metadata made from mangled names, protocol conformances found by
/// scanning every conformance record of every library, Foundation's string tables) are
/// filled in the server and each child inherits them instead of filling its own. Each
/// channel pipeline a worker builds looks up its handlers' conformances; a cold lookup
/// scans the records of NIO, gRPC, protobuf and Foundation.
///
/// Threading: the fork server's only thread. Starts no thread (fork needs the server
/// to have none): channels are `EmbeddedChannel`s, whose loop is the caller itself.
public enum ForkWarmUp {
  public static func run(environment: [String: String]) {
    // A worker's options: its configuration read from the environment.
    // (The server's environment is a worker's but for the worker's own id.)
    var env = environment
    env["SWIFTRAY_WORKER_ID"] = env["SWIFTRAY_WORKER_ID"] ?? WorkerID.random().hex
    if let config = try? Config.resolve(environment: env) {
      _ = try? CoreWorker.Options.worker(environment: env, config: config)
    }
    // The frames of a task and its reply, as a lane and the data plane carry them.
    var frame = Swiftray_DataFrame()
    var push = Swiftray_PushTaskRequest()
    push.spec.taskID = Data(count: 24)
    push.spec.name = "warm-up"
    push.spec.args = [Swiftray_TaskArg()]
    frame.body = .pushTask(push)
    if let bytes = Lane.encode(frame) { _ = Lane.decode(bytes[4...]) }
    var reply = Swiftray_DataFrame()
    reply.body = .pushTaskReply(Swiftray_PushTaskReply.with { $0.returns = [Swiftray_ReturnObject()] })
    if let bytes = Lane.encode(reply) { _ = Lane.decode(bytes[4...]) }
    // The data plane's pipelines, both ends, with a keep-alive through each.
    let auth = ClusterAuth(token: Array("warm-up".utf8), source: "the fork server's warm-up")
    let keepAlive: Swiftray_DataFrame = .with { $0.body = .keepAlive(.init()) }
    let server = EmbeddedChannel()
    if (try? DataPlaneServer.configureForWarmUp(server, auth: auth).wait()) != nil {
      var framed = ByteBuffer(bytes: Lane.lengthPrefixed(AuthGate.preamble(auth)))
      if let body = Lane.encode(keepAlive) { framed.writeBytes(body) }
      _ = try? server.writeInbound(framed)
      _ = try? server.readOutbound(as: ByteBuffer.self)
    }
    _ = try? server.finish()
    let client = EmbeddedChannel()
    if (try? DataPlaneConnection.configureForWarmUp(client).wait()) != nil, let body = Lane.encode(keepAlive) {
      _ = try? client.writeInbound(ByteBuffer(bytes: body))
    }
    _ = try? client.finish()
  }
}
