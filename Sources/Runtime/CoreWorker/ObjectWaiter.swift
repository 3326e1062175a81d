import Dispatch
import Synchronization

/// One blocked `get`/`wait` call: released when `needed` more objects have arrived.
/// Threading: `arrived` from any thread; `wait` from the blocked caller's thread.
final class ObjectWaiter: Sendable {
  let sem = DispatchSemaphore(value: 0)
  let remaining: Locked<Int>
  init(needed: Int) { remaining = Locked(needed) }
  func arrived() {
    let done = remaining.withLock { r -> Bool in r -= 1; return r == 0 }
    if done { sem.signal() }
  }
  /// Enough arrived (the count reached zero).
  var isReleased: Bool { remaining.withLock { $0 <= 0 } }
  /// True when released before the timeout.
  func wait(nanos: UInt64) -> Bool {
    LockDiscipline.mayBlock("a get or wait")
    return sem.wait(timeout: .now() + .nanoseconds(Int(min(nanos, UInt64(Int.max))))) == .success
  }
}
