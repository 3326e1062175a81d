import Dispatch
import Foundation
import RuntimeProto
import Synchronization

/// Whether a worker's finished task sends its reply now or holds it to go out with the
/// next one: while more tasks wait in the worker's queue, a reply held costs its owner
/// nothing it could use sooner than the next reply (the worker is busy with the next task
/// anyway), and several replies in one `send` wake the owner's lane reactor once instead
/// of once each (a wake-up costs tens of microseconds on a virtual machine; in a stream
/// of actor calls that was a third of the owner's CPU per call).
///
/// A reply is held at most `maxHeld` replies deep and `maxDelayNanos` long: a flusher
/// thread (`ReplyFlusher`) sends what was held that long, so a task that runs long after
/// short ones never keeps their replies (nor anything waiting on them) behind it. It ticks
/// only while replies were held of late, and parks after `lingerNanos` without any.
///
/// A pure value (`ReplyHoldTests`); time is passed in.
/// Threading: its owner's lock.
public struct ReplyHold: Sendable, Equatable {
  public let maxHeld: Int
  public let maxDelayNanos: UInt64
  public let lingerNanos: UInt64
  /// Replies held now, and when the oldest of them was held.
  public private(set) var held = 0
  public private(set) var oldest: UInt64 = 0
  /// When a reply was last held (the flusher's linger counts from it).
  private var lastHeld: UInt64 = 0
  /// The flusher waits to be unparked (nothing held for `lingerNanos`).
  public private(set) var parked = true

  public init(maxHeld: Int, maxDelayNanos: UInt64 = 1_000_000, lingerNanos: UInt64 = 50_000_000) {
    self.maxHeld = max(maxHeld, 0)
    self.maxDelayNanos = max(maxDelayNanos, 1)
    self.lingerNanos = lingerNanos
  }

  public enum Finish: Equatable {
    /// Queue the reply behind the held ones; `unpark`: wake the flusher first.
    case hold(unpark: Bool)
    /// Send the reply now, with every held one (of any lane).
    case sendAll
  }

  /// A task finished on the task thread; `moreQueued`: another task is ready to run.
  public mutating func finished(moreQueued: Bool, now: UInt64) -> Finish {
    guard moreQueued, held < maxHeld else {
      released()
      return .sendAll
    }
    if held == 0 { oldest = now }
    held += 1
    lastHeld = now
    let unpark = parked
    parked = false
    return .hold(unpark: unpark)
  }

  /// Everything held was sent (by `sendAll`, the flusher, or a task about to block).
  public mutating func released() {
    held = 0
    oldest = 0
  }

  public enum Tick: Equatable {
    /// Send everything held now, then look again after `nanos`.
    case flush(thenSleep: UInt64)
    /// Look again after `nanos`.
    case sleep(UInt64)
    /// Wait until a reply is held (`Finish.hold(unpark: true)`).
    case park
  }

  /// The flusher looks.
  public mutating func tick(now: UInt64) -> Tick {
    if held > 0 {
      let age = now &- oldest
      if age >= maxDelayNanos || oldest > now {
        released()
        return .flush(thenSleep: maxDelayNanos)
      }
      return .sleep(maxDelayNanos - age)
    }
    if now &- lastHeld >= lingerNanos || lastHeld > now {
      parked = true
      return .park
    }
    return .sleep(maxDelayNanos)
  }
}

/// The lanes whose replies a worker holds (`ReplyHold`), and the thread that sends them
/// when they were held too long.
///
/// Threading: `reply` and `releaseAll` from any thread (holding is for the task thread:
/// its caller decides); the flusher is a thread of its own that blocks (never a Swift
/// concurrency thread nor an event loop). No lock is held while a socket sends.
final class ReplyFlusher: Sendable {
  struct State {
    var hold: ReplyHold
    var lanes: [LaneSocket] = []
    var stopped = false
  }
  let state: Locked<State>
  private let unparked = DispatchSemaphore(value: 0)

  init(maxHeld: Int) {
    state = Locked(State(hold: ReplyHold(maxHeld: maxHeld)))
  }

  /// Replies `body` through `responder`: held (to leave with a later one) while
  /// `moreQueued` allows, else sent now with every held reply.
  func reply(_ responder: DataPlaneResponder, _ body: Swiftray_DataFrame.OneOf_Body, moreQueued: Bool) {
    guard let lane = responder.laneSocket, let bytes = responder.laneFrame(body) else {
      responder.respond(body)
      releaseAll()
      return
    }
    // Queued on its lane first, then listed: a flusher that takes the list finds every
    // held frame of a listed lane on it (one that flushes in between sends it early).
    guard lane.hold(bytes) != .closed else { return }
    let now = DispatchTime.now().uptimeNanoseconds
    let decision = state.withLock { s -> ReplyHold.Finish in
      let d = s.stopped ? .sendAll : s.hold.finished(moreQueued: moreQueued, now: now)
      if case .hold = d, !s.lanes.contains(where: { $0 === lane }) { s.lanes.append(lane) }
      return d
    }
    switch decision {
    case .hold(let unpark):
      if unpark { unparked.signal() }
    case .sendAll:
      // This lane's held frames leave with this one, in one send; the other lanes' next.
      lane.flush()
      releaseAll(except: lane)
    }
  }

  /// Sends every held reply now (a task about to block, an exit).
  func releaseAll(except sent: LaneSocket? = nil) {
    let lanes: [LaneSocket] = state.withLock { s in
      s.hold.released()
      guard !s.lanes.isEmpty else { return [] }
      defer { s.lanes = [] }
      return s.lanes
    }
    for lane in lanes where lane !== sent { lane.flush() }
  }

  /// Starts the flusher thread (parked until a reply is held).
  func start() {
    let t = Thread { [self] in run() }
    t.name = "swiftray-replies"
    t.stackSize = 256 << 10
    t.start()
  }

  /// Sends what is held and stops the flusher; later replies go at once.
  func stop() {
    state.withLock { $0.stopped = true }
    releaseAll()
    unparked.signal()
  }

  private func run() {
    while true {
      let now = DispatchTime.now().uptimeNanoseconds
      let (tick, lanes): (ReplyHold.Tick?, [LaneSocket]) = state.withLock { s in
        if s.stopped { return (nil, []) }
        let t = s.hold.tick(now: now)
        guard case .flush = t else { return (t, []) }
        defer { s.lanes = [] }
        return (t, s.lanes)
      }
      for lane in lanes { lane.flush() }
      switch tick {
      case nil: return
      case .park?: unparked.wait()
      case .flush(let nanos)?, .sleep(let nanos)?:
        var ts = timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000))
        nanosleep(&ts, nil)
      }
    }
  }
}
