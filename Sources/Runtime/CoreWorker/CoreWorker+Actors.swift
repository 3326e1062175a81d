import Foundation
import GRPCCore
import RuntimeProto
import Synchronization

/// Actors, the owner and caller side (DESIGN §3): creating an actor registers its
/// constructor with the ControlService once the arguments are resolved; calls go straight
/// to the actor's worker in this caller's order (`ActorTaskSubmitter` decides); the
/// actor's address and fate come from ControlService long-polls.
///
/// Threading: as the rest of CoreWorker: any thread, state behind `state`, RPCs outside.
extension CoreWorker {
  /// How an actor lives and runs; the language layer's options, checked already.
  public struct ActorOptions: Sendable {
    public var className: String
    public var resources: ResourceSet
    public var placement: ResourceSet
    public var maxRestarts: Int
    public var maxTaskRetries: Int
    public var maxConcurrency: Int
    public var isAsync: Bool
    public var maxPendingCalls: Int
    public var name: String
    public var namespace: String
    public var detached: Bool
    public var handleMeta: Data
    public var strategy: SchedulingKey.Strategy
    /// Canonical JSON of its runtime environment ("" none).
    public var runtimeEnv: String
    public init(className: String, resources: ResourceSet, placement: ResourceSet, maxRestarts: Int,
                maxTaskRetries: Int, maxConcurrency: Int, isAsync: Bool, maxPendingCalls: Int, name: String,
                namespace: String, detached: Bool, handleMeta: Data, strategy: SchedulingKey.Strategy = .default,
                runtimeEnv: String = "") {
      self.runtimeEnv = runtimeEnv
      self.className = className; self.resources = resources; self.placement = placement
      self.maxRestarts = maxRestarts; self.maxTaskRetries = maxTaskRetries; self.maxConcurrency = maxConcurrency
      self.isAsync = isAsync; self.maxPendingCalls = maxPendingCalls; self.name = name
      self.namespace = namespace; self.detached = detached; self.handleMeta = handleMeta; self.strategy = strategy
    }
  }

  /// Creates an actor. Returns its id; its handle object holds one local reference (the
  /// caller's handle). A named actor whose arguments are ready is registered before this
  /// returns, so a taken name throws here. Blocks only then (one control-plane call).
  public func createActor(function: Swiftray_FunctionDescriptor, args: [TaskArgument],
                          options o: ActorOptions) throws(SwiftrayError) -> ActorID {
    var spec = Swiftray_TaskSpec()
    spec.function = function
    spec.name = "\(o.className).__init__"
    spec.numReturns = 0
    spec.runtimeEnv = o.runtimeEnv
    let strategy = strategyOrCaptured(o.strategy)
    spec.strategy = SchedulingKey(o.resources, strategy: strategy).strategyProto
    spec.resources = SchedulingKey.shape(o.resources, under: strategy).proto
    var c = Swiftray_ActorCreationSpec()
    c.maxRestarts = Int32(o.maxRestarts)
    c.maxTaskRetries = Int32(o.maxTaskRetries)
    c.maxConcurrency = Int32(o.maxConcurrency)
    c.isAsync = o.isAsync
    c.name = o.name
    c.namespace = o.namespace
    c.detached = o.detached
    c.placementResources = SchedulingKey.shape(o.placement, under: strategy).proto
    c.handleMeta = o.handleMeta
    c.className = o.className
    spec.actorCreation = c
    let named = !o.name.isEmpty
    let (tid, _) = try submit(spec, args: args, kind: .actorCreation(sync: true))
    let readyNow = state.withLock { $0.syncCreationSubmitted(tid) }
    // The head knows the actor from now on (as Ray): with its constructor when its
    // arguments are ready, else announced, its constructor following once they are.
    // A named one is registered before returning, so a taken name raises here.
    let refused = readyNow ? registerActor(tid, sync: named) : announceActor(tid, sync: named)
    if let e = refused {
      abandonCreation(tid)
      removeLocalRef(tid.actorHandleObject)
      throw e
    }
    owner { $0.actorHandleAdded(tid, maxPendingCalls: o.maxPendingCalls) }
    return tid
  }

  /// Tells the head of an actor whose constructor waits for its arguments (its spec as
  /// submitted), so that it can be found by name and called from elsewhere at once.
  /// `sync`: waits for the answer (GIL released by the caller) and returns a refusal.
  func announceActor(_ tid: TaskID, sync: Bool) -> SwiftrayError? {
    guard let spec = state.withLock({ $0.actorAnnounced(tid) }) else { return nil }
    return sendCreateActor(tid, spec, awaitingArguments: true, sync: sync)
  }

  /// A creation refused by the head (a taken name): its constructor never runs.
  func abandonCreation(_ tid: TaskID) {
    let now = self.now()
    owner { $0.creationAbandoned(tid, now: now) }
  }

  /// Blocks (bounded) until the head has this process's registration of `actor`: before
  /// a handle leaves this process (pickled), so no other process meets an actor the head
  /// does not know. At once when none is in flight. Call with the GIL released.
  public func awaitActorRegistered(_ actor: ActorID) {
    guard let done = registrations.withLock({ $0.actors[actor] }) else { return }
    _ = try? blockingAwait(timeout: .seconds(30) + controlPatience) { await done.wait() }
  }

  /// Calls `method` on an actor. Returns the call's return ids (one local ref each).
  /// Throws when the actor's `max_pending_calls` is reached. Never blocks.
  public func submitActorTask(actor: ActorID, method: String, name: String, args: [TaskArgument], numReturns: Int,
                              maxTaskRetries: Int) throws(SwiftrayError) -> [ObjectID] {
    var spec = Swiftray_TaskSpec()
    spec.actorID = Data(actor.binary)
    spec.methodName = method
    spec.name = name
    Self.setReturns(&spec, numReturns)
    spec.callerID = Data(options.workerID.binary)
    return try submit(spec, args: args, kind: .actorCall(actor, maxTaskRetries: maxTaskRetries)).returns
  }

  /// This process holds a handle it did not create (unpickled, or from `get_actor`).
  public func actorHandleAdded(_ actor: ActorID, maxPendingCalls: Int) {
    owner { $0.actorHandleAdded(actor, maxPendingCalls: maxPendingCalls) }
  }

  /// `kill(actor, no_restart=)`: asks the ControlService; false for an unknown actor.
  public func killActor(_ actor: ActorID, noRestart: Bool, reason: String? = nil) throws -> Bool {
    var req = Swiftray_KillActorRequest()
    req.actorID = Data(actor.binary)
    req.noRestart = noRestart
    req.reason = reason ?? "kill() was called on it\(noRestart ? "" : " with no_restart=False")"
    return try callControl("KillActor") { [req] in try await $0.killActor(req).found }
  }

  public func namedActor(_ name: String, namespace: String) throws -> Swiftray_ActorInfo? {
    var req = Swiftray_GetNamedActorRequest()
    req.name = name
    req.namespace = namespace
    return try callControl("GetNamedActor") { [req] c in
      let r = try await c.getNamedActor(req)
      return r.found ? r.actor : nil
    }
  }

  public func namedActors(namespace: String, all: Bool) throws -> [Swiftray_ActorInfo] {
    var req = Swiftray_ListNamedActorsRequest()
    req.namespace = namespace
    req.allNamespaces = all
    return try callControl("ListNamedActors") { [req] in try await $0.listNamedActors(req).actors }
  }

  // MARK: carrying out actor steps

  /// Carries out queued actor steps. One thread at a time drains the queue (others
  /// leave their steps to it), so calls reach an actor's connection in sequence order.
  /// `first`: steps already taken (`takeActorRound`), else they are taken here.
  func performActorSteps(first: ActorRound? = nil) {
    var round = first ?? state.withLock { $0.takeActorStepsWithSpecs() }
    while let (steps, specs) = round {
      for (step, spec) in zip(steps, specs) { perform(step, spec: spec) }
      // The round done and the next taken in one lock.
      round = state.withLock { s in
        s.actorStepsDone()
        return s.takeActorStepsWithSpecs()
      }
    }
  }

  /// `spec`: a call's, read when the step was taken (nil: its task is gone).
  private func perform(_ step: ActorStep, spec: Swiftray_TaskSpec?) {
    switch step {
    case .create(let tid): _ = registerActor(tid, sync: false)
    case .call(.push(let tid, let addr, let incarnation)):
      if let spec { pushActorCall(tid, spec, addr, incarnation) }
    case .call(.fail(let tid, let error)):
      let now = self.now()
      owner { $0.taskFailed(tid, error: error, now: now) }
    case .call(.watch(let actor, let after)): watchActor(actor, after: after)
    case .call(.warnPending(let actor, let detail)):
      warn("The actor \(actor.hex.prefix(16)) cannot be placed yet: \(detail). It stays pending until "
        + "resources free up or a node that fits joins; calls to it wait meanwhile.")
    }
  }

  /// Sends the resolved constructor to the ControlService. `sync`: waits for the answer
  /// (GIL released by the caller) and returns the refusal, if any.
  func registerActor(_ tid: TaskID, sync: Bool) -> SwiftrayError? {
    let now = self.now()
    guard let spec = owner({ $0.constructorReady(tid, now: now) }) else { return nil }
    return sendCreateActor(tid, spec, awaitingArguments: false, sync: sync)
  }

  /// One CreateActor to the head (announce or constructor); in the background unless
  /// `sync`, tracked so that handles leaving this process wait for it.
  func sendCreateActor(_ tid: TaskID, _ spec: Swiftray_TaskSpec, awaitingArguments: Bool, sync: Bool) -> SwiftrayError? {
    let c = control
    let patience = controlPatience
    let register: @Sendable () async -> SwiftrayError? = { [self] in
      let strategy = SchedulingKey(shape: ResourceSet(), proto: spec.strategy).strategy
      if case .placementGroup(let g, _, _) = strategy, !awaitingArguments { await placementGroupRegistered(g) }
      var req = Swiftray_CreateActorRequest()
      req.spec = spec
      req.awaitingArguments = awaitingArguments
      do {
        // Idempotent: the directory ignores an actor id it has.
        let r = try await ControlPlane.whileUnavailable(patience: patience) { [req] in
          try await c.controlService.createActor(req)
        }
        return r.error.isEmpty ? nil : SwiftrayError(.invalidArgument, r.error)
      } catch { return ControlPlane.error(error, calling: "CreateActor", at: c.endpoint) }
    }
    if sync {
      let e: SwiftrayError?
      do { e = try blockingAwait(timeout: .seconds(30) + patience) { await register() } }
      catch { e = SwiftrayError(.system, "CreateActor to \(c.endpoint) failed: \(error)") }
      if let e { creationFailed(tid, e) }
      return e
    }
    // In the background, after an announcement still on its way.
    let done = AsyncLatch()
    let before = registrations.withLock { r in
      defer { r.actors[tid] = done }
      return r.actors[tid]
    }
    Task { [self] in
      await before?.wait()
      if let e = await register() { creationFailed(tid, e) }
      registrations.withLock { r in if r.actors[tid] === done { r.actors[tid] = nil } }
      done.open()
    }
    return nil
  }

  /// The ControlService refused the actor: calls to it fail with why.
  func creationFailed(_ tid: TaskID, _ e: SwiftrayError) {
    owner { $0.creationFailed(tid, e) }
  }

  func pushActorCall(_ tid: TaskID, _ spec: Swiftray_TaskSpec, _ addr: Swiftray_Address, _ incarnation: Int32) {
    send(tid, spec, to: addr) { [self] reply in
      let now = self.now()
      owner { $0.actorCallReplied(tid, incarnation: incarnation, reply: reply, now: now) }
    } lost: { [self] in
      owner { $0.actorCallLost(tid, incarnation: incarnation) }
    }
  }

  /// One long-poll for the actor's state newer than `after`; the answer goes to the
  /// submitter, which asks again while the actor is not settled.
  func watchActor(_ actor: ActorID, after: UInt64) {
    let c = control
    let patience = controlPatience
    Task { [self] in
      var unknownFor = 0
      while true {
        var req = Swiftray_WaitActorStateRequest()
        req.actorID = Data(actor.binary)
        req.afterVersion = after
        req.timeoutMs = 10_000
        do {
          let r = try await ControlPlane.whileUnavailable(patience: patience) { [req] in
            try await c.controlService.waitActorState(req)
          }
          if state.withLock({ $0.shuttingDown }) { return }
          if !r.found {
            // Not registered yet (its creator's announcement may be on its way): wait, bounded.
            unknownFor += 1
            if unknownFor < 30 {
              await clock.sleep(for: .milliseconds(50))
              continue
            }
            owner { $0.actorWatchFailed(actor, detail:
              "the cluster has no record of it (its creator may have died before creating it)", unknown: true) }
          } else {
            owner { $0.actorInfo(r.actor) }
          }
        } catch {
          if state.withLock({ $0.shuttingDown }) { return }
          await clock.sleep(for: .milliseconds(200))
          owner { $0.actorWatchFailed(actor, detail: "\(error)", unknown: false) }
        }
        return
      }
    }
  }

  /// The handle object of an actor created here was freed: every handle is gone.
  func actorOutOfScope(_ actor: ActorID) {
    let c = control
    let patience = controlPatience
    Task {
      var req = Swiftray_KillActorRequest()
      req.actorID = Data(actor.binary)
      req.outOfScope = true
      _ = try? await ControlPlane.whileUnavailable(patience: patience) { [req] in
        try await c.controlService.killActor(req)
      }
    }
  }

  /// A driver's non-detached actors die with it: tell the ControlService now rather
  /// than let it find out. Bounded.
  func markJobFinished() {
    guard options.isDriver else { return }
    let c = control
    let job = jobID
    let me = options.workerID
    _ = try? blockingAwait(timeout: .seconds(2)) {
      var req = Swiftray_MarkJobFinishedRequest()
      req.jobID = Data(job.binary)
      req.driverID = Data(me.binary)
      _ = try await c.controlService.markJobFinished(req)
    }
  }
}
