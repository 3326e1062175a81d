import Foundation
import Runtime
import Synchronization

/// This process's connection to a cluster: its CoreWorker and, for a driver that
/// started a local cluster, that cluster. Threading: any thread.
final class Session: Sendable {
  let core: CoreWorker
  let cluster: LocalCluster?

  init(core: CoreWorker, cluster: LocalCluster?) {
    self.core = core; self.cluster = cluster
  }

  static let current = Locked<Session?>(nil)
  static var active: Session? { current.withLock { $0 } }

  /// The event-loop group is NIO's process-wide singleton, never shut down: a driver may
  /// init and shut down many times, and late connection callbacks must not find a dead
  /// event loop.
  func shutdown() {
    // Workers stop first (their last output drains to the log stream), then the core.
    core.prepareShutdown()
    cluster?.shutdown()
    core.shutdown()
  }
}
