import Foundation
import GRPCCore
import RuntimeProto

/// Asks NodeManagers for one worker lease, the way every owner does (a process's
/// CoreWorker for its tasks, the ControlService for actor creations): the first node
/// routes the request; a spillback names another node, which is asked to grant or
/// reject, up to `maxHops` nodes; then the answer (nil: no node could be reached) goes
/// back with the node that gave it, which the lease is returned to later.
///
/// No deadline: a lease request waits for resources as long as that takes. A request to
/// another node ends (nil) as soon as the caller hears that node was declared dead
/// (`watch`); a node that hangs otherwise fails it through its connection's keep-alive
/// (grpc_client_keepalive_*).
///
/// Threading: any task; holds no lock.
public struct LeaseClient: Sendable {
  /// The node asked first when the caller names none (a process's own node).
  let local: ControlPlane.Connection?
  /// Clients of other nodes, made once each.
  let nodes: ControlClients
  public let maxHops: Int
  /// The caller's view of node deaths, which ends calls to a node declared dead.
  let watch: CallsByNode?

  public init(local: ControlPlane.Connection?, nodes: ControlClients, maxHops: Int, watch: CallsByNode? = nil) {
    self.local = local
    self.nodes = nodes
    self.maxHops = maxHops
    self.watch = watch
  }

  /// The final answer to `request`, asked first of `node` (nil: the local node), and
  /// the node that gave it (nil: the local node).
  public func request(_ request: Swiftray_RequestWorkerLeaseRequest, at node: String? = nil)
    async -> (reply: Swiftray_RequestWorkerLeaseReply?, node: String?) {
    var req = request
    var node = node
    var hops = 0
    while true {
      guard let conn = node.map(nodes.client) ?? local else { return (nil, node) }
      let reply = await ask(conn, req, at: node)
      guard let reply, reply.status == .spillback, hops < maxHops else { return (reply, node) }
      // The first node's policy (or the request's strategy) chose another node: that
      // one must grant or reject.
      hops += 1
      node = reply.retryAtEndpoint
      req.grantOrReject = true
    }
  }

  /// One request to one node; a request to another node is cancelled when `watch`
  /// hears that node died (a silent partition would hold it for the keep-alive's ~50 s).
  func ask(_ conn: ControlPlane.Connection, _ req: Swiftray_RequestWorkerLeaseRequest, at node: String?) async
    -> Swiftray_RequestWorkerLeaseReply? {
    let client = conn.nodeManagerService
    guard let watch, let node else { return try? await client.requestWorkerLease(req) }
    let call = Task { try? await client.requestWorkerLease(req) }
    let token = watch.register(node) { call.cancel() }
    defer { if let token { watch.done(token) } }
    return await call.value
  }
}

/// Calls in flight by the node they wait on, so that a node declared dead ends them at
/// once: the owner then asks again elsewhere instead of waiting on a node behind a
/// partition. Remembers the last `maxDead` dead nodes, whose new calls end at once.
///
/// Threading: any thread or task; cancellations run after the lock is released.
public final class CallsByNode: Sendable {
  struct State {
    var next: UInt64 = 0
    var calls: [UInt64: (node: String, cancel: @Sendable () -> Void)] = [:]
    var dead: Set<String> = []
  }
  static let maxDead = 4096
  let state = Locked(State())

  public init() {}

  /// Watches a call to `node`: `cancel` runs when the node is declared dead (now, if it
  /// already was; then nil comes back). `done` with the token once the call ended.
  public func register(_ node: String, cancel: @escaping @Sendable () -> Void) -> UInt64? {
    let token: UInt64? = state.withLock { s in
      guard !s.dead.contains(node) else { return nil }
      s.next &+= 1
      s.calls[s.next] = (node, cancel)
      return s.next
    }
    if token == nil { cancel() }
    return token
  }

  public func done(_ token: UInt64) { _ = state.withLock { $0.calls.removeValue(forKey: token) } }

  /// The node at these endpoints (its TCP address and its socket) was declared dead.
  public func nodeDied(_ endpoints: [String]) {
    let names = Set(endpoints.filter { !$0.isEmpty })
    guard !names.isEmpty else { return }
    let cancels: [@Sendable () -> Void] = state.withLock { s in
      if s.dead.count + names.count > Self.maxDead { s.dead.removeAll() }
      s.dead.formUnion(names)
      let ending = s.calls.filter { names.contains($0.value.node) }
      for k in ending.keys { s.calls.removeValue(forKey: k) }
      return ending.map(\.value.cancel)
    }
    for c in cancels { c() }
  }
}
