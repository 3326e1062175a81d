import Foundation
import RuntimeProto

/// What an owner does when a node dies (DESIGN §3, lineage reconstruction): leases
/// there are lost, owned objects whose only copy lived there are rebuilt by running
/// their task again (recursively through lost arguments, within `max_retries`), `put`
/// objects become `ObjectLostError`s, and readers wait through the rebuild.
///
/// Threading: called from the node-death subscription task and from readers (GIL
/// released); state under the CoreWorker's lock, actions outside it.
extension CoreWorker {
  func nodeDied(_ d: Swiftray_NodeDeath) {
    let short = NodeID(binary: d.nodeID)?.hex.prefix(12) ?? "?"
    let why = "node \(short) died: \(d.detail.isEmpty ? "it stopped answering health checks" : d.detail)"
    let now = Self.now()
    var fetches: [ObjectID] = []
    var promote: [ObjectID] = []
    let here = (node: Data(options.nodeID.binary), store: objectStore.remoteAddress)
    let actions = state.withLock { s -> [NormalTaskSubmitter.Action] in
      s.deadNodes[d.nodeID] = why
      for a in [d.nodeManagerAddress, d.nodeManagerEndpoint] where !a.isEmpty { s.deadNodeManagers[a] = why }
      let lost = s.leaseNodes.filter { $0.value == d.nodeManagerAddress || $0.value == d.nodeManagerEndpoint }.keys
      var actions = lost.sorted().flatMap { s.submitter.workerLost(leaseID: $0, now: now) }
      let rerun = Self.objectsLost(&s, on: d.nodeID, why: why, fetches: &fetches, here: here, promote: &promote)
      for t in rerun { actions += Self.resolveAgain(&s, t, now: now, fetches: &fetches) }
      return actions
    }
    for id in fetches { fetch(id) }
    perform(actions)
    guard !promote.isEmpty else { return }
    // Copies this node pulled become the primaries; where one is gone (dropped for
    // room meanwhile), the object is rebuilt after all.
    objectStore.promote(promote) { [self, promote] ok in
      let now = Self.now()
      var fetches: [ObjectID] = []
      let actions = state.withLock { s -> [NormalTaskSubmitter.Action] in
        var rerun: [TaskID] = []
        for (id, promoted) in zip(promote, ok) where !promoted {
          s.localCopies.remove(id)
          if let t = Self.objectLost(&s, id, why: why) { rerun.append(t) }
        }
        return rerun.flatMap { Self.resolveAgain(&s, $0, now: now, fetches: &fetches) }
      }
      for id in fetches { fetch(id) }
      perform(actions)
    }
  }

  /// Owned objects stored on the dead node: each becomes pending again (its task runs
  /// again) or an error saying why it cannot come back. Cached descriptors of borrowed
  /// ones are dropped and asked of their owner again (it answers once it rebuilt them;
  /// `fetches` gets those to ask). Returns the tasks to run again, in id order.
  /// Owned ones of which this node pulled a copy (`localCopies`) now point at this
  /// node's store and go to `promote` instead (the shell makes those copies primary).
  static func objectsLost(_ s: inout State, on node: Data, why: String, fetches: inout [ObjectID],
                          here: (node: Data, store: String), promote: inout [ObjectID]) -> [TaskID] {
    let lost = s.store.filter { $0.value.storeSize > 0 && $0.value.storeNode == node }.keys.sorted { $0.hex < $1.hex }
    var rerun: [TaskID] = []
    for id in lost {
      if s.owners[id] != nil {
        if s.store[id]?.nestedRefs.isEmpty == true {
          s.store[id] = nil
          // A task here may have counted it as resolved already (`taskReady` waits again).
          if s.refs.isInScope(id) && startFetch(&s, id) { fetches.append(id) }
        }
        continue
      }
      if s.localCopies.contains(id), var o = s.store[id] {
        o.storeNode = here.node
        o.storeAddress = here.store
        s.store[id] = o
        promote.append(id)
        continue
      }
      if let t = objectLost(&s, id, why: why) { rerun.append(t) }
    }
    return rerun
  }

  /// One owned object whose only copy is gone: it becomes pending again (returns the
  /// task to run again) or the error that says why it cannot come back.
  static func objectLost(_ s: inout State, _ id: ObjectID, why: String) -> TaskID? {
    if id.isPut {
      s.store[id] = errorObject(.objectLost, "Object \(id.hex) was lost with its node (\(why)): it was made by put(), "
        + "whose only copy lived in that node's object store, and put objects cannot be rebuilt.")
      return nil
    }
    if let spec = s.tasks.spec(id.task), !spec.actorID.isEmpty || spec.hasActorCreation {
      s.store[id] = errorObject(.objectLost, "Object \(id.hex) was lost with its node (\(why)): it was returned by an "
        + "actor method, which is not re-executed to rebuild it.")
      return nil
    }
    switch s.tasks.rebuild(id.task, lost: id, why: why) {
    case .resubmit:
      s.store[id] = nil
      return id.task
    case .alreadyRunning:
      s.store[id] = nil
    case .fail(let e):
      s.store[id] = errorObject(e.code, e.message)
    }
    return nil
  }

  /// A worker could not read some of `t`'s stored arguments (their node died or is
  /// unreachable), so `t` did not run. Once the cluster has declared those nodes dead
  /// (the arguments are then being rebuilt, or hold the error saying why not), `t` is
  /// resolved and sent again; if no verdict comes, it fails with the reason.
  func argumentsLost(_ t: TaskID, _ ids: [ObjectID], detail: String) {
    // The nodes the worker tried: those of the arguments as they were sent (since then
    // they may have been rebuilt elsewhere already).
    let lost = Set(ids.map { Data($0.binary) })
    let nodes = state.withLock { s in
      Set((s.tasks.spec(t)?.args ?? []).filter { lost.contains($0.objectID) }.map(\.value.storeNode).filter { !$0.isEmpty })
    }
    let deadline = Self.now() + verdictNanos
    Task { [self] in
      while state.withLock({ s in !nodes.allSatisfy { s.deadNodes[$0] != nil } }) && Self.now() < deadline {
        await Clocks.current.sleep(for: .milliseconds(50))
      }
      let now = Self.now()
      var fetches: [ObjectID] = []
      let (submit, failed) = state.withLock { s -> ([NormalTaskSubmitter.Action], [TaskManager.Action]) in
        guard s.tasks.isPending(t) else { return ([], []) }
        if nodes.allSatisfy({ s.deadNodes[$0] != nil }) {
          return (Self.resolveAgain(&s, t, now: now, fetches: &fetches, rerun: false), [])
        }
        return ([], s.tasks.taskFailed(t, error: SwiftrayError(.objectLost,
          "Task \(s.tasks.spec(t)?.name ?? "?") (\(t.hex)) could not read its arguments: \(detail)")))
      }
      for id in fetches { fetch(id) }
      perform(submit)
      applyTaskActions(failed, reply: nil)
    }
  }

  /// How long a reader waits for the cluster to declare an unreachable node dead.
  var verdictNanos: UInt64 {
    let c = options.config
    let ms = c.healthCheckPeriodMs * max(1, c.healthCheckFailureThreshold) + c.healthCheckTimeoutMs + 2 * c.resourceReportPeriodMs + 1000
    return UInt64(max(1000, ms)) * 1_000_000
  }

  /// Resolves a task's arguments anew (a lost one waits for its own rebuild; a borrowed
  /// one is fetched from its owner), then queues it. `rerun`: the task had finished and
  /// runs again to rebuild its returns, so it holds its arguments again.
  static func resolveAgain(_ s: inout State, _ t: TaskID, now: UInt64, fetches: inout [ObjectID],
                           rerun: Bool = true) -> [NormalTaskSubmitter.Action] {
    guard var spec = s.tasks.spec(t) else { return [] }
    var deps: [ObjectID] = []
    for i in spec.args.indices where !spec.args[i].objectID.isEmpty {
      guard let id = ObjectID(binary: spec.args[i].objectID) else { continue }
      // Back to a reference: `taskReady` inlines whatever the argument is now.
      var r = Swiftray_ObjectReference()
      r.objectID = spec.args[i].objectID
      spec.args[i].kind = .ref(r)
      deps.append(id)
    }
    s.tasks.specResolved(t, spec: spec)
    if rerun {
      // The run holds its arguments again until it ends, as the first run did.
      let held = s.tasks.argRefs(t)
      for a in held where s.owners[a] == nil { s.refs.ownedObjectCreated(a) }
      s.refs.submittedTaskRefsAdded(held)
    }
    var nested: [TaskID] = []
    for id in deps where s.store[id] == nil && s.owners[id] == nil && !s.tasks.isPending(id.task) {
      // Owned and freed once used: rebuilt through its own kept lineage.
      let why = "it is needed to rebuild the return values of task \(spec.name) (\(t.hex))"
      switch id.isPut ? .fail(SwiftrayError(.objectLost, "Object \(id.hex) was freed, and put objects cannot be rebuilt (\(why)).")) : s.tasks.rebuild(id.task, lost: id, why: why) {
      case .resubmit: nested.append(id.task)
      case .alreadyRunning: break
      case .fail(let e): s.store[id] = errorObject(e.code, e.message)
      }
    }
    var actions: [NormalTaskSubmitter.Action] = []
    for n in nested { actions += resolveAgain(&s, n, now: now, fetches: &fetches) }
    let store = s.store
    if s.resolver.taskArrived(t, dependencies: deps, isReady: { store[$0] != nil }) { return actions + taskReady(&s, t, now: now) }
    for id in deps where s.store[id] == nil && startFetch(&s, id) { fetches.append(id) }
    return actions
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
    let deadline = Self.now() + verdictNanos
    while state.withLock({ $0.deadNodes[o.storeNode] == nil }) {
      if Self.now() > deadline { return nil }
      usleep(50_000)
    }
    var fetch = false
    let known: Bool = state.withLock { s in
      if s.owners[id] != nil, let cached = s.store[id], cached.storeNode == o.storeNode, cached.nestedRefs.isEmpty {
        s.store[id] = nil
      }
      fetch = s.store[id] == nil && Self.startFetch(&s, id)
      return s.store[id] != nil || s.owners[id] != nil || s.tasks.isPending(id.task)
    }
    guard known else { return nil }  // not ours and not borrowed: nobody here can bring it back
    if fetch { self.fetch(id) }
    guard waitFor([id], needed: 1, timeoutNanos: UInt64(Int64.max)) else { return nil }
    guard let now = objects([id]).first ?? nil else { return nil }
    if let code = ErrorObject.code(fromMetadata: now.metadata) { throw SwiftrayError(code, String(decoding: now.data, as: UTF8.self)) }
    guard now.storeSize > 0, now.storeNode != o.storeNode else { return nil }
    return now
  }

  /// At the owner, for a task's return this node's store lost (`StoreState.restoreFailed`):
  /// runs its task again through its lineage (one whose lineage is gone becomes the
  /// error that says so) and waits for the new copy. nil for a put object or when this
  /// process does not own it (the reader gets the store's error).
  func rebuiltAfterLocalLoss(_ id: ObjectID, from o: Swiftray_RayObject) throws(SwiftrayError) -> Swiftray_RayObject? {
    let why = "its spill file on this node could not be read back whole"
    let now = Self.now()
    var fetches: [ObjectID] = []
    // A put object cannot be rebuilt: the reader gets the store's error, naming the file.
    if id.isPut { return nil }
    let (owned, actions): (Bool, [NormalTaskSubmitter.Action]) = state.withLock { s in
      // Only the descriptor that failed: another reader may have started the rebuild
      // (the entry is then gone until it is done).
      guard s.owners[id] == nil, let cached = s.store[id], cached.storeSize > 0, cached == o
      else { return (s.owners[id] == nil && (s.store[id] != nil || s.tasks.isPending(id.task)), []) }
      guard let t = Self.objectLost(&s, id, why: why) else { return (true, []) }
      return (true, Self.resolveAgain(&s, t, now: now, fetches: &fetches))
    }
    guard owned else { return nil }
    for f in fetches { fetch(f) }
    perform(actions)
    guard waitFor([id], needed: 1, timeoutNanos: UInt64(Int64.max)) else { return nil }
    guard let fresh = objects([id]).first ?? nil else { return nil }
    if let code = ErrorObject.code(fromMetadata: fresh.metadata) {
      throw SwiftrayError(code, String(decoding: fresh.data, as: UTF8.self))
    }
    return fresh.storeSize > 0 ? fresh : nil
  }
}
