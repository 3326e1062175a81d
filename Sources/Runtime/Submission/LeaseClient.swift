import Foundation
import GRPCCore
import RuntimeProto

/// Asks NodeManagers for one worker lease, the way every owner does (a process's
/// CoreWorker for its tasks, the ControlService for actor creations): the first node
/// routes the request; a spillback names another node, which is asked to grant or
/// reject, up to `maxHops` nodes; then the answer (nil: no node could be reached) goes
/// back with the node that gave it, which the lease is returned to later.
///
/// No deadline: a lease request waits for resources as long as that takes; a node that
/// hangs fails it through its connection's keep-alive (grpc_client_keepalive_*).
///
/// Threading: any task; holds no lock.
public struct LeaseClient: Sendable {
  /// The node asked first when the caller names none (a process's own node).
  let local: ControlPlane.Connection?
  /// Clients of other nodes, made once each.
  let nodes: ControlClients
  public let maxHops: Int

  public init(local: ControlPlane.Connection?, nodes: ControlClients, maxHops: Int) {
    self.local = local
    self.nodes = nodes
    self.maxHops = maxHops
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
      let reply = try? await Swiftray_NodeManagerService.Client(wrapping: conn.client).requestWorkerLease(req)
      guard let reply, reply.status == .spillback, hops < maxHops else { return (reply, node) }
      // The first node's policy (or the request's strategy) chose another node: that
      // one must grant or reject.
      hops += 1
      node = reply.retryAtEndpoint
      req.grantOrReject = true
    }
  }
}
