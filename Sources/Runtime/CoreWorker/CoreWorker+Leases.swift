import Foundation
import GRPCCore
import RuntimeProto

/// The lease protocol's RPCs (DESIGN §3): asking NodeManagers for leases (following
/// spillbacks), pushing tasks to leased workers, giving leases back, and turning
/// their answers into owner events. `OwnerState` decides; this carries out.
///
/// Threading: as the rest of CoreWorker: any thread, no lock held across an RPC.
extension CoreWorker {
  func perform(_ step: Owner.LeaseStep) {
    switch step {
    case .request(let requestID, let key, let preferred):
      requestLease(requestID, key, preferred: preferred)
    case .cancelRequest(let requestID):
      let nm = nodeManager
      let me = Data(options.workerID.binary)
      Task {
        var req = Swiftray_CancelWorkerLeaseRequest()
        req.leaseRequestID = requestID
        req.ownerWorkerID = me
        _ = try? await nm.nodeManagerService.cancelWorkerLease(req)
      }
    case .push(let tid, let spec, let lease, let worker, let gpus, let grant):
      send(tid, spec, to: worker, gpuIDs: gpus, lease: (lease.leaseID, grant)) { [self] reply in
        taskReplied(tid, lease: lease, reply: reply)
      } lost: { [self] in
        let now = self.now()
        owner { $0.workerLost(leaseID: lease.leaseID, now: now) }
      }
    case .giveBack(let leaseID, let disconnect, let node):
      guard let nm = node.map(nodeClient) ?? nodeManager else { return }
      let me = Data(options.workerID.binary)
      Task {
        var req = Swiftray_ReturnWorkerLeaseRequest()
        req.leaseID = leaseID
        req.disconnectWorker = disconnect
        req.ownerWorkerID = me
        _ = try? await nm.nodeManagerService.returnWorkerLease(req)
      }
    case .lost(let tids, let lease, let node, let nodeDeath):
      tasksLost(tids, lease, node: node, nodeDeath: nodeDeath)
    }
  }

  /// Asks for a lease (`LeaseClient`: this node routes it; spillbacks are followed up to
  /// `maxLeaseHops` nodes, then it is asked again here) and tells the owner the answer.
  static let maxLeaseHops = 3

  func requestLease(_ requestID: UInt64, _ key: SchedulingKey, preferred: Data?) {
    let owner = address
    let job = jobID
    let leases = LeaseClient(local: nodeManager, nodes: otherNodes, maxHops: Self.maxLeaseHops, watch: leaseCalls)
    Task { [self] in
      if case .placementGroup(let g, _, _) = key.strategy { await placementGroupRegistered(g) }
      var req = Swiftray_RequestWorkerLeaseRequest()
      req.leaseRequestID = requestID
      req.resources = key.shape.proto
      req.strategy = key.strategyProto
      req.runtimeEnv = key.runtimeEnv
      req.owner = owner
      req.jobID = Data(job.binary)
      if let preferred { req.preferredNode = preferred }
      let (reply, node) = await leases.request(req)
      let now = self.now()
      self.owner { $0.leaseReplied(requestID, reply, node: node, now: now) }
    }
  }

  /// Has this node set up runtime environment `json` before the first task needs it
  /// (`config.eager_install`, for a job's environment): a lease of no resources in it,
  /// given back at once, which leaves a worker of that environment idle here. Never
  /// blocks; a failure is the first task's to report.
  public func prepareRuntimeEnv(_ json: String) {
    let nm = nodeManager, owner = address, job = jobID
    let me = Data(options.workerID.binary)
    Task {
      var req = Swiftray_RequestWorkerLeaseRequest()
      req.leaseRequestID = UInt64.random(in: 1 ... (1 << 62))
      req.owner = owner
      req.jobID = Data(job.binary)
      req.runtimeEnv = json
      req.grantOrReject = true  // here: this is the node the driver's tasks start from
      let client = nm.nodeManagerService
      guard let r = try? await client.requestWorkerLease(req, options: ControlPlane.deadline(milliseconds: Self.eagerInstallDeadlineMs)),
            r.status == .granted else { return }
      _ = try? await client.returnWorkerLease(.with { $0.leaseID = r.leaseID; $0.ownerWorkerID = me },
                                              options: ControlPlane.deadline(milliseconds: 10_000))
    }
  }

  /// The longest an eager set-up is waited for (a pip install may take long).
  static let eagerInstallDeadlineMs = 3_600_000

  /// A client of another node's NodeManager (spillback), made once.
  func nodeClient(_ endpoint: String) -> ControlPlane.Connection? { otherNodes.client(endpoint) }

  /// Pushes a task's spec to the worker at `addr` over the data plane; `replied` gets its
  /// reply, `lost` runs when the connection broke first. (Normal tasks and actor calls.)
  /// `lease`: the lease a normal task runs under and its node's grant (actor calls: nil).
  func send(_ tid: TaskID, _ spec: Swiftray_TaskSpec, to addr: Swiftray_Address, gpuIDs: [Int32] = [],
            lease: (id: UInt64, grant: Data)? = nil,
            replied: @escaping @Sendable (Swiftray_PushTaskReply) -> Void, lost: @escaping @Sendable () -> Void) {
    guard let ep = reach(addr) else { return }
    var req = Swiftray_PushTaskRequest()
    req.spec = spec
    req.gpuIds = gpuIDs
    if let lease { req.leaseID = lease.id; req.leaseGrant = lease.grant }
    let callback: DataPlaneConnection.Callback = { result in
      switch result {
      case .success(let frame):
        switch frame.body {
        case .pushTaskReply(let reply)?: replied(reply)
        case .error(let e)?: replied(Self.refusedReply(tid, spec, SwiftrayError(.system, e.message)))
        default: replied(Self.refusedReply(tid, spec, SwiftrayError(.system, "worker at \(ep) answered a task with something else")))
        }
      case .failure(let e) where e.code == .invalidArgument:
        // The spec could not be sent as it is (too large a frame): running it again would not help.
        replied(Self.refusedReply(tid, spec, e))
      case .failure:
        lost()
      }
    }
    // A worker of this node is pushed to by its lane when it has one.
    if !lanes.request(ep, .pushTask(req), .frame(callback)) { pool.request(ep, .pushTask(req), callback: callback) }
  }

  /// The reply standing for a task that was refused, could not be sent, or whose reply
  /// could not come back (too large a frame): every return is the error; not retried.
  static func refusedReply(_ tid: TaskID, _ spec: Swiftray_TaskSpec, _ error: SwiftrayError) -> Swiftray_PushTaskReply {
    var reply = Swiftray_PushTaskReply()
    reply.isApplicationError = true
    reply.isRetryableError = false
    let obj = errorObject(error.code, "task \(spec.name) (\(tid.hex)) failed: \(error.message)")
    reply.returns = (0..<Int(max(spec.numReturns, 0))).map { i in
      var r = Swiftray_ReturnObject()
      r.objectID = Data(ObjectID.forReturn(of: tid, index: i).binary)
      r.object = obj
      return r
    }
    return reply
  }

  func taskReplied(_ tid: TaskID, lease: NormalTaskSubmitter.GrantedLease, reply: Swiftray_PushTaskReply) {
    let now = self.now()
    let lostNodes = owner { $0.taskReplied(tid, leaseID: lease.leaseID, reply: reply, now: now) }
    if let lostNodes { argumentsLost(tid, nodes: lostNodes, detail: reply.lostDetail) }
  }

  /// Tasks whose worker is gone: the node is asked how it went (unless the node itself
  /// was declared dead), and the owner retries or fails them with that.
  func tasksLost(_ tids: [TaskID], _ lease: NormalTaskSubmitter.GrantedLease, node: String?, nodeDeath: String?) {
    let nm = node.flatMap(nodeClient) ?? nodeManager
    Task { [self] in
      var req = Swiftray_GetWorkerFailureCauseRequest()
      req.workerID = Data(lease.worker.binary)
      let cause = nodeDeath == nil
        ? try? await nm.nodeManagerService.getWorkerFailureCause(
            req, options: ControlPlane.deadline(milliseconds: options.config.nodeManagerRpcTimeoutMs))
        : nil
      let how = cause?.found == true ? cause!.exit.detail
        : nodeDeath.map { "worker \(lease.worker.hex.prefix(12)) was lost with its node (\($0))" }
        ?? "worker \(lease.worker.hex.prefix(12)) died (its exit status is unknown)"
      let now = self.now()
      owner { $0.tasksLostWithWorker(tids, how: how, now: now) }
    }
  }

  /// Gives every held lease back and cancels every lease request still out, waiting
  /// (at most 2 s) for the nodes to hear it: a node that never hears keeps the worker
  /// and its CPUs for an owner that is gone. Blocks the calling thread (shutdown's).
  func returnLeasesAtExit() {
    var calls: [(conn: ControlPlane.Connection, step: Owner.LeaseStep)] = []
    for step in state.withLock({ $0.exiting() }) {
      switch step {
      case .giveBack(_, _, let node):
        if let nm = node.map(nodeClient) ?? nodeManager { calls.append((nm, step)) }
      case .cancelRequest:
        calls.append((nodeManager, step))
      default: break
      }
    }
    guard !calls.isEmpty else { return }
    let sendable = calls
    let me = Data(options.workerID.binary)
    _ = try? blockingAwait(timeout: .seconds(2)) {
      await withTaskGroup(of: Void.self) { g in
        for (conn, step) in sendable {
          g.addTask {
            let nm = conn.nodeManagerService
            switch step {
            case .giveBack(let leaseID, _, _):
              _ = try? await nm.returnWorkerLease(.with { $0.leaseID = leaseID; $0.ownerWorkerID = me })
            case .cancelRequest(let requestID):
              _ = try? await nm.cancelWorkerLease(.with { $0.leaseRequestID = requestID; $0.ownerWorkerID = me })
            default: break
            }
          }
        }
      }
    }
  }
}
