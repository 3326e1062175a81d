import Foundation

/// Runs a node's runtime-environment set-up steps (`python -m swiftray._runtime_env_setup
/// …`: unpack a package, build a virtualenv) as child processes and says how each
/// ended, with the tail of what it printed. A monitor of its own, apart from the
/// workers', so a set-up step never counts as a worker (nor its end as a worker's death).
///
/// Threading: `run` from any task; the monitor's callbacks run on its thread, decide
/// under the lock and resume waiters after it.
public final class SetupProcesses: Sendable {
  public struct Outcome: Sendable, Equatable {
    public var exitCode: Int32
    public var signal: Int32
    public var timedOut = false
    /// The last lines it printed, stdout and stderr interleaved as they came.
    public var output: [String]
    public var succeeded: Bool { exitCode == 0 && signal == 0 && !timedOut }
  }

  public static let tailLines = 40

  struct Run {
    var lines: [String] = []
    var exit: ProcessMonitor.ExitStatus?
    var waiter: CheckedContinuation<Outcome, Never>?
    var timedOut = false
  }
  private let runs = Locked([Int32: Run]())
  private let monitor = Locked<ProcessMonitor?>(nil)

  public init() {}

  private func processMonitor() -> ProcessMonitor {
    monitor.withLock { m in
      if let m { return m }
      let made = ProcessMonitor(
        onOutput: { [weak self] pid, _, lines in self?.output(pid, lines) },
        onExit: { [weak self] status in self?.exited(status) })
      m = made
      return made
    }
  }

  private func output(_ pid: Int32, _ lines: [String]) {
    runs.withLock { r in
      var run = r[pid] ?? Run()
      run.lines.append(contentsOf: lines.suffix(Self.tailLines))
      if run.lines.count > Self.tailLines { run.lines.removeFirst(run.lines.count - Self.tailLines) }
      r[pid] = run
    }
  }

  private func exited(_ status: ProcessMonitor.ExitStatus) {
    let done = runs.withLock { r -> (CheckedContinuation<Outcome, Never>, Outcome)? in
      var run = r[status.pid] ?? Run()
      run.exit = status
      guard let w = run.waiter else { r[status.pid] = run; return nil }
      r[status.pid] = nil
      return (w, Self.outcome(run, status))
    }
    if let (w, o) = done { w.resume(returning: o) }
  }

  static func outcome(_ run: Run, _ status: ProcessMonitor.ExitStatus) -> Outcome {
    Outcome(exitCode: status.exitCode, signal: status.signal, timedOut: run.timedOut, output: run.lines)
  }

  /// Runs `executable arguments` with exactly `environment`; killed (SIGKILL) once
  /// `timeout` passes. A process that cannot start ends with exit code 127 and why.
  public func run(_ executable: String, _ arguments: [String], environment: [String: String],
                  timeout: Duration?) async -> Outcome {
    let m = processMonitor()
    let started: Result<Int32, SwiftrayError> = await withCheckedContinuation { c in
      m.launch(executable: executable, arguments: arguments, environment: environment) { c.resume(returning: $0) }
    }
    let pid: Int32
    switch started {
    case .failure(let e): return Outcome(exitCode: 127, signal: 0, output: ["cannot start \(executable): \(e.message)"])
    case .success(let p): pid = p
    }
    let killer = timeout.map { t in
      Task { [weak self] in
        try await Task.sleep(for: t)
        self?.runs.withLock { $0[pid]?.timedOut = true }
        m.signal(pid, SIGKILL)
      }
    }
    defer { killer?.cancel() }
    return await withCheckedContinuation { (c: CheckedContinuation<Outcome, Never>) in
      let done = runs.withLock { r -> Outcome? in
        var run = r[pid] ?? Run()
        if let status = run.exit { r[pid] = nil; return Self.outcome(run, status) }
        run.waiter = c
        r[pid] = run
        return nil
      }
      if let done { c.resume(returning: done) }
    }
  }

  public func shutdown() { monitor.withLock { $0 }?.shutdown() }
}
