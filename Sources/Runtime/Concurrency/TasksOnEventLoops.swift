import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// Runs Swift concurrency's jobs on NIO's singleton event loops instead of a pool of
/// their own, so an `async` caller of a socket (a gRPC call, a data-plane write) and the
/// event loop that does the I/O are the same threads: a unary control-plane call then
/// wakes a few threads instead of about twenty, and each wake-up costs tens of
/// microseconds of kernel time on a virtual machine.
///
/// Threading: call once per process, on the main thread, before the first `Task` (a
/// job already queued on the default pool still runs there). Later calls do nothing.
/// Off when `SWIFTRAY_TASKS_ON_EVENT_LOOPS=0` (to compare).
public enum TasksOnEventLoops {
  private static let tried = Atomic<Bool>(false)
  private static let installed = Atomic<Bool>(false)

  /// Whether Tasks run on the event loops from now on.
  @discardableResult
  public static func install() -> Bool {
    if ProcessInfo.processInfo.environment["SWIFTRAY_TASKS_ON_EVENT_LOOPS"] == "0" { return false }
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
