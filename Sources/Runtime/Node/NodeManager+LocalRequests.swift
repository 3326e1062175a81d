import Foundation
import GRPCCore
import RuntimeProto

/// What the processes of this node ask their node over its Unix socket (the store's,
/// `ObjectStore.localRequests`) rather than over gRPC: to register (and stay
/// subscribed to deaths), and to read the head's key-value store. A new worker then
/// opens no HTTP/2 connection at all: the data-plane connection it makes for the store
/// carries these too (DESIGN §5; issue 18: about a third of a worker's start-up CPU, on
/// both sides, was its two gRPC connections).
///
/// Deaths, passed on to the processes of this node: the nodes the ControlService
/// declares dead (owners fail leases there and rebuild what was stored there) and the
/// workers that exited anywhere (owners drop them as borrowers). Each goes as a
/// `node_death` frame answering the process's `register_worker` request, for as long
/// as its connection lasts.
///
/// Threading: called from the report loop and event loops; state under the lock,
/// frames sent after it.
extension NodeManager {
  /// Most processes one node keeps subscribed (a registration beyond it is refused):
  /// far above any node's workers and drivers.
  static let maxDeathSubscribers = 65_536
  /// Most key-value reads this node forwards to the head at once (more are refused:
  /// the processes of a node read a few keys each, once).
  static let maxForwardedKVGets = 1024

  /// A request on the node's Unix socket that is not the store's. On an event loop:
  /// never blocks (a key the cache does not hold is asked of the head in a Task).
  func localRequest(_ frame: Swiftray_DataFrame, _ responder: DataPlaneResponder) {
    switch frame.body {
    case .registerWorker(let req): registerLocal(req, responder)
    case .kvGet(let req): kvGetLocal(req, responder)
    default: responder.respond(.error(.with { $0.message = "not a request this node serves" }))
    }
  }

  /// Registers a worker or driver of this node, answers, then sends it every node
  /// death known here; each later death follows on the same id until its connection
  /// closes.
  func registerLocal(_ req: Swiftray_RegisterWorkerRequest, _ responder: DataPlaneResponder) {
    // Subscribed and the known deaths read in one critical section: each death reaches
    // the process once, from this list or from `publishDeaths`.
    enum Step { case refused(String), subscribed(UInt64, known: [Swiftray_NodeDeath]) }
    let step: Step = state.withLock { s in
      if s.shuttingDown { return .refused("this node is shutting down") }
      guard s.deathSubscribers.count < Self.maxDeathSubscribers else {
        return .refused("this node already has \(Self.maxDeathSubscribers) registered processes")
      }
      let k = s.nextSubscriber
      s.nextSubscriber += 1
      s.deathSubscribers[k] = responder
      return .subscribed(k, known: Array(s.deadNodes.values))
    }
    guard case .subscribed(let key, let known) = step else {
      if case .refused(let why) = step { responder.respond(.error(.with { $0.message = why })) }
      return
    }
    responder.onPeerClose { [weak self] in _ = self?.state.withLock { $0.deathSubscribers.removeValue(forKey: key) } }
    responder.respond(.registerWorkerReply(registerWorker(req)))
    for d in known { responder.respond(.nodeDeath(d)) }
  }

  /// Registers a worker (it may now be leased) or a driver (watched, so its actors
  /// die with it even when it exits without saying so).
  func registerWorker(_ request: Swiftray_RegisterWorkerRequest) -> Swiftray_RegisterWorkerReply {
    var r = Swiftray_RegisterWorkerReply()
    r.nodeID = Data(options.nodeID.binary)
    r.controlEndpoint = options.controlEndpoint.description
    if request.isDriver, let id = WorkerID(binary: request.workerID), request.pid > 0 {
      state.withLock { $0.workers.driverRegistered(id, pid: request.pid, endpoint: String(request.endpoint.prefix(1024))) }
    }
    if request.isDriver, let id = WorkerID(binary: request.workerID), request.pid > 0, request.pid != getpid() {
      let pid = request.pid
      if state.withLock({ $0.workers.driverConnected(id, pid: pid) }) {
        monitor.watch(pid) { [weak self] in self?.driverProcessEnded(pid: pid) }
      }
    }
    guard !request.isDriver, let id = WorkerID(binary: request.workerID) else { return r }
    let actions = state.withLock { s -> [LeaseQueue.Action] in
      guard s.workers.registered(id, endpoint: request.endpoint, localEndpoint: request.localEndpoint) else { return [] }
      return s.queue.workerRegistered(id)
    }
    perform(actions)
    return r
  }

  /// A key of the head's key-value store: from this node's cache when it is a value
  /// that never changes (`NodeKVCache`), else asked of the head (waiting out a head
  /// restart as a worker's own call would, each try with the node's call deadline).
  func kvGetLocal(_ req: Swiftray_KVGetRequest, _ responder: DataPlaneResponder) {
    if let v = state.withLock({ $0.kvCache.get(req.namespace, req.key) }) {
      return responder.respond(.kvGetReply(.with { $0.found = true; $0.value = v }))
    }
    guard state.withLock({ s -> Bool in
      guard s.kvGetsForwarded < Self.maxForwardedKVGets else { return false }
      s.kvGetsForwarded += 1
      return true
    }) else {
      return responder.respond(.error(.with {
        $0.message = "this node already forwards \(Self.maxForwardedKVGets) key-value reads to the head; ask again later"
      }))
    }
    let patience = Duration.seconds(max(1, options.config.gcsRpcServerReconnectTimeoutS))
    let callOptions = headCallOptions
    let endpoint = options.controlEndpoint
    Task { [self] in
      defer { state.withLock { $0.kvGetsForwarded -= 1 } }
      do {
        guard let c = controlClient() else { throw SwiftrayError(.system, "this node has no client for the head") }
        let reply = try await ControlPlane.whileUnavailable(patience: patience, orTimedOut: true) {
          try await c.controlService.kvGet(req, options: callOptions)
        }
        if reply.found { state.withLock { $0.kvCache.found(req.namespace, req.key, reply.value) } }
        responder.respond(.kvGetReply(reply))
      } catch {
        let e = ControlPlane.error(error, calling: "KVGet", at: endpoint)
        responder.respond(.error(.with { $0.message = e.message }))
      }
    }
  }

  /// Passes on, once each, the nodes the ControlService now lists as dead.
  func publishDeaths(of nodes: [Swiftray_NodeInfo]) {
    var stores: [String] = []
    let (fresh, subs) = state.withLock { s -> ([Swiftray_NodeDeath], [DataPlaneResponder]) in
      var fresh: [Swiftray_NodeDeath] = []
      for n in nodes where NodeTable.isDead(n) && s.deadNodes[n.nodeID] == nil {
        if !n.storeAddress.isEmpty { stores.append(n.storeAddress) }
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
    if !stores.isEmpty { store.storesGone(stores) }
    for d in fresh { for r in subs { r.respond(.nodeDeath(d)) } }
  }

  /// Passes on the worker exits the head heard of since this node last asked, in one
  /// message (owners drop them as borrowers).
  func publishWorkerDeaths(_ reply: Swiftray_GetAllNodesReply) {
    let subs = state.withLock { s -> [DataPlaneResponder] in
      s.workerDeathsSeen = (reply.workerDeathsLog, reply.workerDeathsNext)
      return reply.deadWorkers.isEmpty ? [] : Array(s.deathSubscribers.values)
    }
    guard !subs.isEmpty else { return }
    var d = Swiftray_NodeDeath()
    d.deadWorkers = Array(reply.deadWorkers.prefix(WorkerDeathLog.maxPerAnswer))
    for r in subs { r.respond(.nodeDeath(d)) }
  }
}
