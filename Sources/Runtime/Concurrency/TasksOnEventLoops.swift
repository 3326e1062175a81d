import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// Runs Swift concurrency's jobs on NIO's singleton event loops instead of a pool of
/// their own, so an `async` caller of a socket (a gRPC call) and the event loop that does
/// its I/O are the same threads: a unary gRPC call over HTTP/2 then wakes 4-6 threads
/// instead of ~19 and costs ~20% less CPU, and a worker runs with no second pool.
///
/// Opt-in (`SWIFTRAY_TASKS_ON_EVENT_LOOPS=1`): measured with the in-process twins of
/// gRPC servers (`ControlPlane.inProcessTwin`), it no longer made worker starts faster,
/// and placement groups' create/ready/remove ran ~35% slower (all of a pass's tasks on
/// one loop, as NIO keeps a task on the loop that started it), against ~7% more actor
/// calls; see `benchmarks/control_calls.py --env SWIFTRAY_TASKS_ON_EVENT_LOOPS=1`.
///
/// Threading: call once per process, on the main thread, before the first `Task` (a
/// job already queued on the default pool still runs there). Later calls do nothing.
public enum TasksOnEventLoops {
  private static let tried = Atomic<Bool>(false)
  private static let installed = Atomic<Bool>(false)

  /// Whether Tasks run on the event loops from now on.
  @discardableResult
  public static func install() -> Bool {
    guard ProcessInfo.processInfo.environment["SWIFTRAY_TASKS_ON_EVENT_LOOPS"] == "1" else { return false }
    guard tried.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else {
      return installed.load(ordering: .relaxed)
    }
    // NIO finds the runtime's hook in the global symbol scope; in an extension module
    // CPython loaded (RTLD_LOCAL), the concurrency library is not in it until promoted.
    _ = dlopen("libswift_Concurrency.so", RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL)
    let ok = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    installed.store(ok, ordering: .relaxed)
    return ok
  }
}
