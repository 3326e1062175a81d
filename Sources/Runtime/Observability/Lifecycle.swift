import DequeModule
import Foundation

/// The lifecycle of the head's entities — actors, placement groups, nodes, jobs — as
/// they change state, for `swiftray list cluster-events` (Ray's cluster events). Each
/// table keeps its own bounded log (the oldest dropped); a query merges them by time.
///
/// Threading: a value type inside a table the ControlService holds under its lock.
public struct LifecycleLog: Sendable {
  public struct Entry: Sendable, Equatable {
    public var timeNs: UInt64
    public var sourceType: String
    public var id: Data
    public var state: String
    public var message: String
  }
  public private(set) var entries: Deque<Entry> = []
  public let capacity: Int
  /// Longest message kept (a death's detail can hold a traceback).
  public static let maxMessage = 2048

  public init(capacity: Int = 10_000) { self.capacity = max(1, capacity) }

  /// `id` of kind `sourceType` entered `state` now (wall clock: for people, not decisions).
  public mutating func changed(_ sourceType: String, _ id: Data, _ state: String, _ message: String = "") {
    if entries.count >= capacity { entries.removeFirst() }
    entries.append(Entry(timeNs: WallClock.nanos(), sourceType: sourceType, id: id, state: state,
                         message: String(message.prefix(Self.maxMessage))))
  }

  public static let columns = ["time", "severity", "source_type", "entity_id", "state", "message"]

  /// Ray's severities: a death or failure is an error, a restart a warning.
  public static func severity(_ state: String) -> String {
    switch state {
    case "DEAD", "FAILED", "REMOVED_INFEASIBLE": "ERROR"
    case "RESTARTING", "RESCHEDULING", "STOPPED": "WARNING"
    default: "INFO"
    }
  }

  /// The rows of several logs, newest first (within one log, in the order recorded).
  public static func rows(_ logs: [LifecycleLog]) -> [StateRow] {
    let all = logs.flatMap { log in log.entries.enumerated().map { (position: $0.offset, entry: $0.element) } }
    return all.sorted { ($0.entry.timeNs, $0.position) > ($1.entry.timeNs, $1.position) }.map(\.entry).map { e in
      StateRow([("time", .int(Int64(clamping: e.timeNs / 1_000_000))), ("severity", .string(severity(e.state))), ("source_type", .string(e.sourceType)),
                ("entity_id", .hex(e.id)), ("state", .string(e.state)), ("message", .string(e.message))])
    }
  }
}
