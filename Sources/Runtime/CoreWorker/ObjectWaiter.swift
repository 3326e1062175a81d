import CSwiftray
import Dispatch
import Synchronization

/// One blocked `get`/`wait` call: released when `needed` more objects have arrived.
/// Threading: `arrived` from any thread; `wait` from the blocked caller's thread.
final class ObjectWaiter: Sendable {
  let sem = DispatchSemaphore(value: 0)
  let remaining: Atomic<Int>
  /// Also signalled on release: a waiter reading a lane (`LaneClients.readWhileWaiting`)
  /// polls it beside the lane. The waiting thread's own (it loops on `isReleased`, so a
  /// late signal of its previous wait costs one extra look, nothing else).
  let wake: Wakeup
  /// Instead of waking a thread: what a release does (`notifyWhenAvailable`: no thread
  /// waits). Called after the owner's lock, on the thread that released it.
  let onRelease: (@Sendable () -> Void)?
  /// Made by the thread that will wait (`CoreWorker.startWait`), or with `onRelease`
  /// for no thread.
  init(needed: Int, onRelease: (@Sendable () -> Void)? = nil) {
    remaining = Atomic(needed)
    self.onRelease = onRelease
    wake = onRelease == nil ? Wakeup.forThisThread() : Self.unused
  }
  /// The wakeup of a waiter no thread waits on (never signalled).
  static let unused = Wakeup()
  func arrived() {
    if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
      if let onRelease { return onRelease() }
      sem.signal()
      // Released by the thread that waits, while it reads a lane for this wait
      // (`readWhileWaiting`): it looks at `isReleased` after every read, so the
      // eventfd's write, and its reset by that thread's next wait, are saved.
      if sr_reading_for() != wake.fd { wake.signal() }
    }
  }
  /// Enough arrived (the count reached zero).
  var isReleased: Bool { remaining.load(ordering: .acquiring) <= 0 }
  /// True when released before the timeout.
  func wait(nanos: UInt64) -> Bool {
    LockDiscipline.mayBlock("a get or wait")
    return sem.wait(timeout: .now() + .nanoseconds(Int(min(nanos, UInt64(Int.max))))) == .success
  }
}
