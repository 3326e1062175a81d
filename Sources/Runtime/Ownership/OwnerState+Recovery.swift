import Foundation
import RuntimeProto

/// What an owner decides when a node dies (DESIGN §3, lineage reconstruction): leases
/// there are lost, owned objects whose only copy lived there are rebuilt by running
/// their task again (recursively through lost arguments, within `max_retries`), `put`
/// objects become `ObjectLostError`s, copies this node pulled are promoted, cached
/// borrowed descriptors are asked of their owners again, and actor incarnations there
/// get no more calls (fencing as callers see it).
extension OwnerState {
  /// The cluster declared a node dead. `nodeManagers`: its NodeManager's addresses;
  /// `here`: this node and its store's address (for promoted copies).
  public mutating func nodeDied(_ node: Data, nodeManagers: [String], why: String, here: (node: Data, store: String),
                                now: UInt64) -> Effects {
    var e = Effects()
    deadNodes[node] = why
    for a in nodeManagers where !a.isEmpty { deadNodeManagers[a] = why }
    let gone = Set(nodeManagers.filter { !$0.isEmpty })
    let lost = leases.byID.filter { $0.value.node.map(gone.contains) ?? false }.keys.sorted()
    for l in lost { absorb(submitter.workerLost(leaseID: l, now: now), now: now, &e) }
    for t in objectsLost(on: node, why: why, here: here, &e) { resolveAgain(t, now: now, &e) }
    queueActorSteps(actorSubmitter.nodeDied(node), &e)
    refActionsDecided(refs.borrowersDied(onNode: node), now: now, &e)
    return e
  }

  /// The shell tried to make `ids` primary (`Effects.promote`): where a copy is gone
  /// (dropped for room meanwhile) the object is rebuilt after all.
  public mutating func promotionsEnded(_ ids: [ObjectID], ok: [Bool], why: String, now: UInt64) -> Effects {
    var e = Effects()
    var rerun: [TaskID] = []
    for (id, promoted) in zip(ids, ok) where !promoted {
      localCopies.remove(id)
      if let t = objectLost(id, why: why) { rerun.append(t) }
    }
    for t in rerun { resolveAgain(t, now: now, &e) }
    return e
  }

  /// A copy of owned `id` was pinned in this node's store, pulled from another node.
  public mutating func copyPinned(_ id: ObjectID) {
    if owners[id] == nil && store.contains(id) { localCopies.insert(id) }
  }

  /// True once every one of `nodes` was declared dead.
  public func declaredDead(_ nodes: Set<Data>) -> Bool { nodes.allSatisfy { deadNodes[$0] != nil } }

  /// The verdict on the nodes whose stored arguments `t`'s worker could not read (or
  /// the time to wait for one ran out): resolved and sent again once they are declared
  /// dead (their objects are being rebuilt, or hold why not), else failed with `detail`.
  public mutating func argumentsVerdict(_ t: TaskID, nodes: Set<Data>, detail: String, now: UInt64) -> Effects {
    var e = Effects()
    guard tasks.isPending(t) else { return e }
    if declaredDead(nodes) {
      resolveAgain(t, now: now, rerun: false, &e)
    } else {
      taskActionsDecided(tasks.taskFailed(t, error: SwiftrayError(.objectLost,
        "Task \(tasks.spec(t)?.name ?? "?") (\(t.hex)) could not read its arguments: \(detail)")), reply: nil, now: now, &e)
    }
    return e
  }

  /// A reader could not read `id` from the store of `lostNode`, now declared dead: the
  /// stale descriptor is dropped and (borrowed) asked of its owner again. False when
  /// nobody here can bring it back (neither owned, borrowed, nor being computed).
  public mutating func readFailedOnDeadNode(_ id: ObjectID, lostNode: Data) -> (Bool, Effects) {
    var e = Effects()
    if owners[id] != nil, let cached = store[id], cached.storeNode == lostNode, cached.nestedRefs.isEmpty {
      store[id] = nil
    }
    if !store.contains(id) { startFetch(id, &e) }
    return (store.contains(id) || owners[id] != nil || tasks.isPending(id.task), e)
  }

  /// This node's store lost owned `id` (a spill file it could not read back) whose
  /// descriptor was `o`: its task runs again through its lineage. False when this
  /// process neither owns it nor has it coming (the reader gets the store's error).
  public mutating func localCopyLost(_ id: ObjectID, was o: Swiftray_RayObject, why: String, now: UInt64) -> (Bool, Effects) {
    var e = Effects()
    // Only the descriptor that failed: another reader may have started the rebuild
    // (the entry is then gone until it is done).
    guard owners[id] == nil, let cached = store[id], cached.storeSize > 0, cached == o
    else { return (owners[id] == nil && (store.contains(id) || tasks.isPending(id.task)), e) }
    if let t = objectLost(id, why: why) { resolveAgain(t, now: now, &e) }
    return (true, e)
  }

  /// Owned objects stored on the dead node: each becomes pending again (its task runs
  /// again) or an error saying why it cannot come back. Cached descriptors of borrowed
  /// ones are dropped and asked of their owner again. Owned ones of which this node
  /// pulled a copy now point at this node's store and go to `e.promote`. Returns the
  /// tasks to run again, in id order.
  mutating func objectsLost(on node: Data, why: String, here: (node: Data, store: String), _ e: inout Effects) -> [TaskID] {
    let lost = store.all.filter { $0.object.storeSize > 0 && $0.object.storeNode == node }.map(\.id).sorted { $0.hex < $1.hex }
    var rerun: [TaskID] = []
    for id in lost {
      if owners[id] != nil {
        if store[id]?.nestedRefs.isEmpty == true {
          store[id] = nil
          // A task here may have counted it as resolved already (`taskReady` waits again).
          if refs.isInScope(id) { startFetch(id, &e) }
        }
        continue
      }
      if localCopies.contains(id), var o = store[id] {
        o.storeNode = here.node
        o.storeAddress = here.store
        store[id] = o
        e.promote = (ids: (e.promote?.ids ?? []) + [id], why: why)
        continue
      }
      if let t = objectLost(id, why: why) { rerun.append(t) }
    }
    return rerun
  }

  /// One owned object whose only copy is gone: it becomes pending again (returns the
  /// task to run again) or the error that says why it cannot come back.
  mutating func objectLost(_ id: ObjectID, why: String) -> TaskID? {
    if id.isPut {
      store[id] = Self.errorObject(.objectLost, "Object \(id.hex) was lost with its node (\(why)): it was made by put(), "
        + "whose only copy lived in that node's object store, and put objects cannot be rebuilt.")
      return nil
    }
    if let spec = tasks.spec(id.task), !spec.actorID.isEmpty || spec.hasActorCreation {
      store[id] = Self.errorObject(.objectLost, "Object \(id.hex) was lost with its node (\(why)): it was returned by an "
        + "actor method, which is not re-executed to rebuild it.")
      return nil
    }
    switch tasks.rebuild(id.task, lost: id, why: why) {
    case .resubmit:
      store[id] = nil
      return id.task
    case .alreadyRunning:
      store[id] = nil
    case .fail(let err):
      store[id] = Self.errorObject(err.code, err.message)
    }
    return nil
  }

  /// Resolves a task's arguments anew (a lost one waits for its own rebuild; a borrowed
  /// one is fetched from its owner), then queues it. `rerun`: the task had finished and
  /// runs again to rebuild its returns, so it holds its arguments again.
  mutating func resolveAgain(_ t: TaskID, now: UInt64, rerun: Bool = true, _ e: inout Effects) {
    guard var spec = tasks.spec(t) else { return }
    var deps: [ObjectID] = []
    for i in spec.args.indices where !spec.args[i].objectID.isEmpty {
      guard let id = ObjectID(binary: spec.args[i].objectID) else { continue }
      // Back to a reference: `taskReady` inlines whatever the argument is now.
      var r = Swiftray_ObjectReference()
      r.objectID = spec.args[i].objectID
      spec.args[i].kind = .ref(r)
      deps.append(id)
    }
    tasks.specResolved(t, spec: spec)
    if rerun {
      // The run holds its arguments again until it ends, as the first run did.
      let held = tasks.argRefs(t)
      for a in held where owners[a] == nil { refs.ownedObjectCreated(a) }
      refs.submittedTaskRefsAdded(held)
    }
    var nested: [TaskID] = []
    for id in deps where !store.contains(id) && owners[id] == nil && !tasks.isPending(id.task) {
      // Owned and freed once used: rebuilt through its own kept lineage.
      let why = "it is needed to rebuild the return values of task \(spec.name) (\(t.hex))"
      let verdict: TaskManager.Rebuild = id.isPut
        ? .fail(SwiftrayError(.objectLost, "Object \(id.hex) was freed, and put objects cannot be rebuilt (\(why))."))
        : tasks.rebuild(id.task, lost: id, why: why)
      switch verdict {
      case .resubmit: nested.append(id.task)
      case .alreadyRunning: break
      case .fail(let err): store[id] = Self.errorObject(err.code, err.message)
      }
    }
    for n in nested { resolveAgain(n, now: now, &e) }
    let store = self.store
    if resolver.taskArrived(t, dependencies: deps, isReady: { store.contains($0) }) { return taskReady(t, now: now, &e) }
    for id in deps where !self.store.contains(id) { startFetch(id, &e) }
  }
}
