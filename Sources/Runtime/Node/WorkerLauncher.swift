/// How a node starts and stops its workers: `ProcessMonitor` (real processes) in
/// production; in tests, workers that are threads of the test process, so a head, its
/// nodes and their workers run in one process over a `MemoryNetwork`.
///
/// Threading: every method from any thread, never under a lock of the caller's; the
/// handlers given to its factory run on the launcher's own thread and must not block.
public protocol WorkerLauncher: Sendable {
  /// Starts `executable arguments` with exactly `environment`; returns its pid.
  func spawn(executable: String, arguments: [String], environment: [String: String]) throws(SwiftrayError) -> Int32
  /// Starts a worker like `spawn`, without blocking the caller; `completion` gets its
  /// pid or the error (on any thread, not under a lock of the caller's).
  func launch(executable: String, arguments: [String], environment: [String: String],
              completion: @escaping @Sendable (Result<Int32, SwiftrayError>) -> Void)
  /// Starts a fork server that later workers with this environment are forked from
  /// (`ForkServer`); launchers without processes ignore it.
  func startForkServer(executable: String, arguments: [String], environment: [String: String]) throws(SwiftrayError)
  /// Sends `sig` to a worker this launcher started (nothing for one that is gone).
  func signal(_ pid: Int32, _ sig: Int32)
  /// Workers started and not yet seen exiting.
  var livePids: [Int32] { get }
  /// Calls `onGone` once when `pid` (not a worker of ours: a driver) ends.
  func watch(_ pid: Int32, onGone: @escaping @Sendable () -> Void)
  /// Stops watching; later exits are not reported.
  func shutdown()
  /// `shutdown`, returning once the launcher's threads ended and its descriptors are
  /// closed (bounded). Blocks: from a thread of your own.
  func stopAndWait()
}

extension ProcessMonitor: WorkerLauncher {}

extension WorkerLauncher {
  /// Launchers without threads or descriptors of their own stop at once.
  public func stopAndWait() { shutdown() }

  /// Launchers whose `spawn` does not block start inline.
  public func launch(executable: String, arguments: [String], environment: [String: String],
                     completion: @escaping @Sendable (Result<Int32, SwiftrayError>) -> Void) {
    do throws(SwiftrayError) {
      completion(.success(try spawn(executable: executable, arguments: arguments, environment: environment)))
    } catch {
      completion(.failure(error))
    }
  }

  public func startForkServer(executable: String, arguments: [String], environment: [String: String]) throws(SwiftrayError) {}
}

/// Makes a node's launcher from the node's handlers of its workers' output and exits.
public typealias WorkerLauncherFactory = @Sendable (
  _ onOutput: @escaping ProcessMonitor.OutputHandler, _ onExit: @escaping ProcessMonitor.ExitHandler
) -> any WorkerLauncher
