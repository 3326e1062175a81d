import Foundation
import Prometheus
import RuntimeProto

/// The head's account of user metrics: the first definition of a name wins (a later,
/// different one is refused: Prometheus needs one type, help text, label set and
/// buckets per family), and at most `maxFamilies` metrics of `maxSeries` series in all.
/// Every sample is checked here, whatever its sender checked.
///
/// Threading: a value, owned by `UserMetricsSink`.
public struct UserMetricCatalog: Sendable {
  public static let maxFamilies = 1000, maxSeries = 10_000

  struct SeriesKey: Hashable { var name: String; var tags: [String] }
  private(set) var families: [String: MetricDefinition] = [:]
  private var series: Set<SeriesKey> = []
  /// Samples refused (a bad or conflicting definition, a bound) plus those the senders dropped.
  public private(set) var dropped: UInt64 = 0
  /// Why the latest sample was refused (for the head's log).
  public private(set) var lastProblem: String?

  public init() {}

  /// Whether `s` may be exported; counts it when not.
  public mutating func admit(_ s: Swiftray_MetricSample) -> Bool {
    if let p = problem(s) {
      dropped &+= 1
      lastProblem = p
      return false
    }
    return true
  }

  public mutating func sendersDropped(_ n: UInt64) { dropped &+= n }

  mutating func problem(_ s: Swiftray_MetricSample) -> String? {
    guard MetricDefinition.Kind(rawValue: s.kind.rawValue) != nil else { return "unknown metric kind \(s.kind.rawValue)" }
    let d = MetricDefinition(s)
    if let p = d.problem { return p }
    guard s.tagValues.count == d.tagKeys.count, s.tagValues.allSatisfy({ $0.utf8.count <= MetricDefinition.maxTagValue })
    else { return "'\(d.name)': \(s.tagValues.count) tag values for \(d.tagKeys.count) keys, or a value too long" }
    switch d.kind {
    case .counter: guard s.value.isFinite, s.value > 0 else { return "'\(d.name)': a counter's increase must be > 0" }
    case .gauge: guard s.value.isFinite else { return "'\(d.name)': a gauge's value must be finite" }
    case .histogram:
      guard s.observations.count <= UserMetricsBuffer.maxObservations, s.observations.allSatisfy(\.isFinite)
      else { return "'\(d.name)': too many observations, or one not finite" }
    }
    if let known = families[d.name] {
      guard known == d else {
        return "metric '\(d.name)' is defined differently by two processes (kind, description, tag keys or boundaries); the first definition stands"
      }
    } else {
      guard families.count < Self.maxFamilies else { return "more than \(Self.maxFamilies) user metrics" }
    }
    let key = SeriesKey(name: d.name, tags: s.tagValues)
    if !series.contains(key) {
      guard series.count < Self.maxSeries else { return "more than \(Self.maxSeries) series of user metrics" }
      series.insert(key)
    }
    families[d.name] = families[d.name] ?? d
    return nil
  }
}

/// User metrics as the head exports them: samples from every process's reports summed
/// into one Prometheus registry (counters add up, the latest gauge value stands,
/// observations fill the histograms).
///
/// Threading: an actor; the registry's own lock is a leaf (it calls nothing back).
public actor UserMetricsSink {
  let registry = PrometheusCollectorRegistry()
  var catalog = UserMetricCatalog()

  public init() {}

  public func apply(_ samples: [Swiftray_MetricSample], dropped: UInt64) {
    catalog.sendersDropped(dropped)
    for s in samples where catalog.admit(s) {
      let d = MetricDefinition(s)
      let labels = Array(zip(d.tagKeys, s.tagValues))
      switch d.kind {
      case .counter: registry.makeCounter(name: d.exportedName, labels: labels, help: d.description).increment(by: s.value)
      case .gauge: registry.makeGauge(name: d.exportedName, labels: labels, help: d.description).set(to: s.value)
      case .histogram:
        let h = registry.makeValueHistogram(name: d.exportedName, labels: labels, buckets: d.boundaries, help: d.description)
        for v in s.observations { h.record(v) }
      }
    }
  }

  public var dropped: UInt64 { catalog.dropped }
  public var lastProblem: String? { catalog.lastProblem }

  public func emit(into buffer: inout [UInt8]) { registry.emit(into: &buffer) }
}

/// A node's state for its metrics, read at each scrape.
public struct NodeMetricsSample: Sendable {
  public var nodeIP: String
  public var resourcesTotal: [String: Double] = [:]
  public var resourcesAvailable: [String: Double] = [:]
  public var store = Swiftray_StoreStats()
  public var workers = 0, idleWorkers = 0
  public init(nodeIP: String) { self.nodeIP = nodeIP }
}

/// The cluster's state for the head's metrics.
public struct HeadMetricsSample: Sendable {
  public var tasks: [TaskEventTable.CountKey: Int] = [:]
  /// Actors by state (Ray's names) and class.
  public var actors: [ActorCountKey: Int] = [:]
  public var aliveNodes = 0, deadNodes = 0
  public var eventsDroppedAtSources: UInt64 = 0, eventsEvicted: UInt64 = 0
  public init() {}
}

public struct ActorCountKey: Hashable, Sendable {
  public var state: String
  public var className: String
  public init(state: String, className: String) { self.state = state; self.className = className }
}

/// A node's Prometheus exposition (`/metrics`): Ray's metric names where Ray has one,
/// `swiftray_…` otherwise. Every node exports its own resources, store, workers, CPU
/// and memory; the head adds the cluster's tasks, actors and nodes, and the user
/// metrics of every process. No label holds a task's arguments or values.
///
/// Threading: an actor; `render` reads the samples (closures that take their own locks
/// briefly) and the host's `/proc` files.
public actor MetricsExporter {
  let registry = PrometheusCollectorRegistry()
  let node: @Sendable () -> NodeMetricsSample
  let head: (@Sendable () -> HeadMetricsSample)?
  let user: UserMetricsSink?
  var cpu = HostCPUSampler()
  /// Last totals exported as counters (the sources keep totals; counters take increases).
  var totals: [String: Double] = [:]
  /// Actor states seen at the previous scrape: one with no actor left reads 0.
  var actorKeys: Set<ActorCountKey> = []

  public init(node: @escaping @Sendable () -> NodeMetricsSample, head: (@Sendable () -> HeadMetricsSample)? = nil,
              user: UserMetricsSink? = nil) {
    self.node = node; self.head = head; self.user = user
  }

  public func render() async -> [UInt8] {
    update(node())
    if let head { update(head()) }
    if let user {
      total("swiftray_user_metric_samples_dropped_total", await user.dropped, [],
            "User metric samples refused at the head or dropped by their processes (bounds, conflicting definitions).")
    }
    var out = registry.emitToBuffer()
    await user?.emit(into: &out)
    return out
  }

  func gauge(_ name: String, _ labels: [(String, String)], _ help: String, _ value: Double) {
    registry.makeGauge(name: name, labels: labels, help: help).set(to: value)
  }

  /// A counter that follows a source's total (a total that went back — a restart —
  /// leaves it where it is).
  func total(_ name: String, _ value: UInt64, _ labels: [(String, String)], _ help: String) {
    let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
    let v = Double(value)
    let increase = v - (totals[key] ?? 0)
    let c = registry.makeCounter(name: name, labels: labels, help: help)
    if increase > 0 { c.increment(by: increase) }
    totals[key] = max(v, totals[key] ?? 0)
  }

  func update(_ n: NodeMetricsSample) {
    let at = [("NodeAddress", n.nodeIP)]
    for (name, total) in n.resourcesTotal {
      let available = n.resourcesAvailable[name] ?? 0
      let help = "Logical resources of the node, used and available."
      gauge("ray_resources", [("Name", name), ("State", "USED"), ("NodeAddress", n.nodeIP)], help, max(0, total - available))
      gauge("ray_resources", [("Name", name), ("State", "AVAILABLE"), ("NodeAddress", n.nodeIP)], help, available)
    }
    let s = n.store
    let storeHelp = "Bytes of objects in the node's object store, by where they are."
    gauge("ray_object_store_memory", [("Location", "MMAP_SHM"), ("NodeAddress", n.nodeIP)], storeHelp, Double(s.used))
    gauge("ray_object_store_memory", [("Location", "SPILLED"), ("NodeAddress", n.nodeIP)], storeHelp, Double(s.spilledBytes))
    gauge("ray_object_store_used_memory", at, "Bytes used in the node's shared-memory object store.", Double(s.used))
    gauge("ray_object_store_available_memory", at, "Bytes free in the node's shared-memory object store.",
          Double(s.capacity >= s.used ? s.capacity - s.used : 0))
    gauge("ray_object_store_num_local_objects", at, "Objects in the node's object store.", Double(s.numObjects))
    total("swiftray_object_store_spilled_bytes_total", s.bytesSpilledTotal, at, "Bytes spilled to disk by the node's store.")
    total("swiftray_object_store_restored_bytes_total", s.bytesRestoredTotal, at, "Bytes restored from disk by the node's store.")
    total("swiftray_object_store_pulled_bytes_total", s.bytesPulledTotal, at, "Bytes pulled from other nodes by the node's store.")
    gauge("swiftray_workers", at, "Worker processes of the node.", Double(n.workers))
    gauge("swiftray_idle_workers", at, "Idle worker processes of the node.", Double(n.idleWorkers))
    gauge("ray_node_cpu_count", at, "CPUs of the machine.", Double(HostStats.cpuCount))
    gauge("ray_node_cpu_utilization", at, "Percent of the machine's CPU time busy since the previous scrape.",
          cpu.sample(HostStats.cpuTimes()))
    if let m = HostStats.memory() {
      gauge("ray_node_mem_total", at, "Bytes of memory of the machine.", Double(m.total))
      gauge("ray_node_mem_available", at, "Bytes of memory available on the machine.", Double(m.available))
      gauge("ray_node_mem_used", at, "Bytes of memory used on the machine.", Double(m.used))
    }
  }

  func update(_ h: HeadMetricsSample) {
    for (k, n) in h.tasks {
      gauge("ray_tasks", [("State", k.state.rayName), ("Name", k.name), ("IsRetry", k.isRetry ? "1" : "0")],
            "Task attempts by their latest state (finished and failed ones stay counted).", Double(n))
    }
    for k in actorKeys.union(h.actors.keys) {
      gauge("ray_actors", [("State", k.state), ("Name", k.className)], "Actors by state.", Double(h.actors[k] ?? 0))
    }
    actorKeys.formUnion(h.actors.keys)
    gauge("ray_cluster_active_nodes", [], "Nodes alive in the cluster.", Double(h.aliveNodes))
    gauge("ray_cluster_dead_nodes", [], "Nodes of the cluster declared dead.", Double(h.deadNodes))
    total("swiftray_task_events_dropped_total", h.eventsDroppedAtSources, [],
          "Task events processes dropped before sending (their buffers were full or the head away).")
    total("swiftray_task_events_evicted_total", h.eventsEvicted, [],
          "Task attempts the head dropped from its table (task_events_max_num_task_in_gcs).")
  }
}
