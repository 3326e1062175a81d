import HeapModule
import Dispatch
import NIOCore
import NIOPosix
import Synchronization

/// Time as the runtime sees it: one monotonic reading and one timer mechanism for
/// everything that waits a while (deadlines, retries, periodic reports, a task's
/// pause). Production: `SystemClock` (uptime; NIO's timers). The seam lets a virtual
/// clock drive a whole simulated cluster (issue 17).
///
/// Threading: any thread or task. Timer bodies run on an event loop (the one given,
/// or one of the clock's), never inline in `schedule`, with no lock held.
public protocol RuntimeClock: Sendable {
  /// Monotonic nanoseconds since an arbitrary start.
  func now() -> UInt64
  /// Runs `body` once, `delay` from now: on `loop` when given (a channel's timers run
  /// on its loop), otherwise on one of the clock's. Cancelling the handle before it
  /// fires stops it.
  @discardableResult
  func schedule(after delay: Duration, on loop: (any EventLoop)?, _ body: @escaping @Sendable () -> Void) -> ScheduledTimer
}

extension RuntimeClock {
  @discardableResult
  public func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> ScheduledTimer {
    schedule(after: delay, on: nil, body)
  }

  /// Suspends the calling task for `delay`; returns early (without an error) when the
  /// task is cancelled. Built on `schedule`, so virtual time moves sleeping tasks too.
  public func sleep(for delay: Duration) async {
    // Whichever comes first, the timer or the cancellation, resumes the task (once).
    let once = ReplyOnce()
    let slot = Locked<(timer: ScheduledTimer?, waiter: CheckedContinuation<Void, Never>?)>((nil, nil))
    await withTaskCancellationHandler {
      await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
        slot.withLock { $0.waiter = c }
        let t = schedule(after: delay) { if once.claim() { c.resume() } }
        slot.withLock { $0.timer = t }
        // Cancelled before the waiter was stored: the handler found nothing to resume.
        if Task.isCancelled, once.claim() { t.cancel(); c.resume() }
      }
    } onCancel: {
      let (t, c) = slot.withLock { ($0.timer, $0.waiter) }
      if let c, once.claim() { t?.cancel(); c.resume() }
    }
  }

  /// The reading `d` from now (saturating: a huge `d` never traps).
  public func deadline(after d: Duration) -> UInt64 {
    let (v, overflow) = now().addingReportingOverflow(d.clampedNanoseconds)
    return overflow ? .max : v
  }

  /// Nanoseconds from now until `deadline` (0 when it passed).
  public func nanos(until deadline: UInt64) -> UInt64 {
    let n = now()
    return deadline > n ? deadline - n : 0
  }
}

/// Stops a scheduled timer. Threading: any thread; cancelling twice, or after it
/// fired, does nothing.
public struct ScheduledTimer: Sendable {
  let stop: @Sendable () -> Void
  public init(stop: @escaping @Sendable () -> Void) { self.stop = stop }
  public func cancel() { stop() }
}

/// Real time: `DispatchTime`'s uptime clock, and NIO's timers on the process's event
/// loops. Threading: any thread.
public struct SystemClock: RuntimeClock {
  /// Nil: NIO's singleton loops, taken only when a timer without a loop is scheduled,
  /// so reading the time never starts them (a fork server reads it and must start no
  /// thread: `ForkWarmUp`).
  let group: (any EventLoopGroup)?

  public init(group: (any EventLoopGroup)? = nil) {
    self.group = group
  }

  public func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

  @discardableResult
  public func schedule(after delay: Duration, on loop: (any EventLoop)?, _ body: @escaping @Sendable () -> Void) -> ScheduledTimer {
    let nanos = Int64(clamping: delay.clampedNanoseconds)
    let task = (loop ?? (group ?? MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup).next()).scheduleTask(in: .nanoseconds(nanos)) { body() }
    return ScheduledTimer { task.cancel() }
  }
}

/// The clock of this process: the system's unless a simulation installed its own
/// before starting anything.
public enum Clocks {
  // Written once before the process starts anything, read everywhere after (also
  // under other locks and on hot paths): no lock.
  nonisolated(unsafe) private static var installed: any RuntimeClock = SystemClock()

  /// Threading: any thread; fixed once the process runs.
  public static var current: any RuntimeClock { installed }

  /// Makes `clock` the process's. Call before any runtime object exists.
  public static func install(_ clock: any RuntimeClock) { installed = clock }
}

extension Duration {
  /// In nanoseconds: 0 when negative, `UInt64.max` when too long to count.
  public var clampedNanoseconds: UInt64 {
    let (s, a) = components
    guard s >= 0 else { return 0 }
    let (whole, overflow) = UInt64(s).multipliedReportingOverflow(by: 1_000_000_000)
    guard !overflow else { return .max }
    let (sum, over) = whole.addingReportingOverflow(UInt64(max(0, a) / 1_000_000_000))
    return over ? .max : sum
  }
}

/// A clock that moves only when told: for tests now, and the seeded simulation of
/// issue 17. Timers fire inside `advance`, in deadline order (ties in scheduling
/// order), on the thread that advances, with no lock held; `loop` is ignored. Each
/// firing scans the pending timers: fine for tests; the simulation will want a heap.
///
/// Threading: any thread.
public final class ManualClock: RuntimeClock {
  /// A timer's place in the order of firing: by time, then by scheduling order.
  struct Due: Comparable {
    let at: UInt64
    let id: UInt64
    static func < (a: Due, b: Due) -> Bool { (a.at, a.id) < (b.at, b.id) }
  }
  struct State {
    var nextID: UInt64 = 0
    var timers: [UInt64: (at: UInt64, body: @Sendable () -> Void)] = [:]
    /// Every scheduled timer in firing order; a cancelled one is skipped when it comes
    /// up (its body is gone from `timers`), so firing the next is O(log n).
    var order = Heap<Due>()
  }
  let state = Locked(State())
  /// Lock-free: read under other locks, as the system clock is.
  let reading: Atomic<UInt64>

  public init(start: UInt64 = 1_000_000_000) { reading = Atomic(start) }

  public func now() -> UInt64 { reading.load(ordering: .acquiring) }

  /// Timers scheduled and not yet fired or cancelled.
  public var pendingTimers: Int { state.withLock { $0.timers.count } }

  @discardableResult
  public func schedule(after delay: Duration, on loop: (any EventLoop)?, _ body: @escaping @Sendable () -> Void) -> ScheduledTimer {
    let at = deadline(after: delay)
    let id: UInt64 = state.withLock { s in
      s.nextID += 1
      s.timers[s.nextID] = (at, body)
      s.order.insert(Due(at: at, id: s.nextID))
      // Cancelled timers stay in `order` until they come up: rebuilt when they dominate.
      if s.order.count > 2 * s.timers.count + 64 { s.order = Heap(s.timers.map { Due(at: $0.value.at, id: $0.key) }) }
      return s.nextID
    }
    return ScheduledTimer { [self] in _ = state.withLock { $0.timers.removeValue(forKey: id) } }
  }

  /// Moves time forward by `d`, firing each timer due on the way at its own time.
  /// One thread advances at a time.
  public func advance(by d: Duration) {
    LockDiscipline.mustNotHoldLock("ManualClock.advance")
    let target = deadline(after: d)
    while true {
      let due: (at: UInt64, body: @Sendable () -> Void)? = state.withLock { s in
        while let next = s.order.min, next.at <= target {
          s.order.removeMin()
          if let t = s.timers.removeValue(forKey: next.id) { return t }
        }
        return nil
      }
      guard let due else { break }
      if due.at > now() { reading.store(due.at, ordering: .releasing) }
      due.body()
    }
    if target > now() { reading.store(target, ordering: .releasing) }
  }
}
