import Foundation

/// How much memory a node may use — the machine's, or less under a container's cgroup
/// limit (a Kubernetes pod's `resources.limits.memory`), as Ray reads it: a node that
/// counted the whole machine's memory would size its object store and its `memory`
/// resource past what the pod may use, and be killed when they fill.
///
/// Threading: pure functions, and `current`, which reads files.
public enum MachineMemory {
  /// A cgroup's limit from its file's text (v2 `memory.max`, v1
  /// `memory.limit_in_bytes`): nil for none — "max", unreadable, not a number, zero, or
  /// no less than the machine's memory (v1 writes a huge number for "unlimited").
  public static func cgroupLimit(_ text: String?, physical: UInt64) -> UInt64? {
    guard let t = text?.trimmingCharacters(in: .whitespacesAndNewlines), let n = UInt64(t), n > 0, n < physical else { return nil }
    return n
  }

  /// The memory this node may use: the machine's, or the tightest of the limit files' texts.
  public static func usable(physical: UInt64, limits: [String?]) -> UInt64 {
    limits.reduce(physical) { min($0, cgroupLimit($1, physical: physical) ?? $0) }
  }

  /// The limit files of this process's cgroups, from `/proc/self/cgroup`'s text: for the
  /// v2 hierarchy and v1's memory controller, its cgroup's file and each ancestor's (a
  /// pod's limit may sit on a parent). In a container with its own cgroup namespace the
  /// path is "/", the container's own. Bounded: 64 lines, 32 levels.
  public static func limitFiles(procSelfCgroup text: String) -> [String] {
    var out: [String] = []
    for line in text.split(separator: "\n").prefix(64) {
      let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
      guard f.count == 3, f[2].hasPrefix("/"), f[2].utf8.count <= 4096 else { continue }
      let mounts: [(String, String)]
      if f[0] == "0" && f[1].isEmpty {
        mounts = [("/sys/fs/cgroup", "memory.max"), ("/sys/fs/cgroup/unified", "memory.max")]
      } else if f[1].split(separator: ",").contains("memory") {
        mounts = [("/sys/fs/cgroup/memory", "memory.limit_in_bytes")]
      } else { continue }
      var parts = f[2].split(separator: "/").prefix(32).map(String.init)
      while true {
        let dir = parts.isEmpty ? "" : "/" + parts.joined(separator: "/")
        for (mount, file) in mounts { out.append("\(mount)\(dir)/\(file)") }
        if parts.isEmpty { break }
        parts.removeLast()
      }
    }
    return out
  }

  /// The object store's default size, as Ray's: 30 % of `usable`, at least 75 MiB. (A
  /// /dev/shm smaller than that makes the store fall back to disk, with a warning.)
  public static func defaultStoreCapacity(usable: UInt64) -> Int {
    Int(clamping: max(UInt64(75 << 20), usable / 10 * 3))
  }

  /// This process's usable memory (its cgroups' limits read from /sys/fs/cgroup).
  public static var current: UInt64 {
    func read(_ path: String, max: Int) -> String? {
      guard let h = FileHandle(forReadingAtPath: path) else { return nil }
      defer { try? h.close() }
      return (try? h.read(upToCount: max)).map { String(decoding: $0, as: UTF8.self) }
    }
    let files = limitFiles(procSelfCgroup: read("/proc/self/cgroup", max: 16 << 10) ?? "")
    return usable(physical: ProcessInfo.processInfo.physicalMemory, limits: files.map { read($0, max: 64) })
  }
}
