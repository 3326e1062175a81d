import Foundation
import RuntimeProto

/// The leases an owner holds: the worker each names, the node's grant shown with every
/// push under it, its GPUs, and the NodeManager that granted it when not this node's.
struct HeldLeases: Sendable {
  struct Lease: Sendable {
    var worker: Swiftray_Address
    /// The worker as task events name it, shared by the lease's tasks.
    var eventWorker: TaskEventRecord.Worker
    var grant: Data
    var gpuIDs: [Int32]
    /// Another node's NodeManager (after a spillback); nil: this node's.
    var node: String?
  }
  var byID: [UInt64: Lease] = [:]

  /// Drops what is kept of a lease given back; its node when it is another node's.
  mutating func forget(_ leaseID: UInt64) -> String? { byID.removeValue(forKey: leaseID)?.node }
}

/// Leases, the lease protocol's events, and cancels (DESIGN §3): the owner's half of
/// `NormalTaskSubmitter`'s decisions, turned into `LeaseStep`s that carry what the shell
/// needs (the worker's address, the grant, the spec) read in the same transition.
extension OwnerState {
  /// Turns the submitter's decisions into effects: tasks that cannot run fail here, a
  /// lease given back is forgotten, and the tick timer is armed for the next deadline.
  mutating func absorb(_ actions: [NormalTaskSubmitter.Action], now: UInt64, _ e: inout Effects) {
    // A lost lease's node, read before a `.returnLease` in the same batch forgets it.
    var lostOn: [UInt64: String] = [:]
    for case .tasksLost(_, let lease) in actions {
      if let n = leases.byID[lease.leaseID]?.node { lostOn[lease.leaseID] = n }
    }
    for a in actions {
      switch a {
      case .requestLease(let requestID, let key, let task):
        e.leases.append(.request(requestID: requestID, key: key, preferredNode: preferredNode(for: task)))
      case .cancelLeaseRequest(let requestID):
        e.leases.append(.cancelRequest(requestID: requestID))
      case .push(let tid, let lease):
        guard let held = leases.byID[lease.leaseID], let spec = tasks.spec(tid) else { continue }
        taskEvents.record(spec, .submittedToWorker, now: now, worker: held.eventWorker)
        e.leases.append(.push(tid, spec: spec, lease: lease, worker: held.worker, gpuIDs: held.gpuIDs, grant: held.grant))
      case .returnLease(let leaseID, let disconnect):
        e.leases.append(.giveBack(leaseID: leaseID, disconnect: disconnect, node: leases.forget(leaseID)))
      case .warnInfeasible(let key, let detail):
        e.warnings.append("The following resource request cannot be scheduled right now: \(key). \(detail). "
          + "The task stays pending until a node that fits joins the cluster; "
          + "check num_cpus/num_gpus/resources in @remote(...) or start a node with those resources.")
      case .tasksLost(let tids, let lease):
        let node = lostOn[lease.leaseID]
        e.leases.append(.lost(tids, lease: lease, node: node, nodeDeath: node.flatMap { deadNodeManagers[$0] }))
      case .tasksFailed(let tids, let detail, let code):
        for tid in tids {
          let what = "Task \(tasks.spec(tid)?.name ?? "?") (\(tid.hex)) cannot run: \(detail)"
          let error = code == .system
            ? SwiftrayError(.system, what + ". Check that the driver's Python environment imports swiftray cleanly.")
            : SwiftrayError(code, what + ".")
          taskActionsDecided(tasks.taskFailed(tid, error: error), reply: nil, now: now, &e)
        }
      }
    }
    // One timer for the submitter's next deadline (idle leases, retries).
    if !shuttingDown, let d = submitter.nextDeadline(), tickAt.map({ $0 > d }) ?? true {
      tickAt = d
      e.armTick = d
    }
  }

  /// The node holding most of `task`'s stored argument bytes (locality), if any.
  func preferredNode(for task: TaskID) -> Data? {
    // A queued task's arguments are resolved: stored ones are descriptors in the spec.
    guard let spec = tasks.spec(task) else { return nil }
    let stored = spec.args.compactMap { a -> (node: Data, bytes: UInt64)? in
      guard case .value(let o)? = a.kind, o.storeSize > 0 else { return nil }
      return (o.storeNode, o.storeSize)
    }
    return LocalityPolicy.preferredNode(stored)
  }

  /// The armed tick fired.
  public mutating func tick(now: UInt64) -> Effects {
    tickAt = nil
    var e = Effects()
    absorb(submitter.tick(now: now), now: now, &e)
    return e
  }

  /// A NodeManager answered lease request `requestID` (nil: the request failed).
  /// `node`: the NodeManager asked, when not this node's.
  public mutating func leaseReplied(_ requestID: UInt64, _ reply: Swiftray_RequestWorkerLeaseReply?, node: String?,
                                    now: UInt64) -> Effects {
    var e = Effects()
    let actions: [NormalTaskSubmitter.Action]
    if let reply {
      switch reply.status {
      case .granted:
        guard let wid = WorkerID(binary: reply.worker.workerID) else { return e }
        if deadNodes[reply.worker.nodeID] != nil || node.map({ deadNodeManagers[$0] != nil }) == true {
          // Granted by a node already declared dead (its answer was held by a partition
          // that healed, or it had not heard yet): it is fenced, so what ran there would
          // be lost with it. Given back; the request is made again elsewhere.
          e.leases.append(.giveBack(leaseID: reply.leaseID, disconnect: true, node: node))
          absorb(submitter.leaseRequestFailed(requestID: requestID, now: now), now: now, &e)
          return e
        }
        leases.byID[reply.leaseID] = .init(worker: reply.worker, eventWorker: .init(reply.worker), grant: reply.leaseGrant,
                                           gpuIDs: reply.gpuIds, node: node)
        actions = submitter.leaseGranted(requestID: requestID, lease: .init(leaseID: reply.leaseID, worker: wid), now: now)
      case .infeasible:
        actions = submitter.leaseRejected(requestID: requestID, detail: reply.detail, now: now)
      case .canceled:
        actions = submitter.leaseRequestCanceled(requestID: requestID, now: now)
      case .workerStartFailed:
        actions = submitter.leaseFailed(requestID: requestID, detail: reply.detail, now: now)
      case .placementGroupRemoved:
        actions = submitter.leaseFailed(requestID: requestID, detail: reply.detail, now: now, code: .taskPlacementGroupRemoved)
      case .runtimeEnvSetupFailed:
        actions = submitter.leaseFailed(requestID: requestID, detail: reply.detail, now: now, code: .runtimeEnvSetupFailed)
      default:
        // Waits for its group to be placed, for room in the node's queue, or another
        // answer: asked again shortly, without a warning.
        actions = submitter.leaseRequestFailed(requestID: requestID, now: now)
      }
    } else {
      actions = submitter.leaseRequestFailed(requestID: requestID, now: now)
    }
    absorb(actions, now: now, &e)
    return e
  }

  /// The connection to a leased worker broke: its tasks are lost, the lease given back.
  public mutating func workerLost(leaseID: UInt64, now: UInt64) -> Effects {
    var e = Effects()
    if !shuttingDown { absorb(submitter.workerLost(leaseID: leaseID, now: now), now: now, &e) }
    return e
  }

  /// The owner exits: every held lease is given back, every request withdrawn.
  public mutating func exiting() -> [LeaseStep] {
    var e = Effects()
    absorb(submitter.ownerExiting(), now: 0, &e)
    return e.leases
  }

  /// `cancel()` of the task that makes `tid`'s returns: a task not yet sent is removed
  /// and its returns become `TaskCancelledError`s here; one at a worker is left to the
  /// shell to ask (`CancelStep.remote`).
  public mutating func cancelRequested(_ tid: TaskID, now: UInt64) -> (CancelStep, Effects) {
    var e = Effects()
    guard tasks.cancelRequested(tid) else { return (.finished, e) }
    var removed = false
    if resolver.taskRemoved(tid) {
      _ = actorSubmitter.callRemoved(tid)
      removed = true
    } else if let spec = tasks.spec(tid), let actor = TaskID(binary: spec.actorID) {
      // An actor call: drop it if not sent; else ask the actor's worker (never a kill).
      if actorSubmitter.callRemoved(tid) {
        removed = true
      } else if let addr = actorSubmitter.address(actor), let w = WorkerID(binary: addr.workerID) {
        return (.remote(addr, w, killable: false), e)
      }
    } else {
      let (gone, actions) = submitter.taskCanceled(tid, now: now)
      absorb(actions, now: now, &e)
      if gone {
        removed = true
      } else if let lease = submitter.leaseOf(task: tid), let held = leases.byID[lease.leaseID] {
        return (.remote(held.worker, lease.worker, killable: true), e)
      }
    }
    guard removed else { return (.pending, e) }
    taskActionsDecided(tasks.taskReplied(tid, outcome: .cancelled), reply: nil, now: now, &e)
    return (.done, e)
  }
}
