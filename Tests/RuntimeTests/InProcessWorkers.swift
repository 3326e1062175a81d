import Foundation
import NIOPosix
import Runtime
import RuntimeProto
import Synchronization

/// Workers as threads of the test process: each is a real `CoreWorker` (its data plane
/// on the `MemoryNetwork`, registered with its node as a process would be) whose task
/// loop runs `execute` instead of Python. A `WorkerLauncher` for `NodeManager`.
///
/// Threading: any thread; each worker's loop runs on a thread of its own.
final class InProcessWorkers: WorkerLauncher {
  /// What a fake task does: its reply, or nil to die mid-task (as a SIGKILL would).
  typealias Execute = @Sendable (Swiftray_TaskSpec) -> Swiftray_PushTaskReply?

  struct Live {
    var core: CoreWorker?
    var signal: Int32 = 0
  }
  let live = Locked<[Int32: Live]>([:])
  /// Past any real pid (Linux caps them at 2^22), so no signal could reach a process.
  let nextPid = Atomic<Int32>(5_000_000)
  let group: MultiThreadedEventLoopGroup
  let clock: any RuntimeClock
  let config: Config
  let execute: Execute
  let onExit: ProcessMonitor.ExitHandler

  init(group: MultiThreadedEventLoopGroup, clock: any RuntimeClock, config: Config, onExit: @escaping ProcessMonitor.ExitHandler,
       execute: @escaping Execute) {
    self.group = group; self.clock = clock; self.config = config; self.onExit = onExit; self.execute = execute
  }

  func spawn(executable: String, arguments: [String], environment env: [String: String]) throws(SwiftrayError) -> Int32 {
    var options = try CoreWorker.Options.worker(environment: env, config: config)
    options.listen = .memory("worker-\(options.workerID.hex)")
    options.clock = clock
    let pid = nextPid.add(1, ordering: .relaxed).newValue
    live.withLock { $0[pid] = Live() }
    Thread.detachNewThread { [self, options] in run(pid, options) }
    return pid
  }

  /// The worker's life: connect, run tasks until signalled or told to die, stop.
  private func run(_ pid: Int32, _ options: CoreWorker.Options) {
    guard let core = try? CoreWorker(options: options, group: group, jobID: nil) else {
      live.withLock { $0[pid] = nil }
      return onExit(ProcessMonitor.ExitStatus(pid: pid, exitCode: 1, signal: 0))
    }
    live.withLock { $0[pid]?.core = core }
    var died: Int32 = 0
    while died == 0 {
      died = live.withLock { $0[pid]?.signal ?? SIGKILL }
      guard died == 0, let e = core.nextExecution(timeoutNanos: 20_000_000) else { continue }
      guard let reply = execute(e.spec) else { died = SIGKILL; break }
      core.finish(e, reply: reply)
    }
    // Its server closes: what was pushed to it and not answered fails at the caller, as
    // a connection to a killed process does.
    core.shutdown()
    live.withLock { $0[pid] = nil }
    onExit(ProcessMonitor.ExitStatus(pid: pid, exitCode: 0, signal: died))
  }

  func signal(_ pid: Int32, _ sig: Int32) {
    live.withLock { if $0[pid] != nil, $0[pid]!.signal == 0 { $0[pid]!.signal = sig } }
  }

  var livePids: [Int32] { live.withLock { Array($0.keys) } }

  /// Drivers here are threads of this process too: none ends on its own.
  func watch(_ pid: Int32, onGone: @escaping @Sendable () -> Void) {}

  func shutdown() {}
}

extension Swiftray_PushTaskReply {
  /// A reply whose one return holds `data` inline.
  static func returning(_ data: Data, for spec: Swiftray_TaskSpec) -> Swiftray_PushTaskReply {
    var reply = Swiftray_PushTaskReply()
    guard let tid = TaskID(binary: spec.taskID) else { return reply }
    var ro = Swiftray_ReturnObject()
    ro.objectID = Data(ObjectID.forReturn(of: tid, index: 0).binary)
    ro.object.data = data
    reply.returns.append(ro)
    return reply
  }
}
