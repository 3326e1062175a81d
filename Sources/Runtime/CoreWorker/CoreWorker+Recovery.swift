import Foundation
import RuntimeProto

/// Node deaths and lost copies, the shell's side (DESIGN §3, lineage reconstruction):
/// `OwnerState` decides what is rebuilt, promoted, fetched again or failed; this waits
/// for verdicts and copies and reads the store.
///
/// Threading: called from the node-death subscription task and from readers (GIL
/// released); state under the CoreWorker's lock, effects outside it.
extension CoreWorker {
  func nodeDied(_ d: Swiftray_NodeDeath) {
    guard !d.nodeID.isEmpty else {
      // No node died: workers exited somewhere (they borrow nothing any more).
      let workers = d.deadWorkers.prefix(WorkerDeathLog.maxPerAnswer).compactMap { WorkerID(binary: $0) }
      let now = self.now()
      return owner { $0.borrowersDied(workers, now: now) }
    }
    let short = NodeID(binary: d.nodeID)?.hex.prefix(12) ?? "?"
    let why = "node \(short) died: \(d.detail.isEmpty ? "it stopped answering health checks" : d.detail)"
    let now = self.now()
    let here = (node: Data(options.nodeID.binary), store: objectStore.remoteAddress)
    leaseCalls.nodeDied([d.nodeManagerAddress, d.nodeManagerEndpoint])
    owner { $0.nodeDied(d.nodeID, nodeManagers: [d.nodeManagerAddress, d.nodeManagerEndpoint], why: why, here: here, now: now) }
  }

  /// Copies this node pulled become the primaries (their node died); where one is gone
  /// (dropped for room meanwhile), the owner rebuilds the object after all.
  func promote(_ ids: [ObjectID], why: String) {
    objectStore.promote(ids) { [self] ok in
      let now = self.now()
      owner { $0.promotionsEnded(ids, ok: ok, why: why, now: now) }
    }
  }

  /// A worker could not read some of `t`'s stored arguments (on `nodes`, dead or
  /// unreachable), so `t` did not run. Once the cluster has declared those nodes dead
  /// (the arguments are then being rebuilt, or hold the error saying why not), `t` is
  /// resolved and sent again; if no verdict comes, it fails with the reason.
  func argumentsLost(_ t: TaskID, nodes: Set<Data>, detail: String) {
    let deadline = self.now() + verdictNanos
    Task { [self] in
      while !state.withLock({ $0.declaredDead(nodes) }) && self.now() < deadline {
        await clock.sleep(for: .milliseconds(50))
      }
      let now = self.now()
      owner { $0.argumentsVerdict(t, nodes: nodes, detail: detail, now: now) }
    }
  }

  /// How long a reader waits for the cluster to declare an unreachable node dead.
  var verdictNanos: UInt64 {
    let c = options.config
    let ms = c.healthCheckPeriodMs * max(1, c.healthCheckFailureThreshold) + c.healthCheckTimeoutMs + 2 * c.resourceReportPeriodMs + 1000
    return UInt64(max(1000, ms)) * 1_000_000
  }

  /// Pins a stored object for this process and returns its bytes; valid until
  /// `unpinStored`. An object whose primary copy is on another node is pulled into
  /// this node's store first; if that node died, waits for the object to come back
  /// (its owner rebuilds it) and pins the new copy. Blocks; call with the GIL released.
  public func pinStored(_ id: ObjectID, _ o: Swiftray_RayObject) throws(SwiftrayError) -> UnsafeRawBufferPointer {
    var o = o
    var attempt = 0
    while true {
      do throws(SwiftrayError) {
        return try pinOnce(id, o)
      } catch {
        attempt += 1
        guard error.code == .objectLost, attempt <= 3, let fresh = try recovered(id, from: o) else { throw error }
        o = fresh
      }
    }
  }

  /// After a failed read of `o`: waits (bounded by the health-check time) for the
  /// cluster to declare its node dead, then for the object's new value. nil when the
  /// node is not declared dead or nothing new comes; throws the error the owner stored
  /// when it cannot be rebuilt.
  func recovered(_ id: ObjectID, from o: Swiftray_RayObject) throws(SwiftrayError) -> Swiftray_RayObject? {
    // This node's own store said the object is gone (a spill file it could not read
    // back): no verdict on a node is coming, so none is waited for; the owner rebuilds
    // its task returns from lineage right away.
    if o.storeNode == Data(options.nodeID.binary) { return try rebuiltAfterLocalLoss(id, from: o) }
    LockDiscipline.mayBlock("waiting for a node's verdict")
    let deadline = self.now() + verdictNanos
    let node: Set<Data> = [o.storeNode]
    while !state.withLock({ $0.declaredDead(node) }) {
      if self.now() > deadline { return nil }
      usleep(50_000)
    }
    guard owner({ $0.readFailedOnDeadNode(id, lostNode: o.storeNode) }) else { return nil }
    return try awaitNewCopy(id, elsewhereThan: o.storeNode)
  }

  /// At the owner, for a task's return this node's store lost (`StoreState.restoreFailed`):
  /// runs its task again through its lineage (one whose lineage is gone becomes the
  /// error that says so) and waits for the new copy. nil for a put object or when this
  /// process does not own it (the reader gets the store's error).
  func rebuiltAfterLocalLoss(_ id: ObjectID, from o: Swiftray_RayObject) throws(SwiftrayError) -> Swiftray_RayObject? {
    // A put object cannot be rebuilt: the reader gets the store's error, naming the file.
    if id.isPut { return nil }
    let now = self.now()
    guard owner({ $0.localCopyLost(id, was: o, why: "its spill file on this node could not be read back whole", now: now) })
    else { return nil }
    return try awaitNewCopy(id, elsewhereThan: nil)
  }

  /// Waits for `id`'s value after a copy was lost: the new stored copy (on another node
  /// than `lostNode`, when given), else nil; the error it became is thrown.
  func awaitNewCopy(_ id: ObjectID, elsewhereThan lostNode: Data?) throws(SwiftrayError) -> Swiftray_RayObject? {
    guard waitFor([id], needed: 1, timeoutNanos: UInt64(Int64.max)) else { return nil }
    guard let fresh = objects([id]).first ?? nil else { return nil }
    if let code = ErrorObject.code(fromMetadata: fresh.metadata) {
      throw SwiftrayError(code, String(decoding: fresh.data, as: UTF8.self))
    }
    guard fresh.storeSize > 0, fresh.storeNode != lostNode else { return nil }
    return fresh
  }
}
