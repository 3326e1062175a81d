import Foundation

/// Every setting has one home: here (DESIGN §6). Values come, in increasing priority,
/// from the defaults, `SWIFTRAY_<NAME>` environment variables, and the
/// `_system_config` passed to `init` (or CLI flags). Names match Ray's where Ray has one.
public struct Config: Sendable, Equatable {
  /// Values at or below this size live inline in the owner (`max_direct_call_object_size`).
  public var maxDirectCallObjectSize = 100 * 1024
  /// How long an owner keeps an idle worker lease for the next task of the same shape.
  public var leaseIdleLingerMs = 10
  /// Tasks pushed to one leased worker before replies come back.
  public var maxTasksInFlightPerWorker = 1
  /// Lease requests outstanding per resource shape.
  public var maxPendingLeaseRequestsPerShape = 10
  /// How often an owner asks again for a shape no node could fit.
  public var infeasibleRetryMs = 1000
  /// Worker processes spawned at once.
  public var maximumStartupConcurrency = 4
  /// Upper bound on worker processes per node (blocked workers lend CPUs, so the pool
  /// can grow past the CPU count; this caps it).
  public var maxWorkersPerNode = 64
  /// The ControlService checks every node this often...
  public var healthCheckPeriodMs = 3000
  /// ...waits this long for an answer...
  public var healthCheckTimeoutMs = 10000
  /// ...and declares the node dead after this many failures in a row (Ray's defaults).
  public var healthCheckFailureThreshold = 5
  /// How often each NodeManager reports its free resources and refreshes its view of
  /// the other nodes (the view spillback and the hybrid policy decide on). Ray: 100 ms.
  public var resourceReportPeriodMs = 200
  /// Bytes of finished tasks' specs an owner keeps to rebuild lost objects; the
  /// oldest are evicted past it (their objects then cannot be rebuilt). Ray: 1 GiB.
  public var maxLineageBytes = 1 << 30
  /// A node that cannot reach the ControlService this long stops (its cluster is gone).
  public var gcsRpcServerReconnectTimeoutS = 60

  public init() {}

  /// Keys accepted in `_system_config` and as `SWIFTRAY_<UPPER_NAME>`.
  nonisolated(unsafe) public static let keys: [String: WritableKeyPath<Config, Int>] = [  // immutable after init; key paths are not Sendable-annotated
    "max_direct_call_object_size": \.maxDirectCallObjectSize,
    "lease_idle_linger_ms": \.leaseIdleLingerMs,
    "max_tasks_in_flight_per_worker": \.maxTasksInFlightPerWorker,
    "max_pending_lease_requests_per_shape": \.maxPendingLeaseRequestsPerShape,
    "infeasible_retry_ms": \.infeasibleRetryMs,
    "maximum_startup_concurrency": \.maximumStartupConcurrency,
    "max_workers_per_node": \.maxWorkersPerNode,
    "health_check_period_ms": \.healthCheckPeriodMs,
    "health_check_timeout_ms": \.healthCheckTimeoutMs,
    "health_check_failure_threshold": \.healthCheckFailureThreshold,
    "raylet_report_resources_period_milliseconds": \.resourceReportPeriodMs,
    "gcs_rpc_server_reconnect_timeout_s": \.gcsRpcServerReconnectTimeoutS,
    "max_lineage_bytes": \.maxLineageBytes,
  ]

  /// Applies `SWIFTRAY_<NAME>` variables, then `overrides`. Unknown keys are an error
  /// naming the known ones, so a typo is never silently ignored.
  public static func resolve(environment: [String: String] = ProcessInfo.processInfo.environment,
                             overrides: [String: Int] = [:]) throws(SwiftrayError) -> Config {
    var c = Config()
    for (name, path) in keys {
      if let v = environment["SWIFTRAY_" + name.uppercased()], let i = Int(v) { c[keyPath: path] = i }
    }
    for (name, value) in overrides {
      guard let path = keys[name] else {
        throw SwiftrayError(.invalidArgument,
          "unknown _system_config key '\(name)'; known keys: \(keys.keys.sorted().joined(separator: ", "))")
      }
      c[keyPath: path] = value
    }
    return c
  }

  /// The settings as `name=value` pairs, to hand to processes this one starts.
  public var asEnvironment: [String: String] {
    var env: [String: String] = [:]
    for (name, path) in Self.keys { env["SWIFTRAY_" + name.uppercased()] = String(self[keyPath: path]) }
    return env
  }
}
