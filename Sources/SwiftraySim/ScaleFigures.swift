import CSwiftray
import Foundation
import Runtime
import RuntimeProto

/// The control plane at sizes this machine cannot hold as processes, measured on the
/// runtime's own state machines: an owner with a million queued tasks, a million
/// references, a node's lease decisions, routing among a thousand nodes, and the head's
/// work per node report. Measures and prints (and writes JSON); asserts nothing.
enum ScaleFigures {
  /// Bytes the heap has handed out and not taken back (malloc's in-use count, mmapped
  /// blocks included). Not the resident size: memory freed by an earlier figure and
  /// reused by the next would make a table's growth read as zero, or less.
  static func heapInUseBytes() -> Int {
    Int(clamping: sr_heap_in_use())
  }

  static func timed(_ body: () -> Void) -> Double {
    let t0 = DispatchTime.now().uptimeNanoseconds
    body()
    return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
  }

  static func run(nodes: Int, tasks: Int, json: String?) {
    var figures: [String: Double] = [:]
    var rng = SimRandom(seed: 1)
    var addr = Swiftray_Address()
    addr.workerID = Data(WorkerID(a: 1, b: 2, c: 3, d: 4).binary)
    let cpu1 = ResourceSet(units: ["CPU": 1])

    // 1. An owner with `tasks` tasks queued for leases (none granted): submission rate
    //    and memory per pending task.
    do {
      var owner = SimOwnerState(submitter: NormalTaskSubmitter(), idGen: TaskIDGenerator(job: JobID(1), prefix: 7), selfAddress: addr)
      var spec = Swiftray_TaskSpec()
      spec.name = "f"
      spec.numReturns = 1
      spec.resources = cpu1.proto
      let before = heapInUseBytes()
      var returns: [ObjectID] = []
      returns.reserveCapacity(tasks)
      let secs = timed {
        for i in 0..<tasks {
          guard case .success(let r) = owner.taskSubmitted(spec, args: [], kind: .normal, parent: nil, now: UInt64(i)) else { continue }
          returns.append(r.returns[0])
        }
      }
      let grown = heapInUseBytes() - before - tasks * MemoryLayout<ObjectID>.stride
      figures["owner_submits_per_s"] = Double(tasks) / secs
      figures["owner_bytes_per_pending_task"] = Double(grown) / Double(tasks)
      print(String(format: "owner: %d tasks queued for leases: %.0f submissions/s, %.0f bytes per pending task",
                   tasks, Double(tasks) / secs, Double(grown) / Double(tasks)))
      let cancel = timed { for r in returns.prefix(10_000) { _ = owner.cancelRequested(r.task, now: 0) } }
      figures["owner_cancel_us_at_depth"] = cancel / 10_000 * 1e6
      print(String(format: "owner: cancelling a queued task among %d: %.1f µs each", tasks, cancel / 10_000 * 1e6))
    }

    // 2. A million references (small owned values): memory per reference; put and free rates.
    do {
      var owner = SimOwnerState(submitter: NormalTaskSubmitter(), idGen: TaskIDGenerator(job: JobID(1), prefix: 9), selfAddress: addr)
      var value = Swiftray_RayObject()
      value.data = Data(count: 16)
      let before = heapInUseBytes()
      var ids: [ObjectID] = []
      ids.reserveCapacity(tasks)
      let put = timed {
        for _ in 0..<tasks {
          let id = owner.nextPutID(running: nil)
          _ = owner.objectPut(value, id: id)
          ids.append(id)
        }
      }
      let grown = heapInUseBytes() - before - tasks * MemoryLayout<ObjectID>.stride
      let free = timed { for id in ids { _ = owner.localRefRemoved(id, now: 0) } }
      figures["owner_bytes_per_reference"] = Double(grown) / Double(tasks)
      figures["owner_puts_per_s"] = Double(tasks) / put
      figures["owner_frees_per_s"] = Double(tasks) / free
      print(String(format: "owner: %d references to 16-byte values: %.0f bytes each; %.0f puts/s, %.0f frees/s",
                   tasks, Double(grown) / Double(tasks), Double(tasks) / put, Double(tasks) / free))
    }

    // 3. A node's lease decisions: request, grant, return, on a 64-CPU node.
    do {
      var q = LeaseQueue(total: ResourceSet(units: ["CPU": 64]), limits: .init(maxStartingWorkers: 64, maxWorkers: 64))
      for i in 0..<64 {
        let w = WorkerID(a: UInt64(i), b: 0, c: 0, d: 0)
        _ = q.workerStarting(w)
        _ = q.workerRegistered(w)
      }
      let owner = WorkerID(a: 9, b: 9, c: 9, d: 9)
      let n = min(tasks, 1_000_000)
      var granted = 0
      let secs = timed {
        for i in 0..<n {
          for case .grant(_, let lease) in q.leaseRequested(.init(id: UInt64(i), shape: cpu1, owner: owner)) {
            granted += 1
            _ = q.leaseReturned(lease.id, disconnect: false)
          }
        }
      }
      figures["node_lease_decisions_per_s"] = Double(granted) / secs
      print(String(format: "node: %d lease grants and returns: %.0f decisions/s", granted, Double(granted) / secs))
    }

    // 4. Routing among `nodes` nodes (spillback and SPREAD pick from the cluster view).
    do {
      let views = (0..<nodes).map { i in
        NodePicker.NodeView(id: Data(NodeID(a: UInt64(i), b: 1, c: 1, d: 1).binary), address: "n\(i)",
                            total: ResourceSet(units: ["CPU": 8]),
                            available: ResourceSet(units: ["CPU": Double(rng.between(0, 8))]), alive: true, startTimeMs: 0)
      }
      let picks = 100_000
      var found = 0
      let secs = timed { for _ in 0..<picks { if NodePicker.pick(cpu1, among: views) != nil { found += 1 } } }
      figures["cluster_picks_per_s"] = Double(picks) / secs
      print(String(format: "cluster: picking a node among %d: %.0f picks/s (%.1f µs each; linear in nodes)",
                   nodes, Double(picks) / secs, secs / Double(picks) * 1e6))
    }

    // 5. The head per node report: the report itself (one table entry updated), and the
    //    view each node takes back every period (the whole node table).
    do {
      var table: [Data: Swiftray_NodeInfo] = [:]
      for i in 0..<nodes {
        var n = Swiftray_NodeInfo()
        n.nodeID = Data(NodeID(a: UInt64(i), b: 2, c: 2, d: 2).binary)
        n.nodeManagerAddress = "10.0.\(i / 256).\(i % 256):6380"
        n.total = ResourceSet(units: ["CPU": 8, "memory": 1e9]).proto
        n.available = n.total
        n.alive = true
        table[n.nodeID] = n
      }
      let keys = Array(table.keys)
      let reports = 100_000
      let available = ResourceSet(units: ["CPU": 3]).proto
      let secs = timed { for i in 0..<reports { table[keys[i % keys.count]]?.available = available } }
      var reply = Swiftray_GetAllNodesReply()
      var bytes = 0
      let views = 200
      let viewSecs = timed {
        for _ in 0..<views {
          reply.nodes = Array(table.values)
          bytes = (try? reply.serializedData().count) ?? 0
        }
      }
      let perView = viewSecs / Double(views)
      figures["head_report_us"] = secs / Double(reports) * 1e6
      figures["head_view_us"] = perView * 1e6
      figures["head_view_bytes"] = Double(bytes)
      print(String(format: "head: a node's report: %.2f µs; the view a node takes back: %d bytes, %.0f µs to build (%d nodes)",
                   secs / Double(reports) * 1e6, bytes, perView * 1e6, nodes))
      print(String(format: "head: per report period, all %d nodes: %.1f ms of view building (grows with nodes²)",
                   nodes, perView * Double(nodes) * 1e3))
    }

    if let json {
      let data = try? JSONSerialization.data(withJSONObject: ["nodes": nodes, "tasks": tasks, "figures": figures],
                                             options: [.prettyPrinted, .sortedKeys])
      if !FileManager.default.createFile(atPath: json, contents: data) { print("swiftray-sim: could not write \(json)") }
    }
  }
}
