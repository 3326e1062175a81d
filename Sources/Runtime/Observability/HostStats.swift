import Foundation

/// The machine's CPU and memory as Linux tells them (`/proc/stat`, `/proc/meminfo`), for
/// the node's metrics. The parsers are pure (tested on fixed text); `read` reads the
/// files.
///
/// Threading: value type; `HostCPUSampler` is behind its owner's lock.
public enum HostStats {
  /// Busy and total jiffies of all CPUs (the first `cpu ` line).
  public struct CPUTimes: Sendable, Equatable {
    public var busy: UInt64
    public var total: UInt64
    public init(busy: UInt64, total: UInt64) { self.busy = busy; self.total = total }
  }

  public static func parseCPU(_ text: String) -> CPUTimes? {
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return nil }
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let f = line.split(separator: " ").dropFirst().prefix(8).compactMap { UInt64($0) }
    guard f.count >= 4 else { return nil }
    var total: UInt64 = 0
    for v in f { total = total.addingReportingOverflow(v).partialValue }
    let idle = f[3].addingReportingOverflow(f.count > 4 ? f[4] : 0).partialValue
    return CPUTimes(busy: total >= idle ? total - idle : 0, total: total)
  }

  /// Percent busy between two readings (0 when no time passed or a counter went back).
  public static func utilization(from a: CPUTimes, to b: CPUTimes) -> Double {
    guard b.total > a.total, b.busy >= a.busy else { return 0 }
    return min(100, Double(b.busy - a.busy) / Double(b.total - a.total) * 100)
  }

  public struct Memory: Sendable, Equatable {
    public var total: UInt64
    public var available: UInt64
    public init(total: UInt64, available: UInt64) { self.total = total; self.available = available }
    public var used: UInt64 { total >= available ? total - available : 0 }
  }

  /// MemTotal and MemAvailable, in bytes.
  public static func parseMemory(_ text: String) -> Memory? {
    var total: UInt64?, available: UInt64?
    for line in text.split(separator: "\n") {
      let f = line.split(separator: " ", omittingEmptySubsequences: true)
      guard f.count >= 2, let kib = UInt64(f[1]) else { continue }
      let bytes = kib.multipliedReportingOverflow(by: 1024)
      guard !bytes.overflow else { continue }
      if f[0] == "MemTotal:" { total = bytes.partialValue } else if f[0] == "MemAvailable:" { available = bytes.partialValue }
    }
    guard let total, let available else { return nil }
    return Memory(total: total, available: min(available, total))
  }

  static func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

  public static func cpuTimes() -> CPUTimes? { read("/proc/stat").flatMap(parseCPU) }
  public static func memory() -> Memory? { read("/proc/meminfo").flatMap(parseMemory) }
  public static var cpuCount: Int { ProcessInfo.processInfo.activeProcessorCount }
}

/// CPU use since the previous scrape (Prometheus scrapes every 15–60 s; the first
/// scrape measures from when the node started).
public struct HostCPUSampler: Sendable {
  var last: HostStats.CPUTimes?

  public init(start: HostStats.CPUTimes? = HostStats.cpuTimes()) { last = start }

  public mutating func sample(_ now: HostStats.CPUTimes?) -> Double {
    guard let now else { return 0 }
    defer { last = now }
    guard let last else { return 0 }
    return HostStats.utilization(from: last, to: now)
  }
}
