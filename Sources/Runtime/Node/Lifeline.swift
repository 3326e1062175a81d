import Foundation

/// A worker's stdin is the read end of a pipe whose write end only its NodeManager's
/// process holds (see `ProcessMonitor`). When that process dies, however it dies,
/// the read returns EOF and the worker exits: no orphans.
public enum Lifeline {
  /// Starts the watch. Call first thing in a worker process.
  public static func exitWhenParentDies() {
    let t = Thread {
      var b: UInt8 = 0
      while true {
        let n = read(0, &b, 1)
        if n == 0 || (n < 0 && errno != EINTR) { _exit(1) }
      }
    }
    t.name = "swiftray-lifeline"
    t.start()
  }
}
