import Foundation
import Runtime
import RuntimeProto

/// Actors in the simulation: the head's side is the ControlService's `ActorDirectory`
/// (placement through leases it holds, creation, restarts, deaths, long polls of the
/// actor's state), the callers' side `OwnerState`'s actor steps, and a worker that hosts
/// an actor runs each caller's calls in the order received. An actor call returns its
/// sequence number, so a result says which call ran.
extension SimCluster {
  // MARK: - the head

  func headPerform(_ actions: [ActorDirectory.Action]) {
    for a in actions {
      switch a {
      case .requestLease(let id, let spec):
        // As ControlService.placementNode: the best node of the head's view.
        let shape = ResourceSet(proto: spec.resources)
        let placement = ResourceSet(proto: spec.actorCreation.placementResources)
        let views = headView()
        let target = NodePicker.pick(shape.union(placement), among: views)?.address ?? views.first(where: \.alive)?.address
        guard let n = nodes.first(where: { $0.address == target })?.index else {
          headPerform(actorDirectory.leaseRequestFailed(id, now: time.now))
          continue
        }
        let requestID = nextHeadRequest
        nextHeadRequest += 1
        headRequests[requestID] = id
        headPlacement[requestID] = placement
        sendRequest(Self.head, requestID, SchedulingKey(shape: shape, proto: spec.strategy), preferred: nil, to: n,
                    routed: true, hops: 0)
      case .pushCreation(let id, let spec, let lease):
        guard let wid = WorkerID(binary: lease.worker.workerID), let w = workers[wid] else { continue }
        let epoch = headEpoch
        send(on: "head->w\(wid.hex.prefix(6))", delay: latency(w.node), "create actor \(id.counter) on w\(wid.hex.prefix(6))") { [self] in
          // A push to a dead worker: its node reports the death, the directory restarts it.
          guard w.alive else { return }
          w.inbox.append((Self.head, id, spec, lease.leaseID, 0, .creation(id, lease, head: epoch)))
          runNext(w)
        }
      case .returnLease(let lease, let disconnect):
        guard let n = nodes.first(where: { $0.address == lease.node }) else { continue }
        send(on: "head->n\(n.index)", delay: latency(n.index), "head returns lease \(lease.leaseID & 0xffff)") { [self] in
          guard n.alive else { return }
          // As NodeManager.returnWorkerLease: only the lease's owner gives it back.
          perform(node: n.index, n.queue.leaseReturned(lease.leaseID, disconnect: disconnect, owner: headID))
        }
      case .killWorker(let lease, let reason):
        guard let wid = WorkerID(binary: lease.worker.workerID), let w = workers[wid] else { continue }
        time.after(latency(w.node), "head kills w\(wid.hex.prefix(6))") { [self] in killWorker(w, why: reason) }
      case .recorded(let id):
        if let record = actorDirectory.record(id) { storedActors[id] = record }
      case .published(let id):
        guard let info = actorDirectory.info(id) else { continue }
        if let record = actorDirectory.record(id) { storedActors[id] = record }  // as the head writes it
        let ready = (actorWatches[id] ?? []).filter { $0.after < info.version }
        actorWatches[id] = (actorWatches[id] ?? []).filter { $0.after >= info.version }
        for w in ready { answerWatch(w.driver, info) }
      }
    }
    if !headTickArmed, let d = actorDirectory.nextDeadline() {
      headTickArmed = true
      let epoch = headEpoch
      time.at(d + 1000, "head tick") { [self] in
        sameHead(epoch) {
          headTickArmed = false
          headPerform(actorDirectory.tick(now: time.now))
        }
      }
    }
  }

  func headView() -> [NodePicker.NodeView] {
    nodes.map { n in
      NodePicker.NodeView(id: Data(n.id.binary), address: n.address, total: n.queue.total,
                          available: n.lastReported, alive: !headCountsDead(n), startTimeMs: Int64(n.index))
    }
  }

  func headLeaseAnswered(_ requestID: UInt64, _ reply: Swiftray_RequestWorkerLeaseReply?, node n: Int) {
    headPlacement[requestID] = nil
    // An answer to a head that is gone is lost: a lease it was granted is ended by its
    // node once the head's lists leave it out (`controlLeasesReconciled`).
    guard let id = headRequests.removeValue(forKey: requestID) else { return }
    let now = time.now
    guard let reply else { return headPerform(actorDirectory.leaseRequestFailed(id, now: now)) }
    switch reply.status {
    case .granted:
      headPerform(actorDirectory.leaseGranted(id, .init(leaseID: reply.leaseID, worker: reply.worker, node: nodes[n].address,
                                                         grant: reply.leaseGrant),
                                              hostAlive: nodeTable[reply.worker.nodeID]?.alive == true, now: now))
    case .infeasible:
      headPerform(actorDirectory.leaseRejected(id, detail: "no node has the resources it needs: \(reply.detail)", now: now))
    case .workerStartFailed:
      headPerform(actorDirectory.workersFailToStart(id, detail: reply.detail))
    default:
      headPerform(actorDirectory.leaseRequestFailed(id, now: now))
    }
  }

  func answerWatch(_ d: Int, _ info: Swiftray_ActorInfo) {
    send(on: "head->d\(d)", delay: latency(0), "actor \(TaskID(binary: info.actorID)?.counter ?? 0) is \(info.state) for d\(d)") { [self] in
      driverEvent(d) { $0.actorInfo(info) }
    }
  }

  // MARK: - drivers' actor steps

  /// Carries out a driver's queued actor steps in order (CoreWorker.performActorSteps).
  func driverActorSteps(_ d: Int) {
    while let steps = drivers[d].state.takeActorSteps() {
      for step in steps { actorStep(d, step) }
      drivers[d].state.actorStepsDone()
    }
  }

  func actorStep(_ d: Int, _ step: ActorStep) {
    switch step {
    case .create(let tid):
      registerActor(d, tid)
    case .call(.push(let tid, let addr, let incarnation)):
      guard let spec = drivers[d].state.tasks.spec(tid), let wid = WorkerID(binary: addr.workerID) else { return }
      // Fencing as callers see it: once a caller knows a node is dead, no call of its
      // goes to an incarnation there (that actor was restarted elsewhere, or died).
      if drivers[d].state.declaredDead([addr.nodeID]) {
        fail("driver \(d) sent \(spec.name)#\(spec.actorSeq) to incarnation \(incarnation) on a node it knows is dead")
      }
      let w = workers[wid]
      let conn = nextConnection
      nextConnection += 1
      send(on: "d\(d)->w\(wid.hex.prefix(6))", delay: latency(w?.node ?? 0), "d\(d) calls actor: \(spec.name)#\(spec.actorSeq)") { [self] in
        guard let w, w.alive else { return actorCallBroke(d, tid, incarnation: incarnation, host: w?.node ?? 0) }
        w.inbox.append((d, tid, spec, 0, conn, .call(incarnation: incarnation)))
        runNext(w)
      }
    case .call(.fail(let tid, let error)):
      driverEvent(d) { $0.taskFailed(tid, error: error, now: time.now) }
    case .call(.watch(let actor, let after)):
      headWatch(d, actor, after: after)
    case .call(.warnPending):
      activity["warning", default: 0] += 1
    }
  }

  func answerWatchUnknown(_ d: Int, _ actor: ActorID) {
    send(on: "head->d\(d)", delay: latency(0), "actor \(actor.counter) unknown to the head") { [self] in
      driverEvent(d) { $0.actorWatchFailed(actor, detail: "the cluster has no record of it", unknown: true) }
    }
  }

  /// The constructor's arguments are resolved: register it with the head (on the same
  /// channel as the driver's watches, so the head knows it before they come).
  func registerActor(_ d: Int, _ tid: TaskID) {
    var spec: Swiftray_TaskSpec?
    driverEvent(d) { s in
      let (ready, e) = s.constructorReady(tid, now: time.now)
      spec = ready
      return e
    }
    guard let spec else { return }
    toHead(on: "d\(d)->head", delay: latency(0), "d\(d) creates actor \(tid.counter)") { [self] in
      switch actorDirectory.actorRegistered(spec) {
      case .success(let actions): headPerform(actions)
      case .failure(let e): fail("actor registration refused: \(e)")
      }
    }
  }

  /// A driver's connection to an actor's worker broke before the call's reply.
  func actorCallBroke(_ d: Int, _ tid: TaskID, incarnation: Int32, host: Int) {
    send(on: "n\(host)->d\(d)", delay: rng.between(1 * ms, 5 * ms), "d\(d): connection to actor broke") { [self] in
      driverEvent(d) { $0.actorCallLost(tid, incarnation: incarnation) }
    }
  }

  // MARK: - workers hosting actors

  /// A creation or an actor call finished running on `w`.
  func actorJobDone(_ w: Worker, _ job: Worker.Job) {
    switch job.kind {
    case .task: return
    case .creation(let id, let lease, let epoch):
      w.actor = id
      w.lastSeq = [:]
      w.ran = [:]
      activity["actor created", default: 0] += 1
      // The answer to the head's push: lost if that head is gone.
      send(on: "w\(w.id.hex.prefix(6))->head", delay: latency(w.node), "actor \(id.counter) constructed") { [self] in
        sameHead(epoch) { headPerform(actorDirectory.creationReplied(id, lease: lease, error: nil)) }
      }
    case .call:
      guard let actor = TaskID(binary: job.spec.actorID), w.actor == actor else {
        return fail("a call to actor \(TaskID(binary: job.spec.actorID)?.counter ?? 0) ran on a worker hosting \(w.actor?.counter ?? 0)")
      }
      // A call resent after a broken connection may run again (max_task_retries); a
      // first run must come after every call of the caller that ran before it.
      let seq = job.spec.actorSeq
      if w.ran[job.owner, default: []].contains(seq) {
        activity["actor call run again", default: 0] += 1
      } else if let last = w.lastSeq[job.owner], seq < last {
        fail("actor \(actor.counter) ran driver \(job.owner)'s call #\(seq) after #\(last): out of order")
      }
      w.ran[job.owner, default: []].insert(seq)
      w.lastSeq[job.owner] = max(seq, w.lastSeq[job.owner] ?? 0)
      activity["actor call", default: 0] += 1
      var reply = Swiftray_PushTaskReply()
      var ret = Swiftray_ReturnObject()
      ret.objectID = Data(ObjectID.forReturn(of: job.tid, index: 0).binary)
      ret.object.data = Data(String(job.spec.actorSeq).utf8)
      reply.returns = [ret]
      let d = job.owner
      send(on: "w\(w.id.hex.prefix(6))->d\(d)", delay: latency(w.node), "reply \(job.spec.name)#\(job.spec.actorSeq)") { [self] in
        guard !brokenConnections.contains(job.conn) else { return }
        guard case .call(let incarnation) = job.kind else { return }
        driverEvent(d) { $0.actorCallReplied(job.tid, incarnation: incarnation, reply: reply, now: time.now) }
      }
    }
  }
}
