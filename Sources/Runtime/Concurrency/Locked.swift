import CSwiftray
import NIOPosix
import Synchronization

/// A value behind a lock: the only lock type of swiftray (no `Mutex` elsewhere; a test
/// checks). Threading: `withLock` from any thread.
///
/// **The rule: decide under the lock, act after it.** A critical section reads and
/// changes the value and returns what is to be done; the caller does it once the lock
/// is released. Inside `withLock`, never:
/// - take another lock (locks are leaves, so no two threads can deadlock on them);
/// - call NIO (`connect`, `write`, `close`, `whenComplete`/`whenSuccess`, completing a
///   promise), send on a connection, resume a continuation, yield to or finish an
///   `AsyncStream`, start a `Task`, or call a closure a caller handed in;
/// - block (semaphores, sleeps, `blockingAwait`).
///
/// Why: any of these can run code that takes this same lock again on this thread. NIO
/// runs a callback inline when the future is already complete and the caller is on its
/// event loop, and a pipeline runs its handlers inline on a write that fails at once;
/// an `AsyncStream`'s `onTermination` runs inside `finish`. `Mutex` then traps
/// ("Recursive call to lock Mutex") and the process dies — a driver crashed this way in
/// actor calls (`DataPlaneClientPool` started a connect under its lock, and the
/// completion callback took the lock again whenever the connect finished at once). Such
/// bugs depend on timing and show up once in a while; so `LockDiscipline` checks the rule
/// itself, on every call, whatever the timing (`SWIFTRAY_LOCK_CHECKS=1`, set by the
/// tests, turns every breach into a trap that names it).
public struct Locked<Value: ~Copyable>: ~Copyable, Sendable {
  @usableFromInline let mutex: Mutex<Value>
  /// Identifies this lock in the thread's held-lock bookkeeping.
  @usableFromInline let id: UInt

  public init(_ value: consuming sending Value) {
    mutex = Mutex(value)
    id = LockDiscipline.nextLockID.add(1, ordering: .relaxed).newValue
  }

  /// Runs `body` with the value, under the lock. `body` decides and returns; it acts on
  /// nothing outside the value (see the type's rule).
  ///
  /// Inlinable: otherwise the generic body, met from another file or module, was run
  /// unspecialised and looked up `Mutex<Value>`'s metadata at run time on every call.
  @inlinable
  public borrowing func withLock<R: ~Copyable, E: Error>(
    file: StaticString = #fileID, line: UInt = #line,
    _ body: (inout sending Value) throws(E) -> sending R
  ) throws(E) -> sending R {
    LockDiscipline.entering(id, file: file, line: line)
    defer { sr_lock_exit() }
    return try mutex.withLock(body)
  }
}

/// Checks of the lock rule (`Locked`) and of where blocking is allowed, made at the
/// points where swiftray acts: connections, RPC clients, blocking waits.
///
/// Threading: any thread; the bookkeeping is thread-local (C `_Thread_local`).
public enum LockDiscipline {
  static let nextLockID = Atomic<UInt>(0)

  /// `SWIFTRAY_LOCK_CHECKS=1` (the test suites set it; child processes inherit it):
  /// every breach traps with its reason. Otherwise a breach goes unnoticed unless it
  /// re-enters a lock, which traps in any case (as `Mutex` would), with the reason.
  public static let strict: Bool = {
    guard let v = getenv("SWIFTRAY_LOCK_CHECKS") else { return false }
    return String(cString: v) == "1"
  }()

  @usableFromInline
  static func entering(_ id: UInt, file: StaticString, line: UInt) {
    switch sr_lock_enter(id) {
    case 0: return
    case 2:
      sr_lock_exit()
      fatalError("lock discipline: a lock was taken again (\(file):\(line)) by the thread that holds it — "
        + "something called under it ran code that takes it (a NIO callback run inline, a continuation, "
        + "a caller's closure). Decide under the lock, act after it (Locked.swift).")
    default:
      if strict {
        sr_lock_exit()
        fatalError("lock discipline: a lock was taken (\(file):\(line)) while the thread held another: "
          + "locks are leaves (Locked.swift).")
      }
    }
  }

  /// How many `Locked` critical sections the calling thread is inside now.
  public static var locksHeld: Int { Int(sr_locks_held()) }

  /// Call where swiftray acts (sends, connects, completes, calls back): no lock may be
  /// held there.
  public static func mustNotHoldLock(_ what: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if sr_locks_held() > 0 { breach("\(what()) while holding a lock", file: file, line: line) }
  }

  /// Call before a blocking wait: no lock held, and (strict) not on a NIO event loop
  /// or a Swift concurrency thread, whose few threads everything else waits for.
  public static func mayBlock(_ what: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    mustNotHoldLock(what(), file: file, line: line)
    guard strict else { return }
    if MultiThreadedEventLoopGroup.currentEventLoop != nil {
      breach("\(what()) blocks a NIO event loop thread", file: file, line: line)
    }
    if withUnsafeCurrentTask(body: { $0 != nil }) {
      breach("\(what()) blocks a Swift concurrency thread (inside a Task)", file: file, line: line)
    }
  }

  static func breach(_ message: String, file: StaticString, line: UInt) {
    guard strict else { return }
    fatalError("lock discipline: \(message) (\(file):\(line)). Decide under the lock, act after it; "
      + "block only on threads of your own (Locked.swift).")
  }
}
