import Foundation
import GRPCCore
import RuntimeProto

/// Deaths, passed on to the processes of this node: the nodes the ControlService
/// declares dead (owners fail leases there and rebuild what was stored there) and the
/// workers that exited anywhere (owners drop them as borrowers).
///
/// Threading: called from the report loop and gRPC handlers; state under the lock,
/// stream continuations yielded after it.
extension NodeManager {
  /// Passes on, once each, the nodes the ControlService now lists as dead.
  func publishDeaths(of nodes: [Swiftray_NodeInfo]) {
    let (fresh, subs) = state.withLock { s -> ([Swiftray_NodeDeath], [AsyncStream<Swiftray_NodeDeath>.Continuation]) in
      var fresh: [Swiftray_NodeDeath] = []
      for n in nodes where NodeTable.isDead(n) && s.deadNodes[n.nodeID] == nil {
        var d = Swiftray_NodeDeath()
        d.nodeID = n.nodeID
        d.nodeManagerAddress = n.nodeManagerAddress
        d.nodeManagerEndpoint = n.nodeManagerEndpoint
        d.detail = n.deathDetail
        s.deadNodes[n.nodeID] = d
        fresh.append(d)
      }
      return (fresh, fresh.isEmpty ? [] : Array(s.deathSubscribers.values))
    }
    for d in fresh { for c in subs { c.yield(d) } }
  }

  /// Passes on the worker exits the head heard of since this node last asked, in one
  /// message (owners drop them as borrowers).
  func publishWorkerDeaths(_ reply: Swiftray_GetAllNodesReply) {
    let subs = state.withLock { s -> [AsyncStream<Swiftray_NodeDeath>.Continuation] in
      s.workerDeathsSeen = (reply.workerDeathsLog, reply.workerDeathsNext)
      return reply.deadWorkers.isEmpty ? [] : Array(s.deathSubscribers.values)
    }
    guard !subs.isEmpty else { return }
    var d = Swiftray_NodeDeath()
    d.deadWorkers = Array(reply.deadWorkers.prefix(WorkerDeathLog.maxPerAnswer))
    for c in subs { c.yield(d) }
  }

  /// Every node death known here, then each new one, until the caller goes.
  public func subscribeNodeDeaths(request: Swiftray_SubscribeNodeDeathsRequest, response: RPCWriter<Swiftray_NodeDeath>,
                                  context: ServerContext) async throws {
    // Bounded: a process that stops reading (stuck, or paused) cannot make this node
    // hold every death since; one 20,000 messages behind (over an hour of batches of
    // worker exits, one per report period) misses the newest.
    let (stream, cont) = AsyncStream<Swiftray_NodeDeath>.makeStream(bufferingPolicy: .bufferingOldest(20_000))
    // Registered and the known deaths read in one critical section: each death reaches
    // the caller once, from this list or from `publishDeaths`.
    let (key, known) = state.withLock { s in
      let k = s.nextSubscriber
      s.nextSubscriber += 1
      s.deathSubscribers[k] = cont
      return (k, Array(s.deadNodes.values))
    }
    for d in known { cont.yield(d) }
    defer { _ = state.withLock { $0.deathSubscribers.removeValue(forKey: key) } }
    for await d in stream { try await response.write(d) }
  }
}
