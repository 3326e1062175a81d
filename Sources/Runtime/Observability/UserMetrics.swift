import Foundation
import RuntimeProto

/// A user metric (`swiftray.util.metrics.Counter|Gauge|Histogram`): checked where it is
/// defined and again at the head, which exports it as Prometheus `ray_<name>` (a
/// counter as `ray_<name>_total`), as Ray does.
public struct MetricDefinition: Hashable, Sendable {
  public enum Kind: Int, Sendable { case counter = 0, gauge = 1, histogram = 2 }
  public var kind: Kind
  public var name: String
  public var description: String
  public var tagKeys: [String]
  public var boundaries: [Double]

  public static let maxName = 200, maxDescription = 1024, maxTagKeys = 32, maxTagValue = 1024, maxBoundaries = 256

  public init(kind: Kind, name: String, description: String = "", tagKeys: [String] = [], boundaries: [Double] = []) {
    self.kind = kind; self.name = name; self.description = description; self.tagKeys = tagKeys; self.boundaries = boundaries
  }

  /// The family's name in the exposition.
  public var exportedName: String { kind == .counter ? "ray_\(name)_total" : "ray_\(name)" }

  /// What is wrong with it, said so the user can fix it; nil when it is fine.
  public var problem: String? {
    if name.isEmpty { return "a metric needs a name" }
    if name.utf8.count > Self.maxName { return "metric name '\(name.prefix(40))…' is longer than \(Self.maxName) bytes" }
    if !Self.isMetricName(name) {
      return "invalid metric name '\(name)': use letters, digits, '_' and ':', not starting with a digit"
    }
    if SystemMetrics.names.contains(exportedName) {
      return "metric name '\(name)' is taken by swiftray's own metric \(exportedName); choose another"
    }
    if description.utf8.count > Self.maxDescription { return "the description of '\(name)' is longer than \(Self.maxDescription) bytes" }
    if tagKeys.count > Self.maxTagKeys { return "'\(name)' has \(tagKeys.count) tag keys (at most \(Self.maxTagKeys))" }
    if Set(tagKeys).count != tagKeys.count { return "'\(name)' names a tag key twice: \(tagKeys)" }
    for k in tagKeys where !Self.isLabelName(k) || (kind == .histogram && k == "le") {
      return "invalid tag key '\(k)' of '\(name)': use letters, digits and '_', not starting with a digit or '__'"
        + (kind == .histogram ? " ('le' is the histogram's own)" : "")
    }
    switch kind {
    case .histogram:
      if boundaries.isEmpty { return "histogram '\(name)' needs boundaries" }
      if boundaries.count > Self.maxBoundaries { return "histogram '\(name)' has more than \(Self.maxBoundaries) boundaries" }
      for (i, b) in boundaries.enumerated() where !(b.isFinite && b > 0) || (i > 0 && !(b > boundaries[i - 1])) {
        return "boundaries of histogram '\(name)' must be finite, greater than 0 and strictly increasing (index \(i): \(b))"
      }
    case .counter, .gauge:
      if !boundaries.isEmpty { return "only a histogram has boundaries ('\(name)')" }
    }
    return nil
  }

  static func isMetricName(_ s: String) -> Bool {
    for (i, c) in s.utf8.enumerated() {
      let letter = (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95 || c == 58
      if !(letter || (i > 0 && c >= 48 && c <= 57)) { return false }
    }
    return !s.isEmpty
  }

  static func isLabelName(_ s: String) -> Bool {
    !s.hasPrefix("__") && !s.contains(":") && isMetricName(s)
  }

  init(_ s: Swiftray_MetricSample) {
    self.init(kind: Kind(rawValue: s.kind.rawValue) ?? .counter, name: s.name, description: s.description_p,
              tagKeys: s.tagKeys, boundaries: s.boundaries)
  }
}

/// Swiftray's own metric families, which a user metric may not shadow.
public enum SystemMetrics {
  public static let names: Set<String> = [
    "ray_tasks", "ray_actors", "ray_resources", "ray_object_store_memory", "ray_object_store_available_memory",
    "ray_object_store_used_memory", "ray_object_store_num_local_objects", "ray_node_cpu_utilization",
    "ray_node_cpu_count", "ray_node_mem_used", "ray_node_mem_total", "ray_node_mem_available",
    "ray_cluster_active_nodes", "ray_cluster_dead_nodes", "swiftray_workers", "swiftray_idle_workers",
    "swiftray_object_store_spilled_bytes_total", "swiftray_object_store_restored_bytes_total",
    "swiftray_object_store_pulled_bytes_total", "swiftray_task_events_dropped_total",
    "swiftray_task_events_evicted_total", "swiftray_user_metric_samples_dropped_total",
  ]
}

/// What one process recorded of its user metrics since its last report: a counter's
/// increase, a gauge's last value, a histogram's observations, per series (a metric and
/// its tags' values). Bounded: at most `maxSeries` series, `maxDefinitions` metrics and
/// `maxObservations` observations waiting; beyond them records are dropped and counted.
///
/// Threading: a value; the process keeps it behind a lock.
public struct UserMetricsBuffer: Sendable {
  public static let maxDefinitions = 10_000, maxSeries = 10_000, maxObservations = 100_000

  struct SeriesKey: Hashable { var handle: Int; var tags: [String] }
  enum Accumulated { case increase(Double), last(Double), observations([Double]) }

  private(set) var definitions: [MetricDefinition] = []
  private var handles: [MetricDefinition: Int] = [:]
  private var series: [SeriesKey: Accumulated] = [:]
  private var observations = 0
  public private(set) var dropped: UInt64 = 0

  public init() {}

  public var isEmpty: Bool { series.isEmpty && dropped == 0 }

  public enum DefineError: Error, Equatable { case invalid(String), tooMany }

  /// The handle of `d` (the same one for the same definition).
  public mutating func define(_ d: MetricDefinition) -> Result<Int, DefineError> {
    if let h = handles[d] { return .success(h) }
    if let p = d.problem { return .failure(.invalid(p)) }
    guard definitions.count < Self.maxDefinitions else { return .failure(.tooMany) }
    definitions.append(d)
    handles[d] = definitions.count - 1
    return .success(definitions.count - 1)
  }

  /// One record; false when the handle or tags are wrong (the caller checked them) or a
  /// bound dropped it (counted).
  @discardableResult
  public mutating func record(handle: Int, tags: [String], value: Double) -> Bool {
    guard definitions.indices.contains(handle), value.isFinite else { return false }
    let d = definitions[handle]
    guard tags.count == d.tagKeys.count, tags.allSatisfy({ $0.utf8.count <= MetricDefinition.maxTagValue }) else { return false }
    let key = SeriesKey(handle: handle, tags: tags)
    let old = series[key]
    if old == nil, series.count >= Self.maxSeries { dropped &+= 1; return false }
    switch d.kind {
    case .counter:
      guard value > 0 else { return false }
      if case .increase(let n) = old { series[key] = .increase(n + value) } else { series[key] = .increase(value) }
    case .gauge:
      series[key] = .last(value)
    case .histogram:
      guard observations < Self.maxObservations else { dropped &+= 1; return false }
      observations += 1
      if case .observations(var list) = old {
        series[key] = nil  // one owner of the array: appended in place
        list.append(value)
        series[key] = .observations(list)
      } else {
        series[key] = .observations([value])
      }
    }
    return true
  }

  /// Everything recorded since the last take, as samples, and the drop count.
  public mutating func take() -> (samples: [Swiftray_MetricSample], dropped: UInt64) {
    let out = series.map { key, acc -> Swiftray_MetricSample in
      let d = definitions[key.handle]
      var s = Swiftray_MetricSample()
      s.kind = Swiftray_MetricSample.Kind(rawValue: d.kind.rawValue) ?? .counter
      s.name = d.name
      s.description_p = d.description
      s.tagKeys = d.tagKeys
      s.tagValues = key.tags
      s.boundaries = d.boundaries
      switch acc {
      case .increase(let v), .last(let v): s.value = v
      case .observations(let list): s.observations = list
      }
      return s
    }
    defer { series.removeAll(keepingCapacity: true); observations = 0; dropped = 0 }
    return (out, dropped)
  }

  /// Puts back what a report could not deliver (the head was away), under what was
  /// recorded since: increases add up, a newer gauge value wins, observations go first.
  public mutating func putBack(_ samples: [Swiftray_MetricSample], dropped d: UInt64) {
    dropped &+= d
    for s in samples {
      guard case .success(let h) = define(MetricDefinition(s)) else { continue }
      let key = SeriesKey(handle: h, tags: s.tagValues)
      let old = series[key]
      if old == nil, series.count >= Self.maxSeries { dropped &+= 1; continue }
      switch (definitions[h].kind, old) {
      case (.counter, .increase(let n)): series[key] = .increase(n + s.value)
      case (.counter, _): series[key] = .increase(s.value)
      case (.gauge, nil): series[key] = .last(s.value)
      case (.gauge, _): break
      case (.histogram, _):
        let room = max(0, Self.maxObservations - observations)
        let kept = Array(s.observations.prefix(room))
        dropped &+= UInt64(s.observations.count - kept.count)
        observations += kept.count
        if case .observations(let newer) = old { series[key] = .observations(kept + newer) } else { series[key] = .observations(kept) }
      }
    }
  }
}
