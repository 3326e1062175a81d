import Foundation
import Runtime
import RuntimeProto
import Testing

/// Objects' lifecycle events: the node's bounded ring (`ObjectEventLog`) and the head's
/// table and timeline spans (`ObjectEventTable`).
@Suite struct ObjectEventTests {
  static func id(_ n: UInt32) -> ObjectID { ObjectID(task: TaskID(prefix: 9, counter: 1, job: 1), index: n) }

  @Test func spansTakeTheirStartAndTheRingDropsTheOldest() {
    var log = ObjectEventLog(capacity: 3)
    log.began(Self.id(1), .pulled, wallNs: 100, peer: "tcp:10.0.0.2:7000")
    log.record(Self.id(2), .sealed, size: 10, wallNs: 150)
    log.record(Self.id(1), .pulled, size: 1000, wallNs: 400)
    let (events, dropped) = log.take(max: 10)
    #expect(dropped == 0 && events.map(\.kind) == [ObjectEventKind.sealed.rawValue, ObjectEventKind.pulled.rawValue])
    #expect(events[1].startWallNs == 100 && events[1].endWallNs == 400 && events[1].peer == "tcp:10.0.0.2:7000" && events[1].size == 1000)
    // A failed pull ends the pull's span, with why.
    log.began(Self.id(3), .pulled, wallNs: 500, peer: "tcp:x")
    log.record(Self.id(3), .pullFailed, size: 5, wallNs: 900, peer: "unreachable")
    let failed = log.take(max: 10).events[0]
    #expect(failed.startWallNs == 500 && failed.peer == "unreachable")
    for i in 0..<5 { log.record(Self.id(10 + UInt32(i)), .freed, size: 1, wallNs: UInt64(i)) }
    let full = log.take(max: 10)
    #expect(full.dropped == 2 && full.events.map(\.endWallNs) == [2, 3, 4])
    #expect(log.take(max: 10).dropped == 0)
    // Off: nothing recorded.
    var off = ObjectEventLog(enabled: false)
    off.record(Self.id(1), .sealed, size: 1, wallNs: 1)
    #expect(off.take(max: 10).events.isEmpty)
  }

  @Test func theHeadKeepsTheNewestAndDrawsSpansPerNodeStore() {
    var t = ObjectEventTable(capacity: 2)
    let node = Data(NodeID.random().binary)
    func ev(_ kind: ObjectEventKind, _ n: UInt32, _ start: UInt64, _ end: UInt64) -> Swiftray_ObjectEvent {
      .with { $0.objectID = Data(Self.id(n).binary); $0.kind = kind.rawValue; $0.startWallNs = start; $0.endWallNs = end; $0.size = 8 }
    }
    t.apply(node: node, [ev(.sealed, 1, 1_000_000, 1_000_000), ev(.pulled, 2, 2_000_000, 5_000_000), ev(.spilled, 3, 6_000_000, 7_000_000)],
            dropped: 4)
    #expect(t.entries.count == 2 && t.evicted == 1 && t.droppedAtNodes == 4)
    let row = ObjectEventTable.row(t.entries[0]) { _ in "10.0.0.2" }
    #expect(row["event"] == .string("PULLED") && row["start_time_ms"] == .int(2) && row["end_time_ms"] == .int(5)
      && row["node_ip"] == .string("10.0.0.2"))
    let spans = t.timeline { _ in 7 }
    // One row name for the node's store, then a span per pull and spill.
    #expect(spans.count == 3)
    guard case .object(let pull) = spans[1] else { Issue.record("not a span"); return }
    let f = StateRow(pull)
    #expect(f["ph"] == .string("X") && f["pid"] == .int(7) && f["ts"] == .double(2000) && f["dur"] == .double(3000))
  }
}

/// The head's lifecycle logs (`LifecycleLog`): bounded, merged newest first.
@Suite struct LifecycleLogTests {
  @Test func logsAreBoundedAndMergeNewestFirstKeepingEachLogsOrder() {
    var actors = LifecycleLog(capacity: 2)
    var nodes = LifecycleLog()
    nodes.changed("NODE", Data([1]), "ALIVE", "registered")
    actors.changed("ACTOR", Data([2]), "PENDING_CREATION")
    actors.changed("ACTOR", Data([2]), "ALIVE")
    actors.changed("ACTOR", Data([2]), "DEAD", String(repeating: "x", count: 5000))
    #expect(actors.entries.map(\.state) == ["ALIVE", "DEAD"])
    #expect(actors.entries[1].message.count == LifecycleLog.maxMessage)
    let rows = LifecycleLog.rows([actors, nodes])
    #expect(rows.map { $0["state"] } == [.string("DEAD"), .string("ALIVE"), .string("ALIVE")])
    #expect(rows[0]["severity"] == .string("ERROR") && rows[2]["source_type"] == .string("NODE") && rows[2]["entity_id"] == .string("01"))
  }
}
