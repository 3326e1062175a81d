import DequeModule
import Foundation
import NIOCore
import GRPCCore
import RuntimeProto

/// The state API at the head (DESIGN §13): task events in, `list`/`get`/`summary` and
/// the timeline out, all answered from the head's own tables.
///
/// Threading: gRPC handlers; each reads one table under its lock and builds its answer
/// after.
extension ControlService {
  /// Most events one batch may carry; a process sends more in several.
  public static let maxEventsPerBatch = 10_000
  /// Longest name, error type and error message an event may carry.
  static let maxEventText = 64 * 1024
  /// Most rows one query returns.
  public static let maxStateLimit = 1_000_000
  public static let defaultStateLimit = 100

  public func reportTaskEvents(request: Swiftray_ReportTaskEventsRequest, context: ServerContext) async throws -> Swiftray_ReportTaskEventsReply {
    try await takeTaskEvents(request)
    return Swiftray_ReportTaskEventsReply()
  }

  /// A batch of events, checked whole, then applied: from the RPC, or handed over
  /// directly by a driver in this same process (no encoding, no connection).
  /// `records`: an owner's folded records, handed over as they are by a driver in this
  /// process (`request` then carries its sender, clocks and the rest).
  public func takeTaskEvents(_ request: Swiftray_ReportTaskEventsRequest, records: TaskEventBatch = TaskEventBatch()) async throws {
    try Self.check(request)
    if !request.events.isEmpty || request.dropped > 0 || !records.isEmpty {
      events.withLock { t in
        t.apply(request)
        if !records.isEmpty { t.apply(records, from: request) }
      }
    }
    if !request.objectEvents.isEmpty || request.objectEventsDropped > 0 {
      objectEvents.withLock { $0.apply(node: request.nodeID, request.objectEvents, dropped: request.objectEventsDropped) }
    }
    if !request.metrics.isEmpty || request.metricsDropped > 0 {
      await userMetrics.apply(request.metrics, dropped: request.metricsDropped)
    }
  }

  /// This service owns actors' creation tasks: their end (and the worker's span) goes
  /// into the table when the worker replies, so an actor killed before its worker's
  /// next report still shows its constructor finished.
  func recordCreationEnded(_ spec: Swiftray_TaskSpec, on worker: Swiftray_Address, reply: Swiftray_PushTaskReply, error: String?) {
    guard config.enableTaskEvents == 1 else { return }
    var e = Swiftray_TaskEvent()
    e.taskID = spec.taskID
    e.attempt = spec.attempt
    e.state = (error == nil ? TaskEventState.finished : .failed).rawValue
    e.workerID = worker.workerID
    e.nodeID = worker.nodeID
    e.workerPid = worker.pid
    e.startWallNs = reply.startedWallNs
    e.endWallNs = reply.endedWallNs
    if let error {
      e.errorType = TaskErrorType.execution
      e.errorMessage = String(error.utf8.prefix(Self.maxEventText)) ?? ""
    }
    var batch = Swiftray_ReportTaskEventsRequest()
    batch.wallNowNs = CoreWorker.wallNanos()  // event time 0 = now
    batch.events = [e]
    events.withLock { $0.apply(batch) }
  }

  /// The cluster's tasks, actors and nodes for the head's `/metrics`.
  public func headMetrics() -> HeadMetricsSample {
    var h = HeadMetricsSample()
    (h.tasks, h.eventsDroppedAtSources, h.eventsEvicted) = events.withLock { ($0.stateCounts, $0.droppedAtSources, $0.evicted) }
    let (actors, nodes) = state.withLock { s in
      (s.actors.actors.values.map { ($0.info.state, $0.awaitingArguments, $0.spec.actorCreation.className) }, s.nodes.all)
    }
    for (st, waiting, cls) in actors {
      h.actors[ActorCountKey(state: Self.actorStateName(st, awaitingArguments: waiting), className: cls), default: 0] += 1
    }
    h.deadNodes = nodes.filter(NodeTable.isDead).count
    h.aliveNodes = nodes.filter(\.alive).count
    return h
  }

  /// A batch is checked whole before any of it is taken: sizes and texts in bounds.
  public static func check(_ r: Swiftray_ReportTaskEventsRequest) throws {
    guard r.metrics.count <= UserMetricsBuffer.maxSeries,
      r.metrics.reduce(0, { $0 + $1.observations.count }) <= UserMetricsBuffer.maxObservations
    else {
      throw RPCError(code: .invalidArgument, message: "\(r.metrics.count) metric samples in one batch (at most "
        + "\(UserMetricsBuffer.maxSeries), with at most \(UserMetricsBuffer.maxObservations) observations)")
    }
    for m in r.metrics {
      // Texts in bounds before anything reads them; the definitions are checked at the sink.
      guard m.name.utf8.count <= MetricDefinition.maxName, m.description_p.utf8.count <= MetricDefinition.maxDescription,
        m.tagKeys.count <= MetricDefinition.maxTagKeys, m.tagValues.count <= MetricDefinition.maxTagKeys,
        m.boundaries.count <= MetricDefinition.maxBoundaries
      else { throw RPCError(code: .invalidArgument, message: "a metric sample with a field beyond its bound") }
    }
    guard r.objectEvents.count <= maxEventsPerBatch, r.nodeID.count <= 64,
      r.objectEvents.allSatisfy({ $0.objectID.count <= 64 && $0.peer.utf8.count <= 1024 })
    else {
      throw RPCError(code: .invalidArgument, message: "\(r.objectEvents.count) object events in one batch (at most \(maxEventsPerBatch)), "
        + "or one with a field beyond its bound")
    }
    guard r.events.count <= maxEventsPerBatch, r.infos.count <= maxEventsPerBatch else {
      throw RPCError(code: .invalidArgument, message: "\(r.events.count) task events and \(r.infos.count) descriptions in one batch "
        + "(at most \(maxEventsPerBatch) each)")
    }
    for e in r.events {
      guard e.errorType.utf8.count <= maxEventText, e.errorMessage.utf8.count <= maxEventText, e.taskID.count <= 64,
        e.nodeID.count <= 64, e.workerID.count <= 64, e.parentTaskID.count <= 64
      else { throw RPCError(code: .invalidArgument, message: "a task event with a field beyond its bound") }
    }
    for i in r.infos {
      guard i.name.utf8.count <= maxEventText, i.funcOrClassName.utf8.count <= maxEventText,
        i.requiredResources.quantities.count <= 1024
      else { throw RPCError(code: .invalidArgument, message: "a task description with a field beyond its bound") }
    }
  }

  /// Most bytes of JSON in one streamed message (under gRPC's 4 MiB message limit).
  public static let stateChunkBytes = 1 << 20
  /// Most bytes of JSON a client takes in one answer.
  public static let maxStateAnswerBytes = 1 << 30

  public func listState(request: Swiftray_ListStateRequest, response: RPCWriter<Swiftray_ListStateReply>,
                        context: ServerContext) async throws {
    // Workers are known to their nodes, not to the head: asked first, then answered as any table.
    let fetched = await fetchFromNodes(request)
    var whole = try answer(request, fetched: fetched)
    let json = whole.json
    var offset = 0
    repeat {
      let end = min(offset + Self.stateChunkBytes, json.count)
      whole.json = json.subdata(in: offset..<end)
      try await response.write(whole)
      whole = Swiftray_ListStateReply()
      offset = end
    } while offset < json.count
  }

  /// A state query's answer, streamed in chunks; reassembled, bounded by `maxStateAnswerBytes`.
  public static func fetchState(_ client: any Swiftray_ControlService.ClientProtocol, _ req: Swiftray_ListStateRequest,
                                options: CallOptions = .defaults) async throws -> Swiftray_ListStateReply {
    try await client.listState(req, options: options) { response in
      var whole: Swiftray_ListStateReply?
      var json = Data()
      for try await part in response.messages {
        guard json.count + part.json.count <= maxStateAnswerBytes else {
          throw RPCError(code: .resourceExhausted, message: "the head's answer passed \(maxStateAnswerBytes >> 20) MiB: ask for fewer rows (--limit)")
        }
        json.append(part.json)
        if whole == nil { whole = part }
      }
      var out = whole ?? Swiftray_ListStateReply()
      out.json = json
      return out
    }
  }

  /// The rows (and warnings) of a table the nodes and processes hold (workers, objects),
  /// asked of them; nothing for the head's own tables.
  func fetchFromNodes(_ request: Swiftray_ListStateRequest) async -> ([StateRow], [String]) {
    switch StateQuery.Kind(rawValue: request.kind) {
    case .workers?: return await workerRows()
    case .objects?, .summaryObjects?:
      // Each process lists up to the limit (filters apply after); a summary counts everything.
      let limit = request.kind == StateQuery.Kind.summaryObjects.rawValue ? ObjectListing.maxRows
        : request.limit <= 0 ? ControlService.defaultStateLimit : Int(request.limit)
      return await objectRows(limit: request.filters.isEmpty ? limit : ObjectListing.maxRows)
    default: return ([], [])
    }
  }

  /// `fetched`: the rows (and warnings) of a table gathered from the nodes (`fetchFromNodes`).
  func answer(_ request: Swiftray_ListStateRequest, fetched: ([StateRow], [String]) = ([], [])) throws -> Swiftray_ListStateReply {
    let q = try StateQuery(request)
    var reply = Swiftray_ListStateReply()
    reply.warnings = fetched.1
    let rows: (rows: [StateValue], total: Int)
    switch q.kind {
    case .tasks:
      // A copy (the table's storage is shared until the next batch changes it): rows are
      // built outside the lock, so a large answer never holds up the batches.
      rows = events.withLock { $0 }.rows(filters: q.filters, limit: q.limit, detail: q.detail)
    case .summaryTasks:
      rows = ([events.withLock { $0 }.summary(filters: q.filters)], 1)
    case .timeline:
      let ips = Dictionary(state.withLock { $0.nodes.all }.map { ($0.nodeID, $0.ipAddress) }, uniquingKeysWith: { a, _ in a })
      let t = events.withLock { $0 }.timeline(nodeIP: { ips[$0] ?? "?" }, objects: objectEvents.withLock { $0 })
      rows = ([t], 1)
    case .actors, .summaryActors:
      let all = state.withLock { s in s.actors.actors.values.map { ($0.info, $0.spec, $0.awaitingArguments) } }
      let table = all.sorted { $0.0.actorID.lexicographicallyPrecedes($1.0.actorID) }.map { Self.actorRow($0.0, spec: $0.1, awaitingArguments: $0.2) }
      rows = q.kind == .actors ? q.select(table) : ([Self.actorSummary(table.filter { r in StateFilter.all(q.filters) { r[$0] } })], 1)
    case .nodes:
      let (nodes, head) = (state.withLock { $0.nodes.all }, headNode.withLock { $0 })
      rows = q.select(nodes.map { Self.nodeRow($0, head: head) })
    case .placementGroups:
      rows = q.select(state.withLock { $0.groups.all }.map { Self.groupRow($0) })
    case .workers, .objects:
      rows = q.select(fetched.0)
    case .clusterEvents:
      // Copies of the four logs under the lock; merged and built after.
      let logs = state.withLock { s in [s.actors.lifecycle, s.groups.lifecycle, s.nodes.lifecycle, s.jobs.lifecycle] }
      rows = q.select(LifecycleLog.rows(logs))
    case .objectEvents:
      let ips = Dictionary(state.withLock { $0.nodes.all }.map { ($0.nodeID, $0.ipAddress) }, uniquingKeysWith: { a, _ in a })
      let table = objectEvents.withLock { $0 }
      // Newest first, as tasks.
      rows = q.select(table.entries.reversed().map { ObjectEventTable.row($0) { ips[$0] ?? "?" } })
    case .summaryObjects:
      rows = ([Self.objectSummary(fetched.0.filter { r in StateFilter.all(q.filters) { r[$0] } })], 1)
    case .jobs:
      let t = state.withLock { $0.jobs }
      rows = q.select(t.jobs.values.sorted { $0.id.value < $1.id.value }.map { StateRow(t.row($0)) })
    }
    let dropped = events.withLock { ($0.evicted, $0.droppedAtSources) }
    reply.json = q.kind == .summaryTasks || q.kind == .summaryActors || q.kind == .summaryObjects || q.kind == .timeline
      ? Data((rows.rows.first ?? .null).json.utf8) : StateJSON.array(rows.rows)
    reply.total = Int64(rows.total)
    reply.returned = Int64(rows.rows.count)
    reply.droppedEvents = dropped.0 &+ dropped.1
    if q.kind.readsTaskEvents, dropped.0 > 0 || dropped.1 > 0 {
      reply.warnings.append("\(dropped.1) task events were dropped by processes whose buffers were full and \(dropped.0) task "
        + "attempts were evicted at the head (task_events_max_num_task_in_gcs): counts may be short")
    }
    return reply
  }
}

/// One row of a table as ordered columns, with lookup by column for filters.
public struct StateRow: Sendable {
  public var columns: [(String, StateValue)]
  public init(_ columns: [(String, StateValue)]) { self.columns = columns }
  public subscript(_ key: String) -> StateValue { columns.first { $0.0 == key }?.1 ?? .null }
}

/// A checked `ListStateRequest`: a known kind, filters on its columns with `=`/`!=`,
/// a limit in range.
public struct StateQuery: Sendable {
  public enum Kind: String, CaseIterable, Sendable {
    case tasks, actors, nodes, jobs, timeline, workers, objects
    case objectEvents = "object-events"
    case clusterEvents = "cluster-events"
    case placementGroups = "placement-groups"
    case summaryTasks = "summary-tasks"
    case summaryActors = "summary-actors"
    case summaryObjects = "summary-objects"

    public var readsTaskEvents: Bool { self == .tasks || self == .summaryTasks || self == .timeline }
    public var columns: [String] {
      switch self {
      case .tasks, .summaryTasks: TaskEventTable.columns + TaskEventTable.detailColumns
      case .actors, .summaryActors: ControlService.actorColumns
      case .nodes: ControlService.nodeColumns
      case .placementGroups: ControlService.groupColumns
      case .jobs: JobTable.columns
      case .workers: ControlService.workerColumns
      case .objects, .summaryObjects: ControlService.objectColumns
      case .objectEvents: ObjectEventTable.columns
      case .clusterEvents: LifecycleLog.columns
      case .timeline: []
      }
    }
  }

  public let kind: Kind
  public let filters: [StateFilter]
  public let limit: Int
  public let detail: Bool

  public init(_ r: Swiftray_ListStateRequest) throws {
    guard let kind = Kind(rawValue: r.kind) else {
      throw RPCError(code: .invalidArgument, message: "unknown state kind '\(r.kind.prefix(64))'; known: "
        + Kind.allCases.map(\.rawValue).joined(separator: ", "))
    }
    guard r.limit >= 0, r.limit <= ControlService.maxStateLimit else {
      throw RPCError(code: .invalidArgument, message: "limit \(r.limit) is out of range: 1 ... \(ControlService.maxStateLimit)")
    }
    guard r.filters.count <= 64 else { throw RPCError(code: .invalidArgument, message: "\(r.filters.count) filters (at most 64)") }
    self.filters = try r.filters.map { f in
      guard kind.columns.contains(f.key) else {
        throw RPCError(code: .invalidArgument, message: "cannot filter \(kind.rawValue) on '\(f.key.prefix(64))'; "
          + "the columns are: \(kind.columns.joined(separator: ", "))")
      }
      guard let op = StateFilter.Op(rawValue: f.op) else {
        throw RPCError(code: .invalidArgument, message: "unknown filter operator '\(f.op.prefix(8))': use = or !=")
      }
      guard f.value.utf8.count <= 4096 else { throw RPCError(code: .invalidArgument, message: "a filter value beyond 4096 bytes") }
      return StateFilter(key: f.key, op: op, value: f.value)
    }
    self.kind = kind
    self.limit = r.limit == 0 ? ControlService.defaultStateLimit : Int(r.limit)
    self.detail = r.detail
  }

  /// The rows matching every filter, at most `limit`, and how many matched.
  func select(_ rows: [StateRow]) -> (rows: [StateValue], total: Int) {
    let matched = rows.filter { r in StateFilter.all(filters) { r[$0] } }
    return (matched.prefix(limit).map { .object($0.columns) }, matched.count)
  }
}

extension ControlService {
  static let actorColumns = ["actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace",
                             "is_detached", "num_restarts", "max_restarts", "death_cause", "required_resources",
                             "placement_group_id", "worker_id"]
  static let nodeColumns = ["node_id", "node_ip", "is_head_node", "state", "state_message", "node_name",
                            "resources_total", "resources_available", "start_time_ms", "labels",
                            "object_store_used_memory", "object_store_total_memory"]
  static let groupColumns = ["placement_group_id", "name", "creator_job_id", "state", "strategy", "is_detached",
                             "state_message", "bundles"]

  /// Ray's name of an actor's state.
  static func actorStateName(_ s: Swiftray_ActorInfo.State, awaitingArguments: Bool) -> String {
    switch s {
    case .pending: awaitingArguments ? "DEPENDENCIES_UNREADY" : "PENDING_CREATION"
    case .alive: "ALIVE"
    case .restarting: "RESTARTING"
    case .dead: "DEAD"
    case .UNRECOGNIZED: "UNKNOWN"
    }
  }

  static func actorRow(_ i: Swiftray_ActorInfo, spec: Swiftray_TaskSpec, awaitingArguments: Bool) -> StateRow {
    let state = actorStateName(i.state, awaitingArguments: awaitingArguments)
    let placement = spec.actorCreation.hasPlacementResources ? spec.actorCreation.placementResources : spec.resources
    return StateRow([
      ("actor_id", StateValue.hex(i.actorID)), ("class_name", .string(spec.actorCreation.className)), ("state", .string(state)),
      ("job_id", StateValue.hex(spec.jobID)), ("name", .string(i.name)),
      ("node_id", i.state == .alive ? StateValue.hex(i.address.nodeID) : .null),
      ("pid", i.state == .alive && i.pid > 0 ? .int(i.pid) : .null), ("ray_namespace", .string(i.namespace)),
      ("is_detached", .bool(i.detached)), ("num_restarts", .int(Int64(i.numRestarts))),
      ("max_restarts", .int(Int64(i.maxRestarts))),
      ("death_cause", i.state == .dead ? .object([("type", .string(String(describing: i.deathCause).uppercased())),
                                                  ("message", .string(i.detail))]) : .null),
      ("required_resources", resources(placement)),
      ("placement_group_id", spec.strategy.kind == .placementGroup ? StateValue.hex(spec.strategy.placementGroupID) : .null),
      ("worker_id", i.state == .alive ? StateValue.hex(i.address.workerID) : .null),
    ])
  }

  static let workerColumns = ["worker_id", "is_alive", "worker_type", "exit_type", "exit_detail", "pid", "node_id", "ip"]

  /// Every live node's workers and drivers, and the recent exits each keeps: asked of
  /// all nodes at once, each within node_manager_rpc_timeout_ms; a node that does not
  /// answer is named in a warning.
  func workerRows() async -> ([StateRow], [String]) {
    var rows: [StateRow] = []
    var warnings: [String] = []
    for (n, reply) in await nodeWorkers() {
      guard let reply else {
        warnings.append("node \(Hex.encode(n.nodeID)) (\(n.ipAddress)) did not answer: its workers are missing")
        continue
      }
      let node = StateValue.hex(n.nodeID), ip = StateValue.string(n.ipAddress)
      for w in reply.workers.sorted(by: { $0.pid < $1.pid }) {
        rows.append(StateRow([("worker_id", .hex(w.workerID)), ("is_alive", .bool(true)),
                              ("worker_type", .string(w.isDriver ? "DRIVER" : "WORKER")), ("exit_type", .null),
                              ("exit_detail", .null), ("pid", .int(Int64(w.pid))), ("node_id", node), ("ip", ip)]))
      }
      for e in reply.exits.sorted(by: { $0.pid < $1.pid }) {
        rows.append(StateRow([("worker_id", .hex(e.workerID)), ("is_alive", .bool(false)), ("worker_type", .string("WORKER")),
                              ("exit_type", .string(e.intended ? "INTENDED_SYSTEM_EXIT" : "SYSTEM_ERROR")),
                              ("exit_detail", .string(e.detail)), ("pid", .int(Int64(e.pid))), ("node_id", node), ("ip", ip)]))
      }
    }
    return (rows, warnings)
  }

  /// Every live node's answer about its workers (nil: it did not answer in time), in node id order.
  func nodeWorkers() async -> [(Swiftray_NodeInfo, Swiftray_GetNodeStatsReply?)] {
    let nodes = state.withLock { $0.nodes.all }.filter(\.alive)
    let options = nodeCallOptions
    let answers = await withTaskGroup(of: (Swiftray_NodeInfo, Swiftray_GetNodeStatsReply?).self) { g in
      for n in nodes {
        let c = nodeClient(Self.address(of: n))
        g.addTask {
          guard let c else { return (n, nil) }
          let r = try? await c.nodeManagerService.getNodeStats(Swiftray_GetNodeStatsRequest.with { $0.withWorkers = true },
                                                                                                options: options)
          return (n, r)
        }
      }
      var all: [(Swiftray_NodeInfo, Swiftray_GetNodeStatsReply?)] = []
      for await a in g { all.append(a) }
      return all
    }
    return answers.sorted { $0.0.nodeID.lexicographicallyPrecedes($1.0.nodeID) }
  }

  static let objectColumns = ["object_id", "object_size", "task_status", "reference_type", "call_site", "type", "pid", "ip",
                              "node_id", "worker_id", "is_owner", "num_borrowers", "in_object_store"]

  /// The references every live process (worker or driver) holds, asked of each at once
  /// on its data-plane address within node_manager_rpc_timeout_ms; at most `limit` from
  /// each. Processes or nodes that do not answer are named in warnings.
  func objectRows(limit: Int) async -> ([StateRow], [String]) {
    var warnings: [String] = []
    var asks: [(Swiftray_NodeInfo, Swiftray_WorkerProcess, Endpoint)] = []
    for (n, reply) in await nodeWorkers() {
      guard let reply else {
        warnings.append("node \(Hex.encode(n.nodeID)) (\(n.ipAddress)) did not answer: its processes' objects are missing")
        continue
      }
      for w in reply.workers where !w.endpoint.isEmpty {
        if let ep = Endpoint(w.endpoint) { asks.append((n, w, ep)) }
      }
    }
    let deadline = TimeAmount.milliseconds(Int64(config.nodeManagerRpcTimeoutMs))
    let request = Swiftray_DataFrame.OneOf_Body.listObjects(.with { $0.limit = Int32(clamping: min(limit, ObjectListing.maxRows)) })
    let pool = self.pool
    let answers = await withTaskGroup(of: (Swiftray_NodeInfo, Swiftray_WorkerProcess, Result<Swiftray_ListObjectsReply, SwiftrayError>).self) { g in
      for (n, w, ep) in asks {
        g.addTask {
          let r: Result<Swiftray_ListObjectsReply, SwiftrayError> = await withCheckedContinuation { c in
            pool.requestWithPayload(ep, request, deadline: deadline) { result in
              switch result {
              case .success((let frame, _)):
                if case .listObjectsReply(let reply)? = frame.body { c.resume(returning: .success(reply)) } else {
                  c.resume(returning: .failure(SwiftrayError(.system, "\(ep) answered \(String(describing: frame.body).prefix(200))")))
                }
              case .failure(let e): c.resume(returning: .failure(e))
              }
            }
          }
          return (n, w, r)
        }
      }
      var all: [(Swiftray_NodeInfo, Swiftray_WorkerProcess, Result<Swiftray_ListObjectsReply, SwiftrayError>)] = []
      for await a in g { all.append(a) }
      return all
    }
    var rows: [StateRow] = []
    for (n, w, r) in answers.sorted(by: { (Hex.encode($0.0.nodeID), $0.1.pid) < (Hex.encode($1.0.nodeID), $1.1.pid) }) {
      switch r {
      case .failure(let e):
        // A worker that exited meanwhile has nothing to list; others are worth a word.
        warnings.append("\(w.isDriver ? "driver" : "worker") pid \(w.pid) on node \(Hex.encode(n.nodeID).prefix(12)) did not list its objects: \(e.message)")
      case .success(let reply):
        if reply.total > Int64(reply.rows.count) {
          warnings.append("pid \(w.pid) on node \(Hex.encode(n.nodeID).prefix(12)) holds \(reply.total) references; \(reply.rows.count) listed")
        }
        let node = StateValue.hex(n.nodeID), ip = StateValue.string(n.ipAddress), worker = StateValue.hex(w.workerID)
        let type = StateValue.string(w.isDriver ? "DRIVER" : "WORKER")
        for o in reply.rows {
          rows.append(StateRow([
            ("object_id", .hex(o.objectID)), ("object_size", o.size >= 0 ? .int(o.size) : .null), ("task_status", .string(o.taskStatus)),
            ("reference_type", .string(o.referenceType)), ("call_site", .string("disabled")), ("type", type),
            ("pid", .int(Int64(w.pid))), ("ip", ip), ("node_id", node), ("worker_id", worker), ("is_owner", .bool(o.owned)),
            ("num_borrowers", .int(Int64(o.borrowers))), ("in_object_store", .bool(o.inStore)),
          ]))
        }
      }
    }
    return (rows, warnings)
  }

  /// Ray's `summarize_objects` (call sites are not recorded: one group, "disabled").
  static func objectSummary(_ rows: [StateRow]) -> StateValue {
    var size: Int64 = 0
    var states: [String: Int64] = [:], types: [String: Int64] = [:]
    var workers = Set<String>(), nodes = Set<String>()
    for r in rows {
      if case .int(let b) = r["object_size"] { size &+= b }
      states[r["task_status"].filterText, default: 0] += 1
      types[r["reference_type"].filterText, default: 0] += 1
      workers.insert(r["worker_id"].filterText)
      nodes.insert(r["node_id"].filterText)
    }
    let mb = Double(size) / 1_048_576
    let counts = { (d: [String: Int64]) in StateValue.object(d.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) }) }
    let group: StateValue = .object([
      ("total_objects", .int(Int64(rows.count))), ("total_size_mb", .double(mb)), ("total_num_workers", .int(Int64(workers.count))),
      ("total_num_nodes", .int(Int64(nodes.count))), ("task_state_counts", counts(states)), ("ref_type_counts", counts(types)),
    ])
    return .object([("cluster", .object([
      ("summary", .object(rows.isEmpty ? [] : [("disabled", group)])), ("total_objects", .int(Int64(rows.count))),
      ("total_size_mb", .double(mb)), ("callsite_enabled", .bool(false)), ("summary_by", .string("callsite")),
    ]))])
  }

  /// The live node with this id (hex), and a client of its NodeManager.
  func nodeManager(hex: String) throws -> (Swiftray_NodeInfo, ControlPlane.Connection) {
    let wanted = hex.lowercased()
    guard let n = state.withLock({ $0.nodes.all }).first(where: { Hex.encode($0.nodeID) == wanted }) else {
      throw RPCError(code: .notFound, message: "no node with id '\(hex.prefix(64))' (`swiftray list nodes` shows them)")
    }
    guard n.alive, let c = nodeClient(Self.address(of: n)) else {
      throw RPCError(code: .unavailable, message: "node \(wanted) is not alive: its logs are on its machine, in its session's logs folder")
    }
    return (n, c)
  }

  /// The log files of a node (newest first), for the dashboard.
  public func logFiles(node hex: String) async throws -> [Swiftray_LogFileInfo] {
    let (_, c) = try nodeManager(hex: hex)
    return try await c.nodeManagerService.listLogs(Swiftray_ListLogsRequest(), options: nodeCallOptions).files
  }

  /// The last `lines` lines of a node's log file (at most NodeLogs.maxTailBytes), for the dashboard.
  public func logTail(node hex: String, name: String, lines: Int) async throws -> Data {
    let (_, c) = try nodeManager(hex: hex)
    var req = Swiftray_GetLogRequest()
    req.name = name
    req.tailLines = Int32(clamping: lines)
    return try await c.nodeManagerService.getLog(req, options: nodeCallOptions) { response in
      var out = Data()
      for try await chunk in response.messages {
        guard out.count + chunk.data.count <= NodeLogs.maxTailBytes + NodeLogs.maxChunk else { break }
        out += chunk.data
      }
      return out
    }
  }

  /// Ray's `summarize_actors`: per class, a count per state.
  static func actorSummary(_ rows: [StateRow]) -> StateValue {
    var byClass: [String: [String: Int64]] = [:]
    for r in rows { byClass[r["class_name"].filterText, default: [:]][r["state"].filterText, default: 0] += 1 }
    let summary: [(String, StateValue)] = byClass.sorted { $0.key < $1.key }.map { c in
      (c.key, .object([("class_name", .string(c.key)),
                       ("state_counts", .object(c.value.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) }))]))
    }
    return .object([("cluster", .object([("summary", .object(summary)), ("total_actors", .int(Int64(rows.count))),
                                         ("summary_by", .string("class"))]))])
  }

  static func resources(_ shape: Swiftray_ResourceShape) -> StateValue {
    .object(ResourceSet(proto: shape).asUnits.sorted { $0.key < $1.key }.map { ($0.key, .double($0.value)) })
  }

  static func nodeRow(_ n: Swiftray_NodeInfo, head: Data) -> StateRow {
    StateRow([
      ("node_id", StateValue.hex(n.nodeID)), ("node_ip", .string(n.ipAddress)), ("is_head_node", .bool(!head.isEmpty && n.nodeID == head)),
      ("state", .string(NodeTable.isDead(n) ? "DEAD" : "ALIVE")), ("state_message", n.deathDetail.isEmpty ? .null : .string(n.deathDetail)),
      ("node_name", .string(n.ipAddress)), ("resources_total", resources(n.total)),
      ("resources_available", resources(n.available)), ("start_time_ms", .int(n.startTimeMs)), ("labels", .object(n.labels.sorted { $0.key < $1.key }.map { ($0.key, StateValue.string($0.value)) })),
      ("object_store_used_memory", .int(Int64(clamping: n.objectStoreUsed))),
      ("object_store_total_memory", .int(Int64(clamping: n.objectStoreCapacity))),
    ])
  }

  static func groupRow(_ g: Swiftray_PlacementGroupInfo) -> StateRow {
    let state: String
    switch g.state {
    case .pending: state = "PENDING"
    case .created: state = "CREATED"
    case .removed: state = "REMOVED"
    case .rescheduling: state = "RESCHEDULING"
    case .UNRECOGNIZED: state = "UNKNOWN"
    }
    let bundles: [StateValue] = g.bundles.enumerated().map { i, b in
      .object([("bundle_id", .int(Int64(i))),
               ("node_id", i < g.bundleNodes.count ? StateValue.hex(g.bundleNodes[i]) : .null),
               ("unit_resources", resources(b))])
    }
    return StateRow([
      ("placement_group_id", StateValue.hex(g.placementGroupID)), ("name", .string(g.name)),
      ("creator_job_id", StateValue.hex(g.creatorJobID)), ("state", .string(state)), ("strategy", .string(g.strategy)),
      ("is_detached", .bool(g.detached)), ("state_message", g.detail.isEmpty ? .null : .string(g.detail)),
      ("bundles", .array(bundles)),
    ])
  }
}

extension ControlService {
  static func wallMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
}
