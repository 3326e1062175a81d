import Foundation
import GRPCCore
import Runtime
import RuntimeProto
import Testing

/// Task events from owners and executors, the head's table of attempts, and the state
/// API's edge (DESIGN §13).
@Suite struct TaskEventTests {
  static let worker = Data(repeating: 7, count: 28), node = Data(repeating: 9, count: 28)

  static func task(_ n: UInt64) -> TaskID { TaskID(prefix: 1, counter: n, job: 1) }

  static func spec(_ n: UInt64, name: String = "f", attempt: Int32 = 0) -> Swiftray_TaskSpec {
    var s = Swiftray_TaskSpec()
    s.taskID = Data(task(n).binary)
    s.jobID = Data(JobID(1).binary)
    s.name = name
    s.function.name = name
    s.attempt = attempt
    return s
  }

  static func batch(_ events: [Swiftray_TaskEvent], pid: Int32 = 42, fromWorker: Data = worker,
                    monotonic: UInt64 = 1_000, wall: UInt64 = 2_000_000_000_000_000_000) -> Swiftray_ReportTaskEventsRequest {
    var b = Swiftray_ReportTaskEventsRequest()
    b.events = events
    b.workerID = fromWorker
    b.nodeID = node
    b.pid = pid
    b.monotonicNowNs = monotonic
    b.wallNowNs = wall
    // What the events' `info_index` 1 points at (every task here is `f`).
    var f = Swiftray_TaskEventInfo()
    f.name = "f"; f.funcOrClassName = "f"; f.jobID = Data(JobID(1).binary)
    b.infos = [f]
    return b
  }

  static func event(_ n: UInt64, _ state: TaskEventState, at t: UInt64 = 500, attempt: Int32 = 0, info: Bool = false,
                    worker: TaskEventRecord.Worker? = nil, edit: (inout TaskEventRecord) -> Void = { _ in }) -> Swiftray_TaskEvent {
    var buffer = TaskEventBuffer(capacity: 10)
    buffer.record(spec(n, attempt: attempt), state, now: t, info: info, worker: worker, edit: edit)
    return buffer.drain(max: 1).events[0]
  }

  static func row(_ t: TaskEventTable, _ n: UInt64) -> [String: StateValue] {
    let (rows, _) = t.rows(filters: [StateFilter(key: "task_id", op: .equal, value: task(n).hex)], limit: 10, detail: true)
    guard case .object(let kv)? = rows.first else { return [:] }
    return Dictionary(kv, uniquingKeysWith: { a, _ in a })
  }

  @Test func aFullBufferDropsItsOldestEventsAndCountsThem() {
    var b = TaskEventBuffer(capacity: 3)
    for n in 1...5 { b.record(Self.spec(UInt64(n)), .finished, now: UInt64(n)) }
    let first = b.drain(max: 2)
    #expect(first.events.map(\.timeNs) == [3, 4] && first.dropped == 2)
    let second = b.drain(max: 10)
    #expect(second.events.map(\.timeNs) == [5] && second.dropped == 0 && b.isEmpty)
    var off = TaskEventBuffer(capacity: 3, enabled: false)
    off.record(Self.spec(1), .running, now: 1)
    #expect(off.isEmpty)
  }

  @Test func aBatchFoldsEachAttemptOnceAndDescribesEachFunctionOnce() {
    var b = TaskEventBuffer(capacity: 100)
    // Two tasks of `f`, interleaved, one retried; a task of `g`; then `f` again.
    b.record(Self.spec(1), .pendingNodeAssignment, now: 1, info: true)
    b.record(Self.spec(2), .pendingNodeAssignment, now: 2, info: true)
    b.record(Self.spec(1), .submittedToWorker, now: 3, worker: .init(workerID: Self.worker, nodeID: Data(), pid: 7))
    b.record(Self.spec(1), .failed, now: 4)
    b.record(Self.spec(1, attempt: 1), .finished, now: 5)
    b.record(Self.spec(3, name: "g"), .finished, now: 6, info: true)
    b.record(Self.spec(2), .finished, now: 7)
    b.record(Self.spec(4), .pendingNodeAssignment, now: 8, info: true)
    // An id of the wrong length (a peer's mistake) is not recorded: no head could file it.
    var odd = Self.spec(5)
    odd.taskID = Data([1, 2, 3])
    b.record(odd, .finished, now: 9)
    let out = b.drain(max: 100)
    #expect(out.taken == 5)  // each attempt's changes were folded into one record as they came
    #expect(out.events.map(\.state) == [TaskEventState.failed, .finished, .finished, .finished, .pendingNodeAssignment].map(\.rawValue))
    #expect(out.events.map(\.attempt) == [0, 0, 1, 0, 0])
    #expect(out.events[0].workerPid == 7 && out.events[0].timeNs == 1)
    #expect(out.events[0].taskID == Data(Self.task(1).binary))
    #expect(out.infos.map(\.name) == ["f", "g"])
    #expect(out.events.map(\.infoIndex) == [1, 1, 0, 2, 1])
  }

  /// Ids from this owner's generator (consecutive counters, gaps for puts), from another
  /// generator, a retry of an old task and a jump past the window: each attempt's changes
  /// still fold into its one record.
  @Test func changesFoldIntoTheirAttemptsRecordWhereverItsIdFalls() {
    var b = TaskEventBuffer(capacity: 1000)
    func other(_ n: UInt64) -> Swiftray_TaskSpec {
      var s = Self.spec(n)
      s.taskID = Data(TaskID(prefix: 2, counter: n, job: 1).binary)
      return s
    }
    let far = UInt64(RecordPositions.maxGap) + 50
    let specs = [Self.spec(10), Self.spec(11), Self.spec(15), other(3), other(12), Self.spec(12), Self.spec(5), Self.spec(15 + far)]
    for (i, s) in specs.enumerated() { b.record(s, .pendingNodeAssignment, now: UInt64(i + 1), info: true) }
    for s in specs.reversed() { b.record(s, .submittedToWorker, now: 100) }
    for s in specs { b.record(s, .finished, now: 200) }
    b.record(Self.spec(11, attempt: 1), .pendingNodeAssignment, now: 300)
    #expect(b.events.count == specs.count + 1)
    #expect(b.events.prefix(specs.count).allSatisfy { $0.state == .finished && $0.endNs == 200 && $0.hasSummary })
    #expect(b.events.map(\.timeNs) == Array(1...UInt64(specs.count)) + [300])
    // After a take, the same ids start records of their own again.
    _ = b.take(max: 100)
    for s in specs { b.record(s, .finished, now: 400) }
    #expect(b.events.count == specs.count && b.events.allSatisfy { $0.timeNs == 400 })
  }

  /// Records name their description and worker by index into what the buffer keeps:
  /// past `capacity` of them (records dropped meanwhile) only those still named are
  /// kept, and a partial take's records still name theirs.
  @Test func descriptionsAndWorkersStayNamedAcrossDropsCompactionsAndPartialTakes() {
    var b = TaskEventBuffer(capacity: 3)
    for n: UInt64 in 1...10 {
      b.record(Self.spec(n, name: "f\(n)"), .pendingNodeAssignment, now: n, info: true,
               worker: .init(workerID: Data(repeating: UInt8(n), count: 28), nodeID: Self.node, pid: Int32(n)))
    }
    #expect(b.events.map(\.timeNs) == [8, 9, 10] && b.dropped == 7)
    #expect(b.events.map { b.worker($0)?.pid } == [8, 9, 10])
    let first = b.take(max: 1)
    let (events, infos) = TaskEventBuffer.messages(first.batch)
    #expect(infos.map(\.name) == ["f8"] && events.map(\.workerPid) == [8])
    let rest = b.drain(max: 10)
    #expect(rest.infos.map(\.name) == ["f9", "f10"] && rest.events.map(\.workerPid) == [9, 10])
    #expect(rest.events.map(\.infoIndex) == [1, 2])
  }

  @Test func anAttemptKeepsOneRecordInTheRingUntilItIsTaken() {
    var b = TaskEventBuffer(capacity: 3)
    b.record(Self.spec(1), .pendingNodeAssignment, now: 1, info: true)
    b.record(Self.spec(1), .submittedToWorker, now: 2, worker: .init(workerID: Self.worker, nodeID: Data(), pid: 7))
    b.record(Self.spec(1), .finished, now: 3)
    #expect(b.events.count == 1 && b.events[0].state == .finished && b.worker(b.events[0])?.pid == 7 && b.events[0].timeNs == 1)
    // A retry is an attempt of its own; an id that does not parse is not recorded.
    b.record(Self.spec(1, attempt: 1), .pendingNodeAssignment, now: 4)
    var odd = Self.spec(2)
    odd.taskID = Data([1, 2, 3])
    b.record(odd, .pendingNodeAssignment, now: 5)
    #expect(b.events.count == 2)
    b.record(Self.spec(2), .pendingNodeAssignment, now: 5)
    #expect(b.events.count == 3)
    // Full: a new attempt drops the oldest record (counted); a change of one still held
    // folds into it.
    b.record(Self.spec(3), .pendingNodeAssignment, now: 6)
    b.record(Self.spec(1, attempt: 1), .running, now: 7)
    #expect(b.events.map(\.timeNs) == [4, 5, 6] && b.events[0].state == .running)
    // What a partial take moved out is not folded into again: the next change starts a
    // record of its own, which the head merges.
    let first = b.take(max: 1)
    #expect(first.batch.count == 1 && first.dropped == 1)
    b.record(Self.spec(1, attempt: 1), .finished, now: 8)
    b.record(Self.spec(3), .finished, now: 9)
    #expect(b.events.map(\.timeNs) == [5, 6, 8] && b.events[1].state == .finished)
  }

  @Test func anOwnersRecordsHandedOverInItsOwnProcessMakeTheRowsItsMessagesMake() {
    var b = TaskEventBuffer(capacity: 100)
    for n: UInt64 in 1...6 { b.record(Self.spec(n, name: n % 2 == 0 ? "f" : "g"), .pendingNodeAssignment, now: 100 + n, info: true) }
    for n: UInt64 in 1...5 {
      b.record(Self.spec(n), .submittedToWorker, now: 200 + n, worker: .init(workerID: Self.worker, nodeID: Self.node, pid: Int32(40 + n)))
    }
    b.record(Self.spec(1), .finished, now: 300) { $0.startWallNs = 5_000; $0.endWallNs = 9_000; $0.argBytes = 10; $0.returnBytes = 3 }
    b.record(Self.spec(2), .failed, now: 301) { $0.failure = .init(type: "WORKER_DIED", message: "exit code 3") }
    b.record(Self.spec(3, attempt: 1), .pendingNodeAssignment, now: 302, info: true)
    var actorCall = Self.spec(7, name: "A.m")
    actorCall.actorID = Data(repeating: 5, count: 24)
    actorCall.strategy.kind = .placementGroup
    actorCall.strategy.placementGroupID = Data(repeating: 6, count: 18)
    b.record(actorCall, .submittedToWorker, now: 303, info: true)
    let taken = b.take(max: 100).batch
    var wire = Self.batch([], pid: 1, fromWorker: Data(repeating: 1, count: 28), monotonic: 1_000, wall: 2_000_000_000_000)
    let built = TaskEventBuffer.messages(taken)
    wire.events = built.events
    wire.infos = built.infos
    var byMessage = TaskEventTable(capacity: 100), byRecord = TaskEventTable(capacity: 100)
    byMessage.apply(wire)
    var bare = wire
    bare.events = []
    bare.infos = []
    byRecord.apply(bare)
    byRecord.apply(taken, from: bare)
    let (a, n) = byMessage.rows(filters: [], limit: 100, detail: true)
    let (r, m) = byRecord.rows(filters: [], limit: 100, detail: true)
    #expect(n == 8 && m == 8)
    #expect(a.map(\.json) == r.map(\.json))
    #expect(byMessage.stateCounts == byRecord.stateCounts)
    #expect(Self.row(byRecord, 2)["error_type"] == .string("WORKER_DIED") && Self.row(byRecord, 1)["arg_bytes"] == .int(10))
  }

  @Test func ownerAndExecutorEventsMergeInWhicheverOrderTheyArrive() {
    let submitted = Self.event(1, .pendingNodeAssignment, at: 100, info: true)
    let pushed = Self.event(1, .submittedToWorker, at: 200, worker: .init(workerID: Self.worker, nodeID: Self.node, pid: 42))
    let finished = Self.event(1, .finished, at: 900) { $0.startWallNs = 5_000; $0.endWallNs = 9_000; $0.argBytes = 10; $0.returnBytes = 3 }
    let running = Self.event(1, .running, at: 300) { $0.fromExecutor = true }
    var a = TaskEventTable(capacity: 10), b = TaskEventTable(capacity: 10)
    a.apply(Self.batch([submitted, pushed, finished], pid: 1, fromWorker: Data(repeating: 1, count: 28)))
    a.apply(Self.batch([running]))
    b.apply(Self.batch([running]))
    b.apply(Self.batch([submitted, pushed, finished], pid: 1, fromWorker: Data(repeating: 1, count: 28)))
    for t in [a, b] {
      let r = Self.row(t, 1)
      #expect(r["state"] == .string("FINISHED") && r["name"] == .string("f") && r["worker_pid"] == .int(42))
      #expect(r["worker_id"] == .string(Self.worker.map { String(format: "%02x", $0) }.joined()))
      #expect(r["start_time_ms"] == .int(0) && r["arg_bytes"] == .int(10) && r["return_bytes"] == .int(3))
    }
  }

  @Test func theOwnersEndStandsAndNoEventMovesAnAttemptBack() {
    var t = TaskEventTable(capacity: 10)
    t.apply(Self.batch([Self.event(1, .failed) { $0.failure = .init(type: "WORKER_DIED", message: "gone") }]))
    t.apply(Self.batch([Self.event(1, .running) { $0.fromExecutor = true }, Self.event(1, .submittedToWorker)]))
    let r = Self.row(t, 1)
    #expect(r["state"] == .string("FAILED") && r["error_type"] == .string("WORKER_DIED") && r["error_message"] == .string("gone"))
    // A second attempt is a row of its own.
    t.apply(Self.batch([Self.event(1, .pendingNodeAssignment, attempt: 1, info: true)]))
    #expect(t.count == 2)
  }

  @Test func theHeadKeepsTheNewestAttemptsAndCountsWhatItEvicted() {
    var t = TaskEventTable(capacity: 2)
    t.apply(Self.batch((1...3).map { Self.event($0, .finished, info: true) }))
    #expect(t.count == 2 && t.evicted == 1 && Self.row(t, 1).isEmpty && !Self.row(t, 3).isEmpty)
    var dropped = Self.batch([])
    dropped.dropped = 5
    t.apply(dropped)
    #expect(t.droppedAtSources == 5)
  }

  @Test func timesFromAPeerNeverTrapAndMapToItsWallClock() {
    var t = TaskEventTable(capacity: 10)
    // An event "from the future" and one from before the wall clock's start.
    t.apply(Self.batch([Self.event(1, .pendingNodeAssignment, at: .max, info: true)], monotonic: 10, wall: 7_000_000))
    t.apply(Self.batch([Self.event(2, .pendingNodeAssignment, at: 0, info: true)], monotonic: .max, wall: 1))
    #expect(Self.row(t, 1)["creation_time_ms"] == .int(7) && Self.row(t, 2)["creation_time_ms"] == .null)
  }

  @Test func summaryCountsAttemptsByFunctionAndTheTimelineHasASpanPerRun() {
    var t = TaskEventTable(capacity: 10)
    t.apply(Self.batch([
      Self.event(1, .finished, info: true, worker: .init(workerID: Self.worker, nodeID: Self.node, pid: 42)) {
        $0.startWallNs = 1_000_000; $0.endWallNs = 3_000_000
      },
      Self.event(2, .failed, info: true), Self.event(3, .running, info: true) { $0.fromExecutor = true },
    ]))
    guard case .object(let top) = t.summary(filters: []), case .object(let cluster)? = top.first?.1,
      case .object(let summary)? = cluster.first?.1, case .object(let f)? = summary.first?.1
    else { Issue.record("no summary"); return }
    #expect(f.first { $0.0 == "state_counts" }?.1 == .object([("FAILED", .int(1)), ("FINISHED", .int(1)), ("RUNNING", .int(1))]))
    guard case .array(let events) = t.timeline(nodeIP: { _ in "10.0.0.1" }) else { Issue.record("no trace"); return }
    let spans = events.filter { $0.json.contains("\"ph\": \"X\"") }
    #expect(spans.count == 2)  // the finished one and the running one: the failed one never started
    #expect(events.contains { $0.json.contains("Node 10.0.0.1") } && spans.allSatisfy { $0.json.contains("\"tid\": 42") })
  }

  @Test func jsonKeepsColumnOrderAndEscapesWhatItMust() throws {
    let v = StateValue.object([("z", .string("a\"b\\c\nd\u{1}é")), ("a", .array([.int(-3), .double(1.5), .null, .bool(true)]))])
    let text = v.json
    #expect(text.hasPrefix("{\"z\": \"a\\\"b\\\\c\\nd\\u0001é\""))
    #expect(StateJSON.parse(Data(text.utf8)) == v)
    #expect(StateJSON.parse(Data("[1, 2".utf8)) == nil && StateJSON.parse(Data("{} x".utf8)) == nil)
    #expect(StateJSON.parse(Data(String(repeating: "[", count: 100_000).utf8)) == nil)  // nesting is bounded
  }

  @Test func aQueryIsCheckedAtTheEdge() throws {
    func query(_ edit: (inout Swiftray_ListStateRequest) -> Void) throws -> StateQuery {
      var r = Swiftray_ListStateRequest()
      r.kind = "tasks"
      edit(&r)
      return try StateQuery(r)
    }
    #expect(try query { _ in }.limit == 100)
    #expect(throws: RPCError.self) { try query { $0.kind = "widgets" } }
    #expect(throws: RPCError.self) { try query { $0.limit = -1 } }
    #expect(throws: RPCError.self) { try query { $0.limit = Int32(ControlService.maxStateLimit) + 1 } }
    #expect(throws: RPCError.self) { try query { $0.filters = [.with { $0.key = "colour"; $0.op = "=" }] } }
    #expect(throws: RPCError.self) { try query { $0.filters = [.with { $0.key = "state"; $0.op = "~" }] } }
    let q = try query { $0.filters = [.with { $0.key = "state"; $0.op = "!="; $0.value = "finished" }] }
    #expect(q.filters[0].matches(.string("RUNNING")) && !q.filters[0].matches(.string("FINISHED")))
  }

  @Test func aBatchBeyondItsBoundsIsRefusedWhole() {
    #expect(throws: RPCError.self) {
      try ControlService.check(Self.batch(Array(repeating: Self.event(1, .running), count: ControlService.maxEventsPerBatch + 1)))
    }
    #expect(throws: RPCError.self) {
      try ControlService.check(Self.batch([Self.event(1, .failed) { $0.failure = .init(type: "X", message: String(repeating: "x", count: 1 << 17)) }]))
    }
    #expect(throws: Never.self) { try ControlService.check(Self.batch([Self.event(1, .failed, info: true)])) }
  }

  @Test func rowsPrintAsRaysTableAndAsYAML() {
    let rows: [StateValue] = [.object([("task_id", .string("ab")), ("state", .string("RUNNING")), ("resources", .object([("CPU", .double(1))]))]),
                              .object([("task_id", .string("abcdef")), ("state", .null), ("resources", .object([]))])]
    let table = StateFormat.table.render(rows).split(separator: "\n").map(String.init)
    #expect(table == ["TASK_ID  STATE    RESOURCES", "ab       RUNNING  {\"CPU\": 1}", "abcdef            {}"])
    #expect(StateFormat.yaml.render([rows[0]]) == "- task_id: ab\n  state: RUNNING\n  resources:\n    CPU: 1\n")
    #expect(StateFormat.yaml.render([.object([("v", .string("yes"))])]) == "- v: \"yes\"\n")
  }
}

/// An executor's started tasks: each is announced RUNNING once while it runs, whichever
/// order tasks end in (one at a time, or many at once as an async actor runs them).
@Suite struct StartedTasksTests {
  static func spec(_ n: UInt64) -> Swiftray_TaskSpec { TaskEventTests.spec(n) }

  func announced(_ s: inout StartedTasks) -> [UInt64] {
    var events: [Swiftray_TaskEvent] = []
    s.announce(into: &events, max: 100)
    return events.compactMap { TaskID(binary: $0.taskID)?.counter }.sorted()
  }

  @Test func eachRunningTaskIsAnnouncedOnceAndAnEndedOneNever() {
    var s = StartedTasks()
    s.began(TaskEventTests.task(1), Self.spec(1), at: 10)
    s.ended(Self.spec(1))
    #expect(announced(&s).isEmpty, "a task that ended before the drain costs no event")
    for n: UInt64 in 2...4 { s.began(TaskEventTests.task(n), Self.spec(n), at: 10 + n) }
    s.ended(Self.spec(2))  // not the newest: ends from the map
    #expect(announced(&s) == [3, 4])
    #expect(announced(&s).isEmpty, "announced once")
    s.began(TaskEventTests.task(5), Self.spec(5), at: 20)
    s.ended(Self.spec(4))
    #expect(announced(&s) == [5])
    s.ended(Self.spec(3)); s.ended(Self.spec(5))
    s.began(TaskEventTests.task(6), Self.spec(6), at: 30)
    #expect(announced(&s) == [6])
  }
}
