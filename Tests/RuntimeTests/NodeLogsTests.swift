import Foundation
import Runtime
import RuntimeProto
import Testing

/// Workers' log files (`NodeLogs`, `WorkerLogWriter`, `LogTail`, `LogFileName`): what a
/// peer may name, where the last lines begin, rotation, tails and followed reads.
@Suite struct NodeLogsTests {
  static func session() -> String {
    let dir = NSTemporaryDirectory() + "logs-\(UInt32.random(in: 0 ... .max))"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
  }

  @Test func onlyPlainFileNamesAreLogFiles() {
    for good in ["daemon.log", "worker-ab12-42.out", "worker-ab12-42.err.3"] { #expect(LogFileName.isValid(good)) }
    for bad in ["", ".hidden", "../daemon.log", "a/b", "a b", "x\u{0}y", String(repeating: "a", count: 256), "é.log"] {
      #expect(!LogFileName.isValid(bad), "\(bad)")
    }
    #expect(LogFileName.parse("worker-ab12-42.out")! == ("ab12", 42, false, 0))
    #expect(LogFileName.parse("worker-ab12-42.err.2")! == ("ab12", 42, true, 2))
    for other in ["daemon.log", "worker-ab12-0.out", "worker-ab12-x.out", "worker-ab-12-3.out", "worker-ab12-42.log"] {
      #expect(LogFileName.parse(other) == nil, "\(other)")
    }
  }

  @Test func theTailStartsAtTheRightLine() {
    let text = Array("a\nbb\nccc\n".utf8)
    #expect(LogTail.start(of: text, lines: 1, atStart: true) == 5)
    #expect(LogTail.start(of: text, lines: 2, atStart: true) == 2)
    #expect(LogTail.start(of: text, lines: 3, atStart: true) == 0)
    #expect(LogTail.start(of: text, lines: 9, atStart: true) == 0)
    // Fewer lines than asked in a chunk that does not start the file: read further back.
    #expect(LogTail.start(of: text, lines: 9, atStart: false) == nil)
    // A last line without its newline is a line.
    #expect(LogTail.start(of: Array("a\nbb".utf8), lines: 1, atStart: true) == 2)
  }

  @Test func filesRotatePastTheirSizeAndKeepTheNewestBackups() throws {
    let s = Self.session()
    defer { try? FileManager.default.removeItem(atPath: s) }
    let w = WorkerLogWriter(session: s, maxBytes: 100, backups: 2)
    let name = "worker-ab-7.out"
    // 10 lines of 40 bytes: a file holds 2 lines, so 5 files were written; the last 3 kept.
    for i in 0..<10 { w.append(name, [String(format: "%03d", i) + String(repeating: "x", count: 36)]) }
    w.closeAll()
    let logs = NodeLogs(session: s)
    #expect(Set(logs.list().map(\.name)) == [name, name + ".1", name + ".2"])
    let newest = try logs.tail(name, lines: 0)
    #expect(String(decoding: newest.data, as: UTF8.self).split(separator: "\n").map { $0.prefix(3) } == ["008", "009"])
    let oldest = try logs.tail(name + ".2", lines: 0)
    #expect(String(decoding: oldest.data, as: UTF8.self).hasPrefix("004"))
  }

  @Test func tailsAndFollowedReadsGiveWholeLines() throws {
    let s = Self.session()
    defer { try? FileManager.default.removeItem(atPath: s) }
    let w = WorkerLogWriter(session: s, maxBytes: 1 << 30, backups: 1)
    let name = "worker-cd-9.err"
    // Enough lines that the tail reads back over several blocks.
    w.append(name, (0..<20_000).map { "line \($0)" })
    let logs = NodeLogs(session: s)
    let t = try logs.tail(name, lines: 3)
    #expect(String(decoding: t.data, as: UTF8.self) == "line 19997\nline 19998\nline 19999\n")
    let many = try logs.tail(name, lines: 15_000)
    #expect(String(decoding: many.data, as: UTF8.self).hasPrefix("line 5000\n"))
    // What the file gains after the tail's end, and nothing more.
    w.append(name, ["next"])
    let more = try logs.read(name, from: t.end)
    #expect(String(decoding: more.data, as: UTF8.self) == "next\n")
    #expect(try logs.read(name, from: more.end).data.isEmpty)
    // A file shorter than where the reader was (rotated or truncated) is read from its start.
    #expect(try logs.read(name, from: more.end + 1000).data.count == Int(more.end))
    #expect(throws: NodeLogs.ReadError.missing("nope.out")) { try logs.tail("nope.out", lines: 1) }
    #expect(throws: NodeLogs.ReadError.missing("../x")) { try logs.tail("../x", lines: 1) }
    w.closeAll()
  }
}

@Suite struct LogRotationConfigTests {
  @Test func rotationSettingsComeFromOursOrRaysVariables() throws {
    #expect(try Config.resolve(environment: ["RAY_ROTATION_MAX_BYTES": "8192"]).logRotationMaxBytes == 8192)
    #expect(try Config.resolve(environment: ["RAY_ROTATION_MAX_BYTES": "8192", "SWIFTRAY_LOG_ROTATION_MAX_BYTES": "9000"])
      .logRotationMaxBytes == 9000)
    #expect(try Config.resolve(environment: ["RAY_ROTATION_BACKUP_COUNT": "0"]).logRotationBackupCount == 0)
    #expect(throws: SwiftrayError.self) { try Config.resolve(environment: ["RAY_ROTATION_BACKUP_COUNT": "-1"]) }
    #expect(throws: SwiftrayError.self) { try Config.resolve(environment: ["RAY_ROTATION_MAX_BYTES": "lots"]) }
  }
}

/// What `list objects` says of one process's references (`ObjectListing`).
@Suite struct ObjectListingTests {
  static func id(_ n: UInt32) -> ObjectID { ObjectID(task: TaskID(prefix: 7, counter: 1, job: 1), index: n) }

  @Test func rowsNameWhyEachReferenceLivesAndWhatIsKnownOfItsValue() {
    var refs: [ObjectID: ReferenceTable.Reference] = [
      Self.id(1): .init(owned: true, localRefs: 1, submittedTaskRefs: 2),
      Self.id(2): .init(owned: true, submittedTaskRefs: 1),
      Self.id(3): .init(owned: false, contained: 1),
      Self.id(4): .init(owned: true),
    ]
    refs[Self.id(4)]!.borrowers[WorkerID.random()] = 1
    var values = ObjectTable()
    values[Self.id(1)] = .with { $0.data = Data(repeating: 1, count: 10) }
    values[Self.id(4)] = .with { $0.storeSize = 5_000_000 }
    let (rows, total) = ObjectListing.rows(refs: refs, values: values, limit: 10)
    #expect(total == 4)
    let by = Dictionary(uniqueKeysWithValues: rows.map { (ObjectID(binary: $0.objectID)!, $0) })
    #expect(by[Self.id(1)]!.referenceType == "LOCAL_REFERENCE" && by[Self.id(1)]!.size == 10 && by[Self.id(1)]!.taskStatus == "FINISHED")
    #expect(by[Self.id(2)]!.referenceType == "USED_BY_PENDING_TASK" && by[Self.id(2)]!.size == -1 && by[Self.id(2)]!.taskStatus == "PENDING")
    #expect(by[Self.id(3)]!.referenceType == "CAPTURED_IN_OBJECT" && !by[Self.id(3)]!.owned && by[Self.id(3)]!.taskStatus == "NIL")
    #expect(by[Self.id(4)]!.referenceType == "PINNED_IN_MEMORY" && by[Self.id(4)]!.inStore && by[Self.id(4)]!.size == 5_000_000
      && by[Self.id(4)]!.borrowers == 1)
    // A cut keeps the lowest ids, whatever the dictionary's order.
    let cut = ObjectListing.rows(refs: refs, values: values, limit: 2)
    #expect(cut.total == 4 && cut.rows.map { ObjectID(binary: $0.objectID)! } == [Self.id(1), Self.id(2)])
  }
}
