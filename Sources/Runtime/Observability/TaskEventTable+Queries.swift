import Foundation
import RuntimeProto

/// The state API's views of the task table: rows (`list tasks`, `get task`), the
/// summary by function, and the timeline.
extension TaskEventTable {
  /// Columns of `list tasks`, in Ray's order; `detailColumns` are added by `--detail`.
  public static let columns = ["task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type",
                               "func_or_class_name", "parent_task_id", "node_id", "worker_id", "worker_pid", "error_type"]
  public static let detailColumns = ["error_message", "required_resources", "placement_group_id", "creation_time_ms",
                                     "start_time_ms", "end_time_ms", "arg_bytes", "return_bytes"]

  /// Rows matching every filter, newest first, at most `limit`; and how many matched.
  /// A filter on an unknown column is refused by the caller (`StateQuery`).
  public func rows(filters: [StateFilter], limit: Int, detail: Bool) -> (rows: [StateValue], total: Int) {
    var out: [StateValue] = []
    var total = 0
    let columns = detail ? Self.columns + Self.detailColumns : Self.columns
    for (key, r) in rows.reversed() {
      guard StateFilter.all(filters, { r.field($0, key) }) else { continue }
      total += 1
      if out.count < limit { out.append(.object(columns.map { ($0, r.field($0, key)) })) }
    }
    return (out, total)
  }

  /// Ray's `summarize_tasks`: per function or class name, its type and a count per state.
  public func summary(filters: [StateFilter]) -> StateValue {
    var byName: [String: (type: String, counts: [String: Int64])] = [:]
    var names: [String] = []
    var total: Int64 = 0, actorTasks: Int64 = 0, actorsScheduled: Int64 = 0
    for (key, r) in rows {
      guard StateFilter.all(filters, { r.field($0, key) }) else { continue }
      let name = r.info?.funcOrClassName ?? "?"
      let type = r.info?.type ?? .normalTask
      if byName[name] == nil { names.append(name); byName[name] = (type.rayName, [:]) }
      byName[name]!.counts[r.state.rayName, default: 0] += 1
      switch type {
      case .normalTask: total += 1
      case .actorTask: actorTasks += 1
      case .actorCreationTask: actorsScheduled += 1
      }
    }
    let summary: [(String, StateValue)] = names.map { n in
      let e = byName[n]!
      let counts: [(String, StateValue)] = e.counts.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) }
      return (n, .object([("func_or_class_name", .string(n)), ("type", .string(e.type)), ("state_counts", .object(counts))]))
    }
    return .object([("cluster", .object([
      ("summary", .object(summary)), ("total_tasks", .int(total)), ("total_actor_tasks", .int(actorTasks)),
      ("total_actor_scheduled", .int(actorsScheduled)), ("summary_by", .string("func_name")),
    ]))])
  }

  /// A Chrome trace (the Trace Event Format `chrome://tracing` and Perfetto read): a
  /// process per node, a thread per worker (its pid), a complete event per attempt
  /// that ran, with its name, ids and bytes in and out. `nodeIP` names a node.
  /// `objects`: the nodes' object events, whose pulls, spills and restores become spans
  /// on a row of each node's process.
  public func timeline(nodeIP: (Data) -> String, objects: ObjectEventTable = ObjectEventTable(capacity: 1)) -> StateValue {
    var nodes: [UniqueID: Int64] = [:]
    var threads: Set<[Int64]> = []
    var events: [StateValue] = []
    // A node's trace process, named on first use.
    func pid(of node: UniqueID) -> Int64 {
      if let n = nodes[node] { return n }
      let pid = Int64(nodes.count + 1)
      nodes[node] = pid
      events.append(.object([("name", .string("process_name")), ("ph", .string("M")), ("pid", .int(pid)),
                             ("args", .object([("name", .string("Node \(nodeIP(Data(node.binary))) (\(node.hex.prefix(8)))"))]))]))
      return pid
    }
    for (key, r) in rows {
      guard let p = r.executor ?? r.assigned, r.started != 0 else { continue }
      let pid = pid(of: p.node)
      let tid = Int64(p.pid)
      if threads.insert([pid, tid]).inserted {
        events.append(.object([("name", .string("thread_name")), ("ph", .string("M")), ("pid", .int(pid)), ("tid", .int(tid)),
                               ("args", .object([("name", .string("\(p.isDriver ? "driver" : "worker") \(p.worker.hex.prefix(12)) (pid \(p.pid))"))]))]))
      }
      let end = r.ended > r.started ? r.ended : r.started
      let name = r.info?.name ?? "?"
      let type: TaskEventType = r.info?.type ?? .normalTask
      let args: [(String, StateValue)] = [
        ("task_id", .string(key.task.hex)), ("attempt_number", .int(Int64(key.attempt))),
        ("state", .string(r.state.rayName)), ("type", .string(type.rayName)),
        ("job_id", StateValue.hex(r.info?.job ?? Data())), ("actor_id", StateValue.hex(r.info?.actor ?? Data())),
        ("worker_id", .string(p.worker.hex)), ("node_id", .string(p.node.hex)),
        ("arg_bytes", .int(Int64(clamping: r.argBytes))), ("return_bytes", .int(Int64(clamping: r.returnBytes))),
      ]
      let span: [(String, StateValue)] = [
        ("cat", .string("task::\(name)")), ("name", .string(name)), ("ph", .string("X")),
        ("pid", .int(pid)), ("tid", .int(tid)),
        ("ts", .double(Double(r.started) / 1000)), ("dur", .double(Double(end - r.started) / 1000)),
        ("args", .object(args)),
      ]
      events.append(.object(span))
    }
    let spans = objects.timeline { node in UniqueID(binary: node).map { pid(of: $0) } ?? 0 }
    return .array(events + spans)
  }
}

extension TaskEventTable.Record {
  /// One column's value (filters and rows read the same).
  func field(_ name: String, _ key: TaskEventTable.Key) -> StateValue {
    switch name {
    case "task_id": .string(key.task.hex)
    case "attempt_number": .int(Int64(key.attempt))
    case "name": info.map { .string($0.name) } ?? .null
    case "state": .string(state.rayName)
    case "job_id": StateValue.hex(info?.job ?? Data(JobID(UInt32(truncatingIfNeeded: key.task.job)).binary))
    case "actor_id": StateValue.hex(info?.actor ?? Data())
    case "type": .string((info?.type ?? .normalTask).rayName)
    case "func_or_class_name": info.map { .string($0.funcOrClassName) } ?? .null
    case "parent_task_id": parent.map { .string($0.hex) } ?? .null
    case "node_id": (executor ?? assigned).map { .string($0.node.hex) } ?? .null
    case "worker_id": (executor ?? assigned).map { .string($0.worker.hex) } ?? .null
    case "worker_pid": (executor ?? assigned).flatMap { $0.pid > 0 ? .int(Int64($0.pid)) : nil } ?? .null
    case "error_type": failure.map { .string($0.type) } ?? .null
    case "error_message": failure.map { .string($0.message) } ?? .null
    case "required_resources": .object((info?.resources ?? []).map { ($0.0, .double($0.1)) })
    case "placement_group_id": StateValue.hex(info?.placementGroup ?? Data())
    case "creation_time_ms": Self.ms(created)
    case "start_time_ms": Self.ms(started)
    case "end_time_ms": Self.ms(ended)
    case "arg_bytes": .int(Int64(clamping: argBytes))
    case "return_bytes": .int(Int64(clamping: returnBytes))
    default: .null
    }
  }

  static func ms(_ wallNanos: UInt64) -> StateValue { wallNanos == 0 ? .null : .int(Int64(wallNanos / 1_000_000)) }
}
