import DequeModule
import Foundation
import RuntimeProto

/// The wall clock (event times travel between machines as wall time). Any thread.
public enum WallClock {
  public static func nanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(max(ts.tv_sec, 0)) &* 1_000_000_000 &+ UInt64(max(ts.tv_nsec, 0))
  }
}

/// What happened to an object in a node's store (`Swiftray_ObjectEvent.kind`).
public enum ObjectEventKind: Int32, Sendable, CaseIterable {
  case sealed = 1, pulled = 2, pullFailed = 3, spilled = 4, restored = 5, freed = 6, evicted = 7

  public var rayName: String {
    switch self {
    case .sealed: "SEALED"
    case .pulled: "PULLED"
    case .pullFailed: "PULL_FAILED"
    case .spilled: "SPILLED"
    case .restored: "RESTORED"
    case .freed: "FREED"
    case .evicted: "EVICTED"
    }
  }
  /// Kinds that take time (shown as spans in the timeline).
  public var isSpan: Bool { self == .pulled || self == .spilled || self == .restored }
}

/// A node store's object events on their way to the head: a bounded ring that drops its
/// oldest (counted), and the start times of pulls, spills and restores under way (their
/// event is recorded when they end). Pure.
///
/// Threading: a value type; the ObjectStore holds it under its lock.
public struct ObjectEventLog: Sendable {
  public private(set) var events: Deque<Swiftray_ObjectEvent> = []
  public private(set) var dropped: UInt64 = 0
  public let capacity: Int
  public let enabled: Bool
  /// When each span under way began (wall ns) and its peer; at most `capacity` (a start
  /// beyond is not timed: its event starts when it ends).
  private var begun: [SpanKey: (UInt64, String)] = [:]
  struct SpanKey: Hashable { var id: ObjectID; var kind: Int32 }

  public init(capacity: Int = 10_000, enabled: Bool = true) {
    self.capacity = max(1, capacity); self.enabled = enabled
  }

  /// A span of `kind` began for `id` (a pull from `peer`, a spill, a restore).
  public mutating func began(_ id: ObjectID, _ kind: ObjectEventKind, wallNs: UInt64, peer: String = "") {
    guard enabled, begun.count < capacity else { return }
    begun[SpanKey(id: id, kind: kind.rawValue)] = (wallNs, peer)
  }

  /// `kind` happened to `id` (ending its span: the one `began` noted, or from `startNs`).
  public mutating func record(_ id: ObjectID, _ kind: ObjectEventKind, size: Int, wallNs: UInt64, peer: String = "",
                              startNs: UInt64? = nil) {
    guard enabled else { return }
    let start = begun.removeValue(forKey: SpanKey(id: id, kind: (kind == .pullFailed ? ObjectEventKind.pulled : kind).rawValue))
      ?? startNs.map { ($0, "") }
    var e = Swiftray_ObjectEvent()
    e.objectID = Data(id.binary)
    e.kind = kind.rawValue
    e.size = UInt64(max(0, size))
    e.startWallNs = start?.0 ?? wallNs
    e.endWallNs = wallNs
    e.peer = peer.isEmpty ? start?.1 ?? "" : String(peer.prefix(512))
    if events.count >= capacity {
      events.removeFirst()
      dropped &+= 1
    }
    events.append(e)
  }

  /// Everything recorded (at most `max`, the oldest first) and the dropped count.
  public mutating func take(max: Int) -> (events: [Swiftray_ObjectEvent], dropped: UInt64) {
    defer { dropped = 0 }
    let n = min(max, events.count)
    let out = Array(events.prefix(n))
    events.removeFirst(n)
    return (out, dropped)
  }
}

/// The head's object events: the newest `capacity`, from every node. Pure.
///
/// Threading: a value type; the ControlService holds it under a lock.
public struct ObjectEventTable: Sendable {
  public struct Entry: Sendable {
    public var node: Data
    public var event: Swiftray_ObjectEvent
  }
  public private(set) var entries: Deque<Entry> = []
  public private(set) var evicted: UInt64 = 0
  public private(set) var droppedAtNodes: UInt64 = 0
  public let capacity: Int

  public init(capacity: Int = 100_000) { self.capacity = max(1, capacity) }

  public static let columns = ["object_id", "event", "object_size", "node_id", "node_ip", "peer", "start_time_ms", "end_time_ms"]

  public mutating func apply(node: Data, _ events: [Swiftray_ObjectEvent], dropped: UInt64) {
    droppedAtNodes &+= dropped
    for e in events {
      if entries.count >= capacity {
        entries.removeFirst()
        evicted &+= 1
      }
      entries.append(Entry(node: node, event: e))
    }
  }

  /// One row (newest first is the caller's order).
  public static func row(_ e: Entry, nodeIP: (Data) -> String) -> StateRow {
    let kind = ObjectEventKind(rawValue: e.event.kind)
    return StateRow([
      ("object_id", .hex(e.event.objectID)), ("event", .string(kind?.rayName ?? "UNKNOWN")),
      ("object_size", .int(Int64(clamping: e.event.size))), ("node_id", .hex(e.node)), ("node_ip", .string(nodeIP(e.node))),
      ("peer", e.event.peer.isEmpty ? .null : .string(e.event.peer)),
      ("start_time_ms", .int(Int64(clamping: e.event.startWallNs / 1_000_000))),
      ("end_time_ms", .int(Int64(clamping: e.event.endWallNs / 1_000_000))),
    ])
  }

  /// Chrome-trace spans of pulls, spills and restores: a row per node's store, in the
  /// node's process (`pidOf`: the trace's process number of a node, made on first use).
  public func timeline(pidOf: (Data) -> Int64) -> [StateValue] {
    var out: [StateValue] = []
    var named = Set<Int64>()
    for e in entries {
      guard let kind = ObjectEventKind(rawValue: e.event.kind), kind.isSpan else { continue }
      let pid = pidOf(e.node)
      if named.insert(pid).inserted {
        out.append(.object([("name", .string("thread_name")), ("ph", .string("M")), ("pid", .int(pid)), ("tid", .int(0)),
                            ("args", .object([("name", .string("object store"))]))]))
      }
      let start = e.event.startWallNs, end = max(e.event.endWallNs, start)
      let name = "\(kind.rayName.lowercased()) \(Hex.encode(e.event.objectID).prefix(12))"
      out.append(.object([
        ("cat", .string("object::\(kind.rayName.lowercased())")), ("name", .string(name)), ("ph", .string("X")),
        ("pid", .int(pid)), ("tid", .int(0)),
        ("ts", .double(Double(start) / 1000)), ("dur", .double(Double(end - start) / 1000)),
        ("args", .object([("object_id", .hex(e.event.objectID)), ("object_size", .int(Int64(clamping: e.event.size))),
                          ("peer", .string(e.event.peer)), ("node_id", .hex(e.node))])),
      ]))
    }
    return out
  }
}
