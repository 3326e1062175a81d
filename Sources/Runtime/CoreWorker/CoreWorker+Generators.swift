import Dispatch
import Foundation
import NIOCore
import RuntimeProto

/// A streaming generator's reports from the worker running it: how many it sent, how
/// many its owner acknowledged, and the reader's progress the owner last told.
/// Threading: any thread; `changed` is signalled on every answer from the owner.
final class GeneratorReport: Sendable {
  struct State {
    var sent = 0
    var consumed = 0
    var closed = false
    /// A back-pressure wait is out (one at a time).
    var polling = false
    /// Why a report or wait failed (the owner did not answer).
    var failure: String?
  }
  let state = Locked(State())
  let changed = DispatchSemaphore(value: 0)
  /// Reports not yet answered: the task's reply waits for them (bounded), so the owner
  /// has every item before it learns the stream ended. The generator's own, so an owner
  /// that does not answer delays only its stream.
  let inFlight = DispatchGroup()

  func answered(_ result: Result<Swiftray_DataFrame, SwiftrayError>, index: Int?) {
    state.withLock { s in
      switch result {
      case .success(let f):
        if case .generatorProgress(let p)? = f.body {
          s.consumed = max(s.consumed, Int(clamping: p.consumed))
          s.closed = s.closed || p.closed
        } else if case .error(let e)? = f.body {
          s.failure = s.failure ?? "the owner refused \(index.map { "item \($0)" } ?? "a wait"): \(e.message)"
        }
      case .failure(let e):
        s.failure = s.failure ?? "the owner did not acknowledge \(index.map { "item \($0)" } ?? "a wait"): \(e.message)"
      }
    }
    changed.signal()
  }
}

extension CoreWorker {
  /// `num_returns="dynamic"` as the language layer passes it to `setReturns`.
  public static let dynamicReturnsCode = Int(Int32.min)

  /// A submission's returns as the language layer counts them: `code` >= 0 returns that
  /// many objects; -1 is a streaming generator (one return, its end); -k-1 (k >= 1) a
  /// streaming generator that pauses while k items wait unconsumed; `dynamicReturnsCode`
  /// a dynamic generator (its end holds refs to all its items).
  public static func setReturns(_ spec: inout Swiftray_TaskSpec, _ code: Int) {
    if code >= 0 {
      spec.numReturns = Int32(clamping: code)
      return
    }
    spec.numReturns = 1
    spec.streaming = true
    if code == dynamicReturnsCode {
      spec.dynamicReturns = true
    } else {
      spec.generatorBackpressure = code == -1 ? 0 : Int64(clamping: -(code + 1))
    }
  }

  /// How the executing thread goes on after reporting an item.
  public enum ItemStep: Int, Sendable {
    case goOn = 0
    /// The reader dropped the generator: stop producing.
    case stop = 1
    /// The reader is `generator_backpressure` items behind: `waitGeneratorConsumed` first.
    case paused = 2
  }

  /// Worker side: sends item `index` of streaming task `spec` (placed already: inline or
  /// in this node's store) to its owner. Never blocks; the reply of the task waits for
  /// every report's acknowledgement (`generatorFinished`), so the owner has all items first.
  public func reportGeneratorItem(_ spec: Swiftray_TaskSpec, index: Int, object: Swiftray_RayObject) throws(SwiftrayError) -> ItemStep {
    guard (0...GeneratorStreams<Int>.maxIndex).contains(index) else {
      throw SwiftrayError(.invalidArgument, "item index \(index) is out of range")
    }
    guard let tid = TaskID(binary: spec.taskID), let ep = reach(spec.owner) else {
      throw SwiftrayError(.system, "a streaming generator's task has no reachable owner")
    }
    let report = generatorReports.withLock { r in
      if let g = r[tid] { return g }
      let g = GeneratorReport()
      r[tid] = g
      return g
    }
    let st = report.state.withLock { s -> GeneratorReport.State in
      s.sent = max(s.sent, index + 1)
      return s
    }
    if let failure = st.failure { throw SwiftrayError(.system, failure) }
    if st.closed { return .stop }
    report.inFlight.enter()
    pool.request(ep, .reportGeneratorItem(.with {
      $0.taskID = spec.taskID; $0.index = UInt64(index); $0.object = object
    })) { result in
      report.answered(result, index: index)
      report.inFlight.leave()
    }
    let limit = spec.generatorBackpressure
    return limit > 0 && Int64(index + 1) - Int64(st.consumed) >= limit ? .paused : .goOn
  }

  /// Worker side, after `.paused`: blocks (the caller released the GIL) until the reader
  /// is less than `generator_backpressure` items behind item `index`, or dropped the
  /// generator (true: stop producing). The owner answers each wait within a second;
  /// one that does not answer in 10 s fails the task.
  public func waitGeneratorConsumed(_ spec: Swiftray_TaskSpec, index: Int) throws(SwiftrayError) -> Bool {
    LockDiscipline.mayBlock("a streaming generator waiting for its reader")
    // The spec's numbers came from a peer and the index from the language layer: both
    // are checked before the arithmetic below.
    guard (0...GeneratorStreams<Int>.maxIndex).contains(index), spec.generatorBackpressure > 0 else { return false }
    guard let tid = TaskID(binary: spec.taskID), let ep = reach(spec.owner),
      let report = generatorReports.withLock({ $0[tid] })
    else { return true }
    let want = Int64(index + 2) - spec.generatorBackpressure
    while true {
      let (st, ask) = report.state.withLock { s -> (GeneratorReport.State, Bool) in
        let done = s.closed || s.failure != nil || Int64(s.consumed) >= want
        let ask = !done && !s.polling
        if ask { s.polling = true }
        return (s, ask)
      }
      if let failure = st.failure { throw SwiftrayError(.system, failure) }
      if st.closed || Int64(st.consumed) >= want { return st.closed }
      if ask {
        pool.requestWithPayload(ep, .waitGeneratorConsumed(.with { $0.taskID = spec.taskID; $0.consumed = UInt64(max(want, 0)) }),
                                deadline: .seconds(10)) { result in
          report.state.withLock { $0.polling = false }
          report.answered(result.map(\.0), index: nil)
        }
      }
      _ = report.changed.wait(timeout: .now() + .seconds(11))
    }
  }

  /// Worker side, before the task's reply leaves: waits (at most 10 s) for every report's
  /// answer; returns how many items it reported, and why a report failed (the task then
  /// fails: the owner is missing items).
  func generatorFinished(_ tid: TaskID) -> (items: Int, failure: String?) {
    LockDiscipline.mayBlock("a streaming generator's reply waiting for its reports")
    guard let report = generatorReports.withLock({ $0.removeValue(forKey: tid) }) else { return (0, nil) }
    let answered = report.inFlight.wait(timeout: .now() + .seconds(10)) == .success
    return report.state.withLock { s in
      (s.sent, s.failure ?? (answered ? nil : "the owner did not acknowledge every item within 10 s"))
    }
  }

  // MARK: owner side

  /// An item report or back-pressure wait from the worker running a streaming task
  /// submitted here (a peer's frame: every number is checked by the owner state).
  func handleGeneratorFrame(_ frame: Swiftray_DataFrame, _ responder: DataPlaneResponder) {
    switch frame.body {
    case .reportGeneratorItem(let req):
      guard let tid = TaskID(binary: req.taskID) else {
        return responder.respond(.error(.with { $0.message = "a generator item report needs a task id" }))
      }
      let now = self.now()
      switch owner({ $0.generatorItemReported(tid, index: req.index, object: req.object, now: now) }) {
      case .success(let p):
        responder.respond(.generatorProgress(.with { $0.consumed = UInt64(p.consumed); $0.closed = p.closed }))
      case .failure(let e):
        responder.respond(.error(.with { $0.message = e.message }))
      }
    case .waitGeneratorConsumed(let req):
      guard let tid = TaskID(binary: req.taskID) else {
        return responder.respond(.error(.with { $0.message = "a generator wait needs a task id" }))
      }
      owner { $0.generatorPollStarted(tid, want: req.consumed, poller: PendingGet(responder: responder, requester: nil)) }
    default:
      break
    }
  }

  /// Carries out the generator part of an owner event's effects.
  func performGeneratorEffects(_ e: Owner.Effects) {
    for (p, consumed, closed) in e.generatorProgress {
      p.responder.respond(.generatorProgress(.with { $0.consumed = UInt64(consumed); $0.closed = closed }))
    }
    for (tid, id) in e.expirePolls {
      _ = clock.schedule(after: .seconds(1)) { [self] in
        owner { $0.generatorPollExpired(tid, id: id) }
      }
    }
  }

  public enum GeneratorNext: Sendable {
    case item(ObjectID)
    /// The stream failed: this object (with a reference for the caller) holds the error.
    case error(ObjectID)
    case end
    case timedOut
  }

  /// Reader side: the next item of streaming task `tid`, waiting up to `timeoutNanos`.
  /// Threading: the caller's thread, with the GIL released.
  public func generatorNext(_ tid: TaskID, timeoutNanos: UInt64) -> GeneratorNext {
    let start = DispatchTime.now().uptimeNanoseconds
    while true {
      let now = self.now()
      switch owner({ $0.generatorNext(tid, now: now) }) {
      case .item(let id): return .item(id)
      case .error(let id): return .error(id)
      case .end: return .end
      case .notYet(let item, let end):
        let spent = DispatchTime.now().uptimeNanoseconds &- start
        guard spent < timeoutNanos else { return .timedOut }
        let waiter = ObjectWaiter(needed: 1)
        guard state.withLock({ $0.generatorWaitStarted(tid, waiter: waiter) }) else { continue }
        let pending = PendingWait(ids: [item, end], needed: 1, waiter: waiter)
        _ = wait(pending, nanos: timeoutNanos - spent)
        _ = endWait(pending)
      }
    }
  }

  /// Reader side: posts `token` to `availability` once `generatorNext(tid)` would not
  /// wait (an item arrived, or the stream ended). Never blocks.
  public func notifyWhenGeneratorReady(_ tid: TaskID, token: UInt64) {
    let notices = availability
    let waiter = ObjectWaiter(needed: 1) { notices.post(token) }
    if !state.withLock({ $0.generatorWaitStarted(tid, waiter: waiter) }) { notices.post(token) }
  }

  /// Reader side: the ids a `wait` on the generator waits for (its next item, its end).
  public func generatorAwaited(_ tid: TaskID) -> [ObjectID] {
    guard let i = state.withLock({ $0.streams.awaited(tid) }) else { return [ObjectID.forReturn(of: tid, index: 0)] }
    return [ObjectID.forReturn(of: tid, index: i + 1), ObjectID.forReturn(of: tid, index: 0)]
  }

  /// Reader side: the generator was dropped; items it never took are released.
  public func generatorClosed(_ tid: TaskID) {
    let now = self.now()
    owner { $0.generatorClosed(tid, now: now) }
  }
}
