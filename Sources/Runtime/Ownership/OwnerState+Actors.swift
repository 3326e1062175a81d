import Foundation
import RuntimeProto

/// Actor work an owner decided, carried out by its shell in the order decided.
public enum ActorStep: Sendable {
  case call(ActorTaskSubmitter.Action)
  /// The constructor's arguments are resolved: register it with the ControlService.
  case create(TaskID)
}

/// Actor steps taken to carry out, with the spec of each call to push (`takeActorStepsWithSpecs`).
public typealias ActorRound = (steps: [ActorStep], specs: [Swiftray_TaskSpec?])

/// Actors, the owner and caller side (DESIGN §3): creations (the handle object owns the
/// actor's lifetime) and calls (`ActorTaskSubmitter` orders them per caller). Steps
/// leave through an outbox that one shell thread at a time drains, so calls reach an
/// actor's connection in sequence order.
extension OwnerState {
  mutating func queueActorSteps(_ actions: [ActorTaskSubmitter.Action], _ e: inout Effects) {
    guard !actions.isEmpty else { return }
    actorOutbox += actions.map { .call($0) }
    e.actorSteps = true
  }

  /// The queued actor steps, for the one shell thread that drains them (nil while
  /// another drains, or when there are none). Call `actorStepsDone` after carrying them out.
  public mutating func takeActorSteps() -> [ActorStep]? {
    if actorDraining || actorOutbox.isEmpty { return nil }
    actorDraining = true
    defer { actorOutbox = [] }
    return actorOutbox
  }

  public mutating func actorStepsDone() { actorDraining = false }

  /// `takeActorSteps`, with the spec of each call to push (nil for other steps, and
  /// for a call whose task is gone) read in the same lock: pushing a call then takes
  /// the lock no more (with calls streaming, the submitting thread and the thread
  /// taking replies met on it at every call).
  public mutating func takeActorStepsWithSpecs() -> ActorRound? {
    guard let steps = takeActorSteps() else { return nil }
    return (steps, steps.map { step in
      if case .call(.push(let tid, _, _)) = step { return tasks.spec(tid) }
      return nil
    })
  }

  /// The address of an actor's current incarnation, when known.
  public func actorAddress(_ actor: ActorID) -> Swiftray_Address? { actorSubmitter.address(actor) }

  /// This process holds a handle of `actor` (created here, unpickled, or looked up).
  public mutating func actorHandleAdded(_ actor: ActorID, maxPendingCalls: Int) -> Effects {
    var e = Effects()
    queueActorSteps(actorSubmitter.handleAdded(actor, maxPendingCalls: maxPendingCalls), &e)
    return e
  }

  /// The head's view of an actor (its address, restart, or death).
  public mutating func actorInfo(_ info: Swiftray_ActorInfo) -> Effects {
    var e = Effects()
    queueActorSteps(actorSubmitter.actorInfo(info, hostDead: deadNodes[info.address.nodeID] != nil), &e)
    return e
  }

  /// A watch of an actor's state failed (`unknown`: the head has no record of it).
  public mutating func actorWatchFailed(_ actor: ActorID, detail: String, unknown: Bool) -> Effects {
    var e = Effects()
    queueActorSteps(actorSubmitter.watchFailed(actor, detail: detail, unknown: unknown), &e)
    return e
  }

  /// The head refused to create the actor: calls to it fail with why.
  public mutating func creationFailed(_ tid: TaskID, _ error: SwiftrayError) -> Effects {
    var info = Swiftray_ActorInfo()
    info.actorID = Data(tid.binary)
    info.state = .dead
    info.version = .max
    info.deathCause = .creationFailed
    info.detail = error.message
    return actorInfo(info)
  }

  /// An actor call's reply came back.
  public mutating func actorCallReplied(_ tid: TaskID, incarnation: Int32, reply: Swiftray_PushTaskReply, now: UInt64) -> Effects {
    var e = Effects()
    guard actorSubmitter.callReplied(tid, incarnation: incarnation) else { return e }
    taskActionsDecided(tasks.taskReplied(tid, outcome: Self.outcome(reply, retryable: false), returnsInline: Self.allInline(reply)),
                       reply: reply, now: now, &e)
    return e
  }

  /// The connection carrying an actor call broke before its reply.
  public mutating func actorCallLost(_ tid: TaskID, incarnation: Int32) -> Effects {
    var e = Effects()
    if !shuttingDown { queueActorSteps(actorSubmitter.callLost(tid, incarnation: incarnation), &e) }
    return e
  }

  /// A creation submitted by its creator's thread: true when its constructor's
  /// arguments were ready at once (it is registered now, else announced).
  public mutating func syncCreationSubmitted(_ tid: TaskID) -> Bool {
    syncCreations.remove(tid)
    return syncReady.remove(tid) != nil
  }

  /// An actor whose constructor waits for its arguments is announced to the head: its
  /// handle object owns it from now on. The spec as submitted; nil if it is gone.
  public mutating func actorAnnounced(_ tid: TaskID) -> Swiftray_TaskSpec? {
    guard let spec = tasks.spec(tid) else { return nil }
    if ownedActors[tid.actorHandleObject] == nil {
      // Freed, the handle takes the actor with it (its arguments are still held by the
      // pending constructor, not here).
      ownedActors[tid.actorHandleObject] = OwnedActor(actor: tid, detached: spec.actorCreation.detached, args: [])
    }
    return spec
  }

  /// A creation refused by the head (a taken name): its constructor never runs.
  public mutating func creationAbandoned(_ tid: TaskID, now: UInt64) -> Effects {
    var e = Effects()
    ownedActors[tid.actorHandleObject] = nil
    if resolver.taskRemoved(tid) { taskActionsDecided(tasks.taskReplied(tid, outcome: .cancelled), reply: nil, now: now, &e) }
    return e
  }

  /// The constructor's arguments are resolved: the spec to register with the head, or
  /// nil when every handle went meanwhile (it is not created).
  public mutating func constructorReady(_ tid: TaskID, now: UInt64) -> (Swiftray_TaskSpec?, Effects) {
    var e = Effects()
    guard let spec = tasks.spec(tid) else { return (nil, e) }
    let handle = tid.actorHandleObject
    guard refs.isInScope(handle) else {
      taskActionsDecided(tasks.taskReplied(tid, outcome: .cancelled), reply: nil, now: now, &e)
      return (nil, e)
    }
    // The handle object, owned here: when it is freed the actor goes with it, and the
    // constructor's arguments stay held (for restarts) until then.
    ownedActors[handle] = OwnedActor(actor: tid, detached: spec.actorCreation.detached, args: tasks.argRefs(tid))
    _ = tasks.taskReplied(tid, outcome: .success)
    tasks.release(tid)
    return (spec, e)
  }

  /// An object owned here whose value is set later by the shell (`objectsArrived`),
  /// with one local reference (the caller's).
  public mutating func futureObjectCreated(_ id: ObjectID) {
    refs.ownedObjectCreated(id)
    _ = refs.localRefAdded(id)
  }
}
