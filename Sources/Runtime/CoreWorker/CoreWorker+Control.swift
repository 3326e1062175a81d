import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import RuntimeProto

/// Queries of the head and of this node: the KV store, nodes, node stats, and the
/// forwarding of worker output.
///
/// Threading: the synchronous ones block the caller (GIL released), bounded.
extension CoreWorker {
  /// How long a control call waits out an unreachable head (it may be restarting).
  var controlPatience: Duration { .seconds(options.config.gcsRpcServerReconnectTimeoutS) }

  /// One ControlService call from a synchronous caller (GIL released), bounded, its
  /// failure mapped to the runtime's error naming the method and the endpoint. While
  /// the head is unreachable it is tried again, for `controlPatience`.
  func callControl<T: Sendable>(_ method: String, timeout: Duration = .seconds(30),
                                _ body: @escaping @Sendable (Swiftray_ControlService.Client<ControlPlane.Transport>) async throws -> T) throws -> T {
    let c = control
    let patience = controlPatience
    let answered = Locked(false)
    do {
      return try blockingAwait(timeout: timeout + patience) {
        do {
          defer { answered.withLock { $0 = true } }
          return try await ControlPlane.whileUnavailable(patience: patience) { try await body(Swiftray_ControlService.Client(wrapping: c.client)) }
        } catch { throw ControlPlane.error(error, calling: method, at: c.endpoint) }
      }
    } catch where !answered.withLock({ $0 }) {
      // Silence, not a refusal: packets to the head vanish (a partition, a firewall) or
      // it hangs. Say so, and which limits ran out.
      throw SwiftrayError(.system, "\(method) to the head at \(c.endpoint) got no answer within \(Self.seconds(timeout + patience)) s "
        + "(\(Self.seconds(timeout)) s for the call, then gcs_rpc_server_reconnect_timeout_s=\(Self.seconds(patience))): the head is "
        + "unreachable from this machine (a network partition or a firewall) or hangs")
    }
  }

  static func seconds(_ d: Duration) -> Int64 { d.components.seconds }

  public func kvPut(namespace: String, key: Data, value: Data, overwrite: Bool) throws -> Bool {
    var req = Swiftray_KVPutRequest()
    req.namespace = namespace; req.key = key; req.value = value; req.overwrite = overwrite
    return try callControl("KVPut") { [req] in try await $0.kvPut(req).added }
  }

  /// A key of the head's key-value store. The never-changing namespaces (functions,
  /// job records: `NodeKVCache`) are read through this node, which keeps them: a new
  /// worker then needs no connection to the head, and the head answers once per node.
  public func kvGet(namespace: String, key: Data) throws -> Data? {
    var req = Swiftray_KVGetRequest()
    req.namespace = namespace; req.key = key
    if NodeKVCache.cacheable(namespace) {
      guard case .kvGetReply(let r) = try objectStore.askNode(.kvGet(req), calling: "KVGet") else {
        throw SwiftrayError(.system, "KVGet through the node at \(objectStore.endpoint) got an answer of another kind")
      }
      return r.found ? r.value : nil
    }
    return try callControl("KVGet") { [req] c in
      let r = try await c.kvGet(req)
      return r.found ? r.value : nil
    }
  }

  public func allNodes() throws -> [Swiftray_NodeInfo] {
    try callControl("GetAllNodes") { try await $0.getAllNodes(Swiftray_GetAllNodesRequest()).nodes }
  }

  public func nodeStats() throws -> Swiftray_GetNodeStatsReply {
    let nm = nodeManager
    return try blockingAwait {
      do { return try await Swiftray_NodeManagerService.Client(wrapping: nm.client).getNodeStats(Swiftray_GetNodeStatsRequest()) }
      catch { throw ControlPlane.error(error, calling: "GetNodeStats", at: nm.endpoint) }
    }
  }

  /// Prints worker output of this node with a `(pid=N)` prefix, as Ray does. Returns
  /// once the node has the subscription (its first, empty batch), so no line a task
  /// prints after `init` returns is missed; at most 2 s.
  /// Threading: blocks; call from a thread of your own, never a Task or an event loop.
  public func forwardWorkerLogs() {
    let nm = nodeManager
    let subscribed = AsyncLatch()
    let task = Task {
      do {
        try await Swiftray_NodeManagerService.Client(wrapping: nm.client).subscribeLogs(Swiftray_SubscribeLogsRequest()) { response in
          for try await batch in response.messages {
            if batch.lines.isEmpty { subscribed.open(); continue }
            var text = ""
            for line in batch.lines { text += "(pid=\(batch.pid)) \(line)\n" }
            text.withUTF8 { buf in _ = write(batch.isErr ? 2 : 1, buf.baseAddress, buf.count) }
          }
        }
      } catch {}
      subscribed.open()  // ended or refused: nothing more to wait for
    }
    logForwarding.withLock { $0 = task }
    _ = try? blockingAwait(timeout: .seconds(2)) { await subscribed.wait() }
  }

}
