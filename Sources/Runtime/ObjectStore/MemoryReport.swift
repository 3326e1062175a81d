import Foundation
import RuntimeProto

/// The text of `swiftray memory` and `swiftray.util.memory_summary()` for one node's store.
public enum MemoryReport {
  static func mib(_ b: UInt64) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }

  public static func format(_ st: Swiftray_StoreStats, node: String) -> String {
    let pct = st.capacity > 0 ? Double(st.used) / Double(st.capacity) * 100 : 0
    return """
      ======== Object store of \(node) ========
      capacity:        \(mib(st.capacity))  (arena \(st.arenaPath))
      used:            \(mib(st.used))  (\(String(format: "%.1f", pct)) % full), \(st.numObjects) object(s)
      pinned:          \(mib(st.pinnedBytes)) in \(st.numPinned) object(s), mapped by \(st.numReaders) process(es)
      spilled:         \(mib(st.spilledBytes)) in \(st.numSpilled) object(s)  (\(st.spillDir))
      spilled/restored since start: \(mib(st.bytesSpilledTotal)) / \(mib(st.bytesRestoredTotal))

      """
  }

  /// Session directories of running local clusters under `root`, newest first.
  public static func liveSessions(root: String = SessionPaths.sessionsRoot()) -> [String] {
    LocalCluster.sessions(root: root).filter(\.alive).map(\.name).sorted(by: >).map { root + "/" + $0 }
  }

  /// Asks the store of the node whose session directory is `sessionDir`. Blocks.
  public static func stats(sessionDir: String, pool: DataPlaneClientPool) throws(SwiftrayError) -> Swiftray_StoreStats {
    let reply = try StoreClient.call(.storeStats(.init()), endpoint: ObjectStore.endpoint(sessionDir: sessionDir), pool: pool)
    guard case .storeStatsReply(let st) = reply else { throw SwiftrayError(.system, "bad reply from the object store") }
    return st
  }
}
