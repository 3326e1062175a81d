import ArgumentParser
import Foundation
import GRPCCore
import NIOPosix
import Runtime
import RuntimeProto

/// The cluster a CLI command asks: `--address` HOST:PORT of its head, or a session
/// directory; by default the newest running one on this machine.
struct ClusterTarget {
  let control: Endpoint
  let session: String?

  init(_ address: String?) throws {
    if let a = address, let ep = Start.endpoint(a), !FileManager.default.fileExists(atPath: a) {
      control = ep
      session = nil
    } else if let s = address ?? LocalCluster.newestLiveSession() {
      session = s
      control = LocalCluster.controlEndpoint(session: s)
    } else {
      print("No running swiftray cluster found on this machine; give --address=HOST:PORT.")
      throw ExitCode(1)
    }
  }

  /// One state query of the head, bounded; a refused query exits with the head's words.
  func query(_ req: Swiftray_ListStateRequest) throws -> Swiftray_ListStateReply {
    let auth = try ClusterAuth.required(for: "ask the cluster at \(control) for its state", session: session)
    let c = try ControlPlane.connect(control, group: .singletonMultiThreadedEventLoopGroup, auth: auth)
    defer { c.shutdown() }
    let control = control
    do {
      return try blockingAwait(timeout: .seconds(60)) {
        try await ControlService.fetchState(Swiftray_ControlService.Client(wrapping: c.client), req)
      }
    } catch let e as RPCError where e.code == .invalidArgument {
      throw ValidationError(e.message)
    } catch {
      throw ValidationError(ControlPlane.error(error, calling: "ListState", at: control).message)
    }
  }
}

extension StateFormat: ExpressibleByArgument {}

/// `--filter KEY=VALUE` / `KEY!=VALUE`, as Ray's CLI takes them.
func stateFilters(_ texts: [String]) throws -> [Swiftray_StateFilter] {
  try texts.map { t in
    var f = Swiftray_StateFilter()
    if let r = t.range(of: "!=") {
      f.key = String(t[..<r.lowerBound]); f.op = "!="; f.value = String(t[r.upperBound...])
    } else if let r = t.range(of: "=") {
      f.key = String(t[..<r.lowerBound]); f.op = "="; f.value = String(t[r.upperBound...])
    } else {
      throw ValidationError("--filter \(t): write KEY=VALUE or KEY!=VALUE (e.g. --filter state=RUNNING)")
    }
    f.key = f.key.trimmingCharacters(in: .whitespaces)
    f.value = f.value.trimmingCharacters(in: .whitespaces)
    return f
  }
}

enum StateKind: String, ExpressibleByArgument, CaseIterable {
  case tasks, actors, nodes, jobs, workers, objects
  case objectEvents = "object-events"
  case clusterEvents = "cluster-events"
  case placementGroups = "placement-groups"
}

struct ListState: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "list", abstract: "List the cluster's tasks, actors, objects, nodes, workers, jobs or placement groups (Ray's `ray list`).")
  @Argument(help: "tasks | actors | objects | object-events | cluster-events | nodes | workers | jobs | placement-groups")
  var kind: StateKind
  @Option(name: .long, help: "KEY=VALUE or KEY!=VALUE; repeat to require several (e.g. --filter state=RUNNING).")
  var filter: [String] = []
  @Option(help: "Most rows to print (default 100).")
  var limit: Int = 100
  @Flag(help: "Every column (YAML unless --format says otherwise).")
  var detail = false
  @Option(help: "table | json | yaml")
  var format: StateFormat?
  @Option(help: "The cluster: HOST:PORT of its head, or a session directory (default: the newest on this machine).")
  var address: String?

  func run() throws {
    guard (1...ControlService.maxStateLimit).contains(limit) else {
      throw ValidationError("--limit must be 1 ... \(ControlService.maxStateLimit)")
    }
    var req = Swiftray_ListStateRequest()
    req.kind = kind.rawValue
    req.filters = try stateFilters(filter)
    req.limit = Int32(limit)
    req.detail = detail
    let reply = try ClusterTarget(address).query(req)
    guard case .array(let rows)? = StateJSON.parse(reply.json) else { throw ValidationError("the head's answer is not a JSON list") }
    let format = format ?? (detail ? .yaml : .table)
    var out = format.render(rows)
    if format == .table {
      out = "Total: \(reply.total)\n\n" + (rows.isEmpty ? "(no \(kind.rawValue))\n" : out)
    }
    FileHandle.standardOutput.write(Data(out.utf8))
    if reply.total > reply.returned {
      FileHandle.standardError.write(Data("(\(reply.returned) of \(reply.total) shown; raise --limit to see more)\n".utf8))
    }
    for w in reply.warnings { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
  }
}

struct GetState: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "get", abstract: "Show one task (every attempt), actor, node, worker, job or placement group by id (Ray's `ray get`).")
  @Argument(help: "task | actor | object | node | worker | job | placement-group")
  var kind: String
  @Argument(help: "Its id (hex).")
  var id: String
  @Option(help: "table | json | yaml (default yaml)")
  var format: StateFormat = .yaml
  @Option(help: "The cluster: HOST:PORT of its head, or a session directory (default: the newest on this machine).")
  var address: String?

  static let keys = ["task": ("tasks", "task_id"), "actor": ("actors", "actor_id"), "node": ("nodes", "node_id"),
                     "worker": ("workers", "worker_id"), "object": ("objects", "object_id"),
                     "job": ("jobs", "job_id"), "placement-group": ("placement-groups", "placement_group_id")]

  func run() throws {
    guard let (table, key) = Self.keys[kind] else {
      throw ValidationError("unknown kind '\(kind)': use one of \(Self.keys.keys.sorted().joined(separator: ", "))")
    }
    var req = Swiftray_ListStateRequest()
    req.kind = table
    req.filters = try stateFilters(["\(key)=\(id)"])
    req.limit = 1000
    req.detail = true
    let reply = try ClusterTarget(address).query(req)
    guard case .array(let rows)? = StateJSON.parse(reply.json) else { throw ValidationError("the head's answer is not a JSON list") }
    guard !rows.isEmpty else {
      FileHandle.standardError.write(Data("No \(kind) with id \(id) (the head keeps the newest task_events_max_num_task_in_gcs tasks).\n".utf8))
      throw ExitCode(1)
    }
    FileHandle.standardOutput.write(Data(format.render(rows.reversed()).utf8))
  }
}

struct SummaryState: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "summary", abstract: "Count tasks by function and state, actors by class and state, or objects (Ray's `ray summary`).")
  @Argument(help: "tasks | actors | objects")
  var kind: String
  @Option(help: "table | json | yaml")
  var format: StateFormat = .table
  @Option(help: "The cluster: HOST:PORT of its head, or a session directory (default: the newest on this machine).")
  var address: String?

  func run() throws {
    guard ["tasks", "actors", "objects"].contains(kind) else {
      throw ValidationError("summary of 'tasks', 'actors' or 'objects', not '\(kind)'")
    }
    var req = Swiftray_ListStateRequest()
    req.kind = "summary-\(kind)"
    let reply = try ClusterTarget(address).query(req)
    guard let summary = StateJSON.parse(reply.json) else { throw ValidationError("the head's answer is not JSON") }
    switch format {
    case .json: print(summary.json)
    case .yaml: FileHandle.standardOutput.write(Data(StateFormat.yaml(summary, indent: 0, inList: false).utf8))
    case .table: FileHandle.standardOutput.write(Data(Self.table(summary).utf8))
    }
    for w in reply.warnings { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
  }

  /// Ray's layout: the totals, then a row per function (or class) with its state counts.
  static func table(_ summary: StateValue) -> String {
    guard case .object(let top) = summary, case .object(let cluster)? = top.first?.1 else { return summary.json + "\n" }
    var out = "Stats:\n"
    var rows: [StateValue] = []
    for (k, v) in cluster {
      if k == "summary", case .object(let entries) = v {
        rows = entries.map { e in
          guard case .object(let kv) = e.1 else { return e.1 }
          return .object(kv.map { $0.0 == "state_counts" ? ($0.0, .string(StateFormat.cell($0.1))) : $0 })
        }
      } else if k != "summary_by" {
        out += "  \(k): \(StateFormat.cell(v))\n"
      }
    }
    return out + "\n" + (rows.isEmpty ? "(none)\n" : StateFormat.table.render(rows))
  }
}

struct Timeline: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Write the cluster's task timeline as a Chrome trace (open it in chrome://tracing or ui.perfetto.dev).")
  @Option(help: "The file to write (default: /tmp/swiftray-timeline-<time>.json).")
  var output: String?
  @Option(help: "The cluster: HOST:PORT of its head, or a session directory (default: the newest on this machine).")
  var address: String?

  func run() throws {
    var req = Swiftray_ListStateRequest()
    req.kind = "timeline"
    let reply = try ClusterTarget(address).query(req)
    let path = output ?? "/tmp/swiftray-timeline-\(Int(Date().timeIntervalSince1970)).json"
    do { try reply.json.write(to: URL(fileURLWithPath: path)) } catch {
      throw ValidationError("cannot write \(path): \(error.localizedDescription)")
    }
    print("Trace written to \(path) (\(reply.json.count) bytes); open it in chrome://tracing or https://ui.perfetto.dev")
  }
}
