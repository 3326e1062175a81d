import DequeModule
import Foundation
import RuntimeProto

/// The caller side of actor method calls (DESIGN §3) as a pure state machine: per actor,
/// number this caller's calls, send them to the actor's worker strictly in that order
/// once their arguments are resolved and the actor is alive, resend unfinished calls
/// after a restart (`max_task_retries`), and fail them with the actor's death cause.
/// The actor's state comes from the ControlService through `.watch` long-polls.
///
/// Threading: value type, owned by the CoreWorker shell under its lock.
public struct ActorTaskSubmitter: Sendable {
  public enum Action: Sendable, Equatable {
    /// Send the call to the actor's worker.
    case push(TaskID, to: Swiftray_Address, incarnation: Int32)
    /// The call will not run: store `error` in its returns.
    case fail(TaskID, SwiftrayError)
    /// Ask the ControlService for the actor's state newer than `afterVersion`.
    case watch(ActorID, afterVersion: UInt64)
    /// The actor cannot be placed yet: tell the user (once).
    case warnPending(ActorID, detail: String)
  }

  struct Call: Sendable {
    var task: TaskID
    var seq: UInt64
    var ready: Bool
    /// Resends left after the actor restarts (-1: unlimited).
    var retriesLeft: Int
    /// The incarnation (restart count) it was last sent to.
    var sentTo: Int32 = -1
  }

  struct Actor: Sendable {
    var info = Swiftray_ActorInfo()
    var watching = false
    var maxPendingCalls = -1
    var nextSeq: UInt64 = 0
    /// Not yet sent, in sequence order.
    var queue: Deque<Call> = []
    /// Sent to the current incarnation, awaiting replies.
    var inFlight: [TaskID: Call] = [:]
    /// Sent to an incarnation whose connection broke: resent or failed once the
    /// ControlService says what happened.
    var lost: [Call] = []
    var warned = false
    /// A connection to the current incarnation broke: send nothing until the
    /// ControlService reports a newer state.
    var suspect = false
    var pending: Int { queue.count + inFlight.count + lost.count }
  }

  private var actors: [ActorID: Actor] = [:]
  private var callActor: [TaskID: ActorID] = [:]
  /// Moves whenever an actor's state may have changed (what `address` answers): a
  /// caller's memo of an address holds while it stays.
  public private(set) var epoch: UInt64 = 0

  public init() {}

  /// Where `id` lives while it is alive. Reads the entry in place (a copy of it would
  /// retain and release its queues; this is asked once per finished call).
  public func address(_ id: ActorID) -> Swiftray_Address? {
    guard let i = actors.index(forKey: id), actors.values[i].info.state == .alive else { return nil }
    return actors.values[i].info.address
  }

  // MARK: events

  /// This process holds a handle: start learning where the actor lives.
  public mutating func handleAdded(_ id: ActorID, maxPendingCalls: Int) -> [Action] {
    var a = actors[id] ?? Actor()
    if maxPendingCalls != 0 { a.maxPendingCalls = maxPendingCalls }
    let first = actors[id] == nil
    actors[id] = a
    return first ? startWatch(id) : []
  }

  /// A call was submitted (arguments may still be pending). Returns its sequence
  /// number, or the error that refuses it (too many pending calls).
  public mutating func callSubmitted(_ task: TaskID, actor id: ActorID, maxTaskRetries: Int)
    -> Result<(seq: UInt64, actions: [Action]), SwiftrayError>
  {
    var actions: [Action] = []
    if actors[id] == nil { actions += handleAdded(id, maxPendingCalls: -1) }
    let queued = withActor(id) { a -> Result<UInt64, SwiftrayError> in
      if a.maxPendingCalls >= 0 && a.pending >= a.maxPendingCalls {
        return .failure(SwiftrayError(.pendingCallsLimitExceeded,
          "The actor \(Self.describe(a.info, id)) has \(a.pending) pending calls from this caller, its "
          + "max_pending_calls=\(a.maxPendingCalls): wait for some to finish (get/wait their results) "
          + "before submitting more, or create the actor with a larger max_pending_calls."))
      }
      let seq = a.nextSeq
      a.nextSeq += 1
      a.queue.append(Call(task: task, seq: seq, ready: false, retriesLeft: maxTaskRetries))
      return .success(seq)
    }!
    switch queued {
    case .failure(let error): return .failure(error)
    case .success(let seq):
      callActor[task] = id
      return .success((seq, actions))
    }
  }

  /// The call's arguments are resolved: send what can go, in order.
  public mutating func callReady(_ task: TaskID) -> [Action] {
    guard let id = callActor[task] else { return [] }
    withActor(id) { a in
      // From the back: a call without pending arguments is ready as it is submitted,
      // the last one queued (calls wait here while the actor starts: no O(queue) scan).
      if let i = a.queue.lastIndex(where: { $0.task == task }) { a.queue[i].ready = true }
    }
    return flush(id)
  }

  /// The worker of `incarnation` replied to the call. False when the reply is refused:
  /// the call is no longer in flight to that incarnation — it was declared dead while
  /// the reply was on its way (a partition that healed), and the call was resent to the
  /// next incarnation or failed. Callers see one incarnation's answer, never a stale one.
  public mutating func callReplied(_ task: TaskID, incarnation: Int32) -> Bool {
    guard let id = callActor[task] else { return false }
    // In place (one lookup): reading `actors[id]?...` copied the actor's whole state.
    let accepted = withActor(id) { a -> Bool in
      guard let i = a.inFlight.index(forKey: task), a.inFlight.values[i].sentTo == incarnation else { return false }
      a.inFlight.remove(at: i)
      return true
    } ?? false
    if accepted { callActor[task] = nil }
    return accepted
  }

  /// The connection to the worker the call was sent to broke before its reply.
  public mutating func callLost(_ task: TaskID, incarnation: Int32) -> [Action] {
    guard let id = callActor[task] else { return [] }
    // In place: one call lost of many must not copy the actor's queue (copy-on-write).
    let lost = withActor(id) { a -> Bool in
      guard a.inFlight[task]?.sentTo == incarnation, let c = a.inFlight.removeValue(forKey: task) else { return false }
      a.lost.append(c)
      // Stop sending to that incarnation: what became of it, the ControlService will say.
      a.suspect = true
      return true
    } ?? false
    return lost ? startWatch(id) : []
  }

  /// The call was cancelled or failed before it was sent.
  public mutating func callRemoved(_ task: TaskID) -> Bool {
    guard let id = callActor[task] else { return false }
    // In place: a copy taken out and written back copied the actor's whole queue per
    // cancel. The scan is of the calls queued before it (cancels are rare).
    let removed = withActor(id) { a -> Bool in
      guard let i = a.queue.firstIndex(where: { $0.task == task }) else { return false }
      a.queue.remove(at: i)
      return true
    } ?? false
    if removed { callActor[task] = nil }
    return removed
  }

  /// A node this caller learned is dead. Incarnations there get no more calls (their
  /// actors were restarted elsewhere or died: the ControlService will say), calls in
  /// flight to them count as lost — resent or failed once it has said — and their late
  /// replies are refused (`callReplied`), even if the node still runs, cut off or paused,
  /// until it is fenced.
  public mutating func nodeDied(_ node: Data) -> [Action] {
    var actions: [Action] = []
    let there = actors.compactMap { id, a in a.info.state == .alive && a.info.address.nodeID == node ? id : nil }
    for id in there {
      guard var a = actors[id] else { continue }
      Self.stopSending(&a)
      actors[id] = a
      actions += startWatch(id)
    }
    return actions
  }

  /// What the ControlService says about the actor (a `.watch` answer). `hostDead`: the
  /// caller knows the node of the incarnation it names is dead (the answer crossed the
  /// death): nothing is sent there; the caller waits for the next state.
  public mutating func actorInfo(_ info: Swiftray_ActorInfo, hostDead: Bool = false) -> [Action] {
    guard let id = TaskID(binary: info.actorID), var a = actors[id] else { return [] }
    epoch &+= 1
    a.watching = false
    if hostDead && info.state == .alive {
      if info.version > a.info.version { a.info = info }
      Self.stopSending(&a)
      actors[id] = a
      return startWatch(id)
    }
    guard info.version > a.info.version else {
      if a.suspect, a.info.state == .alive, info.state == .alive, info.numRestarts == a.info.numRestarts {
        // The head's poll ran out with the same incarnation alive: what broke was this
        // caller's connection to it, not the actor (a network fault). Calls lost on it
        // are resent if they may run again (max_task_retries), else fail as unavailable;
        // the next send opens a new connection. (Found by the cluster simulation: the
        // caller used to wait for a newer state that never came.)
        a.suspect = false
        var actions: [Action] = []
        var resend: [Call] = []
        for var c in a.lost.sorted(by: { $0.seq < $1.seq }) {
          if c.retriesLeft == 0 {
            callActor[c.task] = nil
            actions.append(.fail(c.task, SwiftrayError(.actorUnavailable,
              "The connection to actor \(Self.describe(info, id)) broke before this call's reply, while the actor "
              + "stayed alive; the call may or may not have run, and it is not resent (max_task_retries=0; set "
              + "max_task_retries to resend such calls).")))
          } else {
            if c.retriesLeft > 0 { c.retriesLeft -= 1 }
            c.ready = true
            resend.append(c)
          }
        }
        a.lost = []
        a.queue = Deque(resend) + a.queue
        actors[id] = a
        return actions + flush(id)
      }
      actors[id] = a
      return a.info.state == .dead || (a.info.state == .alive && !a.suspect) ? [] : startWatch(id)
    }
    let newIncarnation = info.numRestarts != a.info.numRestarts || info.state == .dead
    a.info = info
    a.suspect = false
    var actions: [Action] = []
    switch info.state {
    case .dead:
      let error = Self.deathError(info, id)
      let calls = a.lost + a.inFlight.values.sorted { $0.seq < $1.seq } + Array(a.queue)
      a.lost = []; a.inFlight = [:]; a.queue = []
      for c in calls { callActor[c.task] = nil; actions.append(.fail(c.task, error)) }
      actors[id] = a
      return actions
    case .alive:
      // Calls lost with the previous incarnation go first, in order; those out of
      // retries fail (as Ray: at-most-once unless max_task_retries).
      if newIncarnation || !a.lost.isEmpty {
        var resend: [Call] = []
        for var c in (a.lost + a.inFlight.values).sorted(by: { $0.seq < $1.seq }) {
          if c.retriesLeft == 0 {
            callActor[c.task] = nil
            actions.append(.fail(c.task, SwiftrayError(.actorDied,
              "The actor \(Self.describe(info, id)) died before finishing this call, and the call is not "
              + "retried (max_task_retries=0; set max_task_retries to resend unfinished calls after a restart). "
              + "The actor \(info.numRestarts > 0 ? "was restarted: \(Self.lastDeath(info))" : "is alive again").")))
          } else {
            if c.retriesLeft > 0 { c.retriesLeft -= 1 }
            c.ready = true
            resend.append(c)
          }
        }
        a.lost = []; a.inFlight = [:]
        a.queue = Deque(resend) + a.queue
      }
      actors[id] = a
      return actions + flush(id)
    case .pending, .restarting:
      if info.state == .pending, !info.detail.isEmpty, !a.warned {
        a.warned = true
        actions.append(.warnPending(id, detail: info.detail))
      }
      actors[id] = a
      return actions + startWatch(id)
    default:
      actors[id] = a
      return startWatch(id)
    }
  }

  /// The ControlService could not be asked (or did not know the actor).
  public mutating func watchFailed(_ id: ActorID, detail: String, unknown: Bool) -> [Action] {
    guard var a = actors[id] else { return [] }
    a.watching = false
    actors[id] = a
    guard unknown else { return startWatch(id) }
    var info = a.info
    info.actorID = Data(id.binary)
    info.state = .dead
    info.version += 1
    info.deathCause = .none
    info.detail = detail
    return actorInfo(info)
  }

  /// This process no longer holds a handle and has nothing pending for the actor.
  public mutating func handleReleased(_ id: ActorID) {
    if let a = actors[id], a.pending == 0 {
      actors[id] = nil
      epoch &+= 1
    }
  }

  // MARK: internals

  /// The current incarnation is on a dead node: send it nothing more; calls in flight
  /// to it count as lost (their late replies are refused) until the head says more.
  private static func stopSending(_ a: inout Actor) {
    a.lost += a.inFlight.values.sorted { $0.seq < $1.seq }
    a.inFlight = [:]
    a.suspect = true
  }

  private mutating func startWatch(_ id: ActorID) -> [Action] {
    guard var a = actors[id], !a.watching else { return [] }
    a.watching = true
    actors[id] = a
    return [.watch(id, afterVersion: a.info.version)]
  }

  /// Sends queued calls in sequence order while the head of the queue is ready.
  private mutating func flush(_ id: ActorID) -> [Action] {
    enum Outcome { case send([Action]), dead([TaskID], SwiftrayError) }
    // One lookup, in place (a copy taken out of `actors` per call retained all its parts).
    let outcome = withActor(id) { a -> Outcome in
      if a.info.state == .dead {
        // Calls made after the actor died fail at once, with its death cause.
        let calls = a.queue.map(\.task)
        a.queue = []
        return .dead(calls, Self.deathError(a.info, id))
      }
      guard a.info.state == .alive, !a.suspect else { return .send([]) }
      var actions: [Action] = []
      while a.queue.first?.ready == true, var c = a.queue.popFirst() {
        c.sentTo = a.info.numRestarts
        a.inFlight[c.task] = c
        actions.append(.push(c.task, to: a.info.address, incarnation: c.sentTo))
      }
      return .send(actions)
    }
    switch outcome {
    case nil: return []
    case .send(let actions)?: return actions
    case .dead(let calls, let error)?: return calls.map { t in callActor[t] = nil; return .fail(t, error) }
    }
  }

  /// Changes actor `id`'s state where it lies; nil for an actor not known here. A copy
  /// taken out of `actors`, changed and written back would copy its whole queue and its
  /// calls in flight on the first change (copy-on-write): a cost per call that grows
  /// with the calls outstanding.
  @discardableResult
  private mutating func withActor<R>(_ id: ActorID, _ body: (inout Actor) -> R) -> R? {
    guard let i = actors.index(forKey: id) else { return nil }
    return body(&actors.values[i])
  }

  static func describe(_ info: Swiftray_ActorInfo, _ id: ActorID) -> String {
    let cls = info.className.isEmpty ? "" : "\(info.className) "
    let name = info.name.isEmpty ? "" : " named '\(info.name)'"
    return "\(cls)(\(id.hex.prefix(16)))\(name)"
  }

  static func lastDeath(_ info: Swiftray_ActorInfo) -> String { info.detail.isEmpty ? "restarted" : info.detail }

  /// The error every call to a dead actor gets: which actor, and why it died.
  public static func deathError(_ info: Swiftray_ActorInfo, _ id: ActorID) -> SwiftrayError {
    let why: String
    switch info.deathCause {
    case .killed: why = "it was killed: \(info.detail)"
    case .ownerDied: why = "its owner died or exited: \(info.detail)"
    case .creationFailed: why = "its creation failed: \(info.detail)"
    case .workerDied: why = "\(info.detail)"
    case .outOfScope: why = "\(info.detail)"
    case .placementGroupRemoved:
      return SwiftrayError(.actorPlacementGroupRemoved, "The actor \(describe(info, id)) is dead: \(info.detail)")
    default: why = info.detail.isEmpty ? "unknown cause" : info.detail
    }
    return SwiftrayError(.actorDied, "The actor \(describe(info, id)) is dead: \(why)")
  }
}
