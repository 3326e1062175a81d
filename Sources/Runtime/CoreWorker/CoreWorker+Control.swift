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
                                _ body: @escaping @Sendable (any Swiftray_ControlService.ClientProtocol) async throws -> T) throws -> T {
    let c = control
    let patience = controlPatience
    let answered = Locked(false)
    do {
      return try blockingAwait(timeout: timeout + patience) {
        do {
          defer { answered.withLock { $0 = true } }
          return try await ControlPlane.whileUnavailable(patience: patience) { try await body(c.controlService) }
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

  /// Whether the head's package store holds package `uri` whole (its manifest is there).
  public func packageExists(_ uri: String) throws -> Bool {
    guard let p = RuntimeEnv.Package(uri: uri) else {
      throw SwiftrayError(.invalidArgument, "a package URI is pkg://<sha256 hex>.zip, got \(uri.prefix(100))")
    }
    return try kvGet(namespace: PackageStore.namespace, key: PackageStore.manifestKey(p)) != nil
  }

  /// Puts package `uri` into the head's package store: its chunks, then its manifest
  /// (`PackageStore`). Refused unless `data`'s SHA-256 is the one `uri` names.
  public func uploadPackage(_ uri: String, _ data: Data) throws {
    let p = try PackageStore.checked(uri: uri, data, maxBytes: options.config.runtimeEnvMaxPackageBytes)
    let chunks = PackageStore.chunks(data)
    for (i, chunk) in chunks.enumerated() {
      _ = try kvPut(namespace: PackageStore.namespace, key: PackageStore.chunkKey(p, i), value: chunk, overwrite: true)
    }
    let manifest = PackageStore.Manifest(size: data.count, chunks: chunks.count)
    _ = try kvPut(namespace: PackageStore.namespace, key: PackageStore.manifestKey(p), value: PackageStore.encode(manifest), overwrite: true)
  }

  public func allNodes() throws -> [Swiftray_NodeInfo] {
    try callControl("GetAllNodes") { try await $0.getAllNodes(Swiftray_GetAllNodesRequest()).nodes }
  }

  public func nodeStats() throws -> Swiftray_GetNodeStatsReply {
    let nm = nodeManager
    return try blockingAwait {
      do { return try await nm.nodeManagerService.getNodeStats(Swiftray_GetNodeStatsRequest()) }
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
    // Lines repeated by several workers are summed up (`LogDedup`), unless turned off
    // (`dedup_logs=0`, or Ray's RAY_DEDUP_LOGS=0).
    let dedupOn = options.config.dedupLogs == 1 && ProcessInfo.processInfo.environment["RAY_DEDUP_LOGS"] != "0"
    let printer = LogPrinter(LogDedup(windowNs: UInt64(options.config.dedupLogsAggWindowMs) * 1_000_000, enabled: dedupOn),
                             clock: options.clock)
    let period = Duration.milliseconds(max(100, options.config.dedupLogsAggWindowMs / 4))
    let task = Task {
      await withTaskGroup(of: Void.self) { group in
        group.addTask {
          do {
            try await nm.nodeManagerService.subscribeLogs(Swiftray_SubscribeLogsRequest()) { response in
              for try await batch in response.messages {
                if batch.lines.isEmpty { subscribed.open(); continue }
                printer.arrived(batch.lines.map { LogDedup.Line(pid: batch.pid, text: $0, isErr: batch.isErr) })
              }
            }
          } catch {}
          subscribed.open()  // ended or refused: nothing more to wait for
        }
        // Summaries go out as their windows end, batches or not.
        if dedupOn {
          group.addTask {
            while !Task.isCancelled {
              try? await Task.sleep(for: period)
              printer.flush(all: false)
            }
          }
        }
        await group.next()
        group.cancelAll()
      }
      printer.flush(all: true)
    }
    logForwarding.withLock { $0 = task }
    _ = try? blockingAwait(timeout: .seconds(2)) { await subscribed.wait() }
  }

}

/// Prints workers' lines in the driver (stdout or stderr, `(pid=N) line`), through its
/// deduplication.
///
/// Threading: any thread; the lock is held to decide, the writes happen after it.
final class LogPrinter: Sendable {
  let dedup: Locked<LogDedup>
  let clock: any RuntimeClock

  init(_ dedup: LogDedup, clock: any RuntimeClock) { self.dedup = Locked(dedup); self.clock = clock }

  func arrived(_ lines: [LogDedup.Line]) {
    let now = clock.now()
    let out = dedup.withLock { $0.arrived(lines, now: now) }
    emit(out)
  }

  func flush(all: Bool) {
    let now: UInt64 = all ? .max : clock.now()
    let out = dedup.withLock { $0.windowsEnded(now: now) }
    emit(out)
  }

  func emit(_ lines: [LogDedup.Line]) {
    var out = "", err = ""
    for l in lines { if l.isErr { err += l.printed + "\n" } else { out += l.printed + "\n" } }
    if !out.isEmpty { out.withUTF8 { buf in _ = write(1, buf.baseAddress, buf.count) } }
    if !err.isEmpty { err.withUTF8 { buf in _ = write(2, buf.baseAddress, buf.count) } }
  }
}
