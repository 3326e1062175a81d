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
  /// Tasks pushed to one leased worker while the tasks of its shape are short (below
  /// `task_pipeline_below_us` each, on average of late): the worker finds the next one
  /// already there. A worker whose task blocks in `get`/`wait` hands back what waits
  /// behind it, so what a blocked task waits for is never stuck behind it.
  public var taskPipelineDepth = 4
  /// What counts as short for `task_pipeline_depth`; 0 turns pipelining off.
  public var taskPipelineBelowUs = 1000
  /// Tasks one worker holds queued (an actor's calls, mostly); pushes beyond are
  /// refused with an error naming this setting.
  public var maxQueuedTasksPerWorker = 100_000
  /// Lease requests outstanding per resource shape.
  public var maxPendingLeaseRequestsPerShape = 10
  /// Lease requests one node keeps waiting, from all owners; more are refused until
  /// some are granted (their owners ask again).
  public var maxPendingLeaseRequestsPerNode = 10_000
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
  /// Largest data-plane frame (task specs with their inline arguments, replies, object
  /// chunk headers); just above the 5 MiB transfer chunk with room for inline values.
  public var maxDataPlaneFrameBytes = NetworkLimits().maxFrameBytes
  /// How long a store waits for each chunk of an object it pulls from another node's
  /// store; then the pull fails naming that store (the reader rebuilds or fails).
  public var objectManagerPullTimeoutMs = 10_000
  /// Deadline of the head's calls to a NodeManager (placement group prepare, commit,
  /// return; leases for actors): a node that hangs counts as refusing.
  public var nodeManagerRpcTimeoutMs = 10_000
  /// How long the head waits for each Redis reply before it counts Redis as failed.
  public var redisCommandTimeoutMs = 10_000
  /// Bytes the head's KV (exported functions, job records) may hold; puts beyond are
  /// refused naming this setting.
  public var maxKvBytes = 1 << 30
  /// Connections one listener (gRPC or data plane) keeps open at once.
  public var maxConnectionsPerListener = NetworkLimits().maxConnectionsPerListener
  /// A new connection must authenticate (or start its handshake) within this.
  public var connectionHandshakeTimeoutMs = NetworkLimits().handshakeTimeoutMs
  /// A data-plane client sends a keep-alive this often on each connection it holds.
  public var dataPlaneKeepaliveMs = NetworkLimits().keepAliveMs
  /// A data-plane connection that received nothing (not even a keep-alive) this long
  /// is closed and what was in flight on it fails: its peer counts as gone.
  public var dataPlaneIdleTimeoutMs = NetworkLimits().idleTimeoutMs
  /// gRPC connections with calls in flight are pinged after this long without traffic
  /// (both ways: clients ping servers, servers ping clients)...
  public var grpcClientKeepaliveTimeMs = NetworkLimits().grpcKeepaliveTimeMs
  /// ...and closed, failing their calls, when the ping is not answered within this.
  public var grpcClientKeepaliveTimeoutMs = NetworkLimits().grpcKeepaliveTimeoutMs

  /// 1: an owner pushes tasks to the workers of its node by lane (`Lane`: written and
  /// read by the threads that need them, no event-loop hop); 0: by the data plane only.
  public var taskLanes = 1
  /// How long, in microseconds, a worker looks for its next task by lane right after
  /// one, and a caller for the reply of a task it pushed by lane, before sleeping. A
  /// thread still awake needs no wake-up: the round trip of a sync call halves. Each
  /// look yields the CPU to any thread waiting for it first; 0 never spins.
  public var taskLaneSpinUs = 500
  /// Replies a worker's task thread holds while more tasks wait in its queue, to send
  /// them together with a later one (one wake-up of the owner for several; each held at
  /// most a millisecond, `ReplyHold`); 0 sends each at once.
  public var taskReplyBatch = 16
  /// 1: a node forks its workers from a fork server (an interpreter that imported the
  /// worker's modules once; `ForkServer`) once it is ready; 0: spawns each worker.
  public var workerForkServer = 1
  /// 1: owners and workers record their tasks' state changes and send them to the
  /// head (the state API, `summary`, the timeline); 0: nothing is recorded.
  public var enableTaskEvents = 1
  /// How often a process sends its task events to the head (Ray's default).
  public var taskEventsReportIntervalMs = 1000
  /// Task events one process keeps while the head has not taken them; past it the
  /// oldest are dropped and counted (never blocking a task).
  public var taskEventsMaxNumStatusEventsBufferOnWorker = 100_000
  /// Task attempts the head keeps for the state API; past it the oldest are evicted.
  public var taskEventsMaxNumTaskInGcs = 100_000
  /// 1: a driver prints a line several workers repeat within the window once, then
  /// `[repeated Nx across cluster]` (Ray's log deduplication); 0: every line.
  public var dedupLogs = 1
  public var dedupLogsAggWindowMs = 5000
  /// A worker's log file (`<session>/logs/worker-*.out|.err`) is rotated past this size
  /// (Ray's RAY_ROTATION_MAX_BYTES), keeping `log_rotation_backup_count` old ones
  /// (`.1` the newest): a chatty worker fills no disk.
  public var logRotationMaxBytes = 512 * 1024 * 1024
  public var logRotationBackupCount = 5
  /// Bytes a node's runtime-environment cache (unpacked packages, pip virtualenvs) may
  /// hold before the ones no worker uses are deleted, least recently used first (Ray's
  /// per-plugin cache is 10 GB).
  public var runtimeEnvCacheMaxBytes = 10 << 30
  /// An environment no worker has used this long is deleted from a node's cache even
  /// when the cache is within its size.
  public var runtimeEnvCacheTtlS = 3600
  /// Largest package (a zipped working_dir or py_module) the head's package store takes
  /// (Ray: 500 MiB).
  public var runtimeEnvMaxPackageBytes = 500 << 20

  public init() {}

  /// Keys accepted in `_system_config` and as `SWIFTRAY_<UPPER_NAME>`.
  nonisolated(unsafe) public static let keys: [String: WritableKeyPath<Config, Int>] = [  // immutable after init; key paths are not Sendable-annotated
    "max_direct_call_object_size": \.maxDirectCallObjectSize,
    "lease_idle_linger_ms": \.leaseIdleLingerMs,
    "max_tasks_in_flight_per_worker": \.maxTasksInFlightPerWorker,
    "task_pipeline_depth": \.taskPipelineDepth,
    "task_pipeline_below_us": \.taskPipelineBelowUs,
    "max_queued_tasks_per_worker": \.maxQueuedTasksPerWorker,
    "max_pending_lease_requests_per_shape": \.maxPendingLeaseRequestsPerShape,
    "max_pending_lease_requests_per_node": \.maxPendingLeaseRequestsPerNode,
    "infeasible_retry_ms": \.infeasibleRetryMs,
    "maximum_startup_concurrency": \.maximumStartupConcurrency,
    "max_workers_per_node": \.maxWorkersPerNode,
    "health_check_period_ms": \.healthCheckPeriodMs,
    "health_check_timeout_ms": \.healthCheckTimeoutMs,
    "health_check_failure_threshold": \.healthCheckFailureThreshold,
    "raylet_report_resources_period_milliseconds": \.resourceReportPeriodMs,
    "gcs_rpc_server_reconnect_timeout_s": \.gcsRpcServerReconnectTimeoutS,
    "max_lineage_bytes": \.maxLineageBytes,
    "max_kv_bytes": \.maxKvBytes,
    "max_data_plane_frame_bytes": \.maxDataPlaneFrameBytes,
    "max_connections_per_listener": \.maxConnectionsPerListener,
    "connection_handshake_timeout_ms": \.connectionHandshakeTimeoutMs,
    "data_plane_keepalive_ms": \.dataPlaneKeepaliveMs,
    "data_plane_idle_timeout_ms": \.dataPlaneIdleTimeoutMs,
    "grpc_client_keepalive_time_ms": \.grpcClientKeepaliveTimeMs,
    "grpc_client_keepalive_timeout_ms": \.grpcClientKeepaliveTimeoutMs,
    "redis_command_timeout_ms": \.redisCommandTimeoutMs,
    "object_manager_pull_timeout_ms": \.objectManagerPullTimeoutMs,
    "node_manager_rpc_timeout_ms": \.nodeManagerRpcTimeoutMs,
    "task_lanes": \.taskLanes,
    "task_lane_spin_us": \.taskLaneSpinUs,
    "task_reply_batch": \.taskReplyBatch,
    "worker_fork_server": \.workerForkServer,
    "enable_task_events": \.enableTaskEvents,
    "task_events_report_interval_ms": \.taskEventsReportIntervalMs,
    "task_events_max_num_status_events_buffer_on_worker": \.taskEventsMaxNumStatusEventsBufferOnWorker,
    "task_events_max_num_task_in_gcs": \.taskEventsMaxNumTaskInGcs,
    "dedup_logs": \.dedupLogs,
    "dedup_logs_agg_window_ms": \.dedupLogsAggWindowMs,
    "log_rotation_max_bytes": \.logRotationMaxBytes,
    "log_rotation_backup_count": \.logRotationBackupCount,
    "runtime_env_cache_max_bytes": \.runtimeEnvCacheMaxBytes,
    "runtime_env_cache_ttl_s": \.runtimeEnvCacheTtlS,
    "runtime_env_max_package_bytes": \.runtimeEnvMaxPackageBytes,
  ]

  /// Ray's environment variables we read as the same settings.
  static let rayAliases = [("RAY_ROTATION_MAX_BYTES", "log_rotation_max_bytes"),
                           ("RAY_ROTATION_BACKUP_COUNT", "log_rotation_backup_count")]

  /// The values each key accepts; anything else (from a variable, a flag or
  /// `_system_config`) is refused naming the key and the range, before it is used.
  static let ranges: [String: ClosedRange<Int>] = [
    "max_data_plane_frame_bytes": (1 << 20)...(1 << 30),
    "max_kv_bytes": (1 << 20)...(1 << 40),
    "runtime_env_cache_max_bytes": 0...(1 << 50),
    "runtime_env_cache_ttl_s": 0...(365 * 86_400),
    "runtime_env_max_package_bytes": (1 << 10)...(4 << 30),
    "max_connections_per_listener": 16...(1 << 20),
    "connection_handshake_timeout_ms": 100...600_000,
    "data_plane_keepalive_ms": 50...600_000,
    "data_plane_idle_timeout_ms": 200...86_400_000,
    "grpc_client_keepalive_time_ms": 1000...86_400_000,
    "grpc_client_keepalive_timeout_ms": 100...3_600_000,
    "redis_command_timeout_ms": 100...600_000,
    "object_manager_pull_timeout_ms": 100...3_600_000,
    "node_manager_rpc_timeout_ms": 100...3_600_000,
    "max_tasks_in_flight_per_worker": 1...1_000_000,
    "task_pipeline_depth": 1...1024,
    "task_pipeline_below_us": 0...60_000_000,
    "max_queued_tasks_per_worker": 1...100_000_000,
    "max_pending_lease_requests_per_shape": 1...1_000_000,
    "max_pending_lease_requests_per_node": 1...10_000_000,
    "maximum_startup_concurrency": 1...10_000,
    "max_workers_per_node": 1...100_000,
    "health_check_period_ms": 10...86_400_000,
    "health_check_timeout_ms": 10...86_400_000,
    "health_check_failure_threshold": 1...1_000_000,
    "raylet_report_resources_period_milliseconds": 10...3_600_000,
    "lease_idle_linger_ms": 0...86_400_000,
    "infeasible_retry_ms": 1...86_400_000,
    "gcs_rpc_server_reconnect_timeout_s": 1...31_536_000,
    "task_lanes": 0...1,
    "task_lane_spin_us": 0...100_000,
    "task_reply_batch": 0...1024,
    "worker_fork_server": 0...1,
    "enable_task_events": 0...1,
    "task_events_report_interval_ms": 10...3_600_000,
    "task_events_max_num_status_events_buffer_on_worker": 100...100_000_000,
    "task_events_max_num_task_in_gcs": 100...100_000_000,
    "dedup_logs": 0...1,
    "dedup_logs_agg_window_ms": 100...3_600_000,
    "log_rotation_max_bytes": 4096...(1 << 40),
    "log_rotation_backup_count": 0...100,
  ]
  /// The range of keys not named in `ranges` (small enough that a value in
  /// milliseconds times 10^6 still fits in 64 bits).
  static let defaultRange: ClosedRange<Int> = 0...(1 << 40)

  static func checked(_ name: String, _ value: Int, from source: String) throws(SwiftrayError) -> Int {
    let range = ranges[name] ?? defaultRange
    guard range.contains(value) else {
      throw SwiftrayError(.invalidArgument, "\(source) \(name) = \(value) is out of range: it must be in \(range.lowerBound)...\(range.upperBound)")
    }
    return value
  }

  /// The limits on what peers may make this process hold.
  public var networkLimits: NetworkLimits {
    NetworkLimits(maxFrameBytes: maxDataPlaneFrameBytes, maxConnectionsPerListener: maxConnectionsPerListener,
                  handshakeTimeoutMs: connectionHandshakeTimeoutMs, keepAliveMs: dataPlaneKeepaliveMs,
                  idleTimeoutMs: dataPlaneIdleTimeoutMs, grpcKeepaliveTimeMs: grpcClientKeepaliveTimeMs,
                  grpcKeepaliveTimeoutMs: grpcClientKeepaliveTimeoutMs)
  }

  /// Applies `SWIFTRAY_<NAME>` variables, then `overrides`. Unknown keys are an error
  /// naming the known ones, so a typo is never silently ignored.
  public static func resolve(environment: [String: String] = ProcessInfo.processInfo.environment,
                             overrides: [String: Int] = [:]) throws(SwiftrayError) -> Config {
    var c = Config()
    for (name, path) in keys {
      let variable = "SWIFTRAY_" + name.uppercased()
      guard let v = environment[variable] else { continue }
      guard let i = Int(trimmed(v)) else {
        throw SwiftrayError(.invalidArgument, "\(variable)='\(v.prefix(40))' is not an integer")
      }
      c[keyPath: path] = try checked(name, i, from: variable)
    }
    // Ray's own variables for the same settings, when ours are not set.
    for (variable, name) in rayAliases where environment["SWIFTRAY_" + name.uppercased()] == nil {
      guard let v = environment[variable], let path = keys[name] else { continue }
      guard let i = Int(trimmed(v)) else {
        throw SwiftrayError(.invalidArgument, "\(variable)='\(v.prefix(40))' is not an integer")
      }
      c[keyPath: path] = try checked(name, i, from: variable)
    }
    for (name, value) in overrides {
      guard let path = keys[name] else {
        throw SwiftrayError(.invalidArgument,
          "unknown _system_config key '\(name)'; known keys: \(keys.keys.sorted().joined(separator: ", "))")
      }
      c[keyPath: path] = try checked(name, value, from: "_system_config")
    }
    // A connection must carry at least two keep-alives per idle timeout, or a live
    // peer whose answer is a little late would be cut off.
    guard c.dataPlaneIdleTimeoutMs >= 2 * c.dataPlaneKeepaliveMs else {
      throw SwiftrayError(.invalidArgument,
        "data_plane_idle_timeout_ms (\(c.dataPlaneIdleTimeoutMs)) must be at least twice data_plane_keepalive_ms (\(c.dataPlaneKeepaliveMs))")
    }
    // Every process resolves its settings once at start: its listeners and connections
    // take their bounds from here.
    NetworkLimits.install(c.networkLimits)
    return c
  }

  /// `v` without leading and trailing blanks. (Not Foundation's trimming: its first use
  /// in a process loads character tables, a cost every new worker paid.)
  static func trimmed(_ v: String) -> Substring {
    var s = Substring(v)
    while let c = s.first, c == " " || c == "\t" { s.removeFirst() }
    while let c = s.last, c == " " || c == "\t" { s.removeLast() }
    return s
  }

  /// The settings as `name=value` pairs, to hand to processes this one starts.
  public var asEnvironment: [String: String] {
    var env: [String: String] = [:]
    for (name, path) in Self.keys { env["SWIFTRAY_" + name.uppercased()] = String(self[keyPath: path]) }
    return env
  }
}
