import Foundation

/// The owner's side of streaming generators (`num_returns="streaming"`): for each such
/// task submitted here, which items its worker reported, how many the reader took,
/// where the stream ends, and the worker waiting for the reader (back-pressure).
///
/// Items are counted from 0; item i is the task's return i+1 (return 0 is the stream's
/// end). A retried attempt reports its items again: the first report of each index is
/// kept, later ones are duplicates, so the reader never sees an item twice.
///
/// `Poller` is the shell's handle on a worker's pending `WaitGeneratorConsumed` request,
/// opaque here.
///
/// Threading: a value type, kept inside `OwnerState` under its lock; nothing here
/// blocks or reads a clock.
public struct GeneratorStreams<Poller: Sendable>: Sendable {
  /// An index this far past the reader is refused: a peer cannot make the owner keep
  /// an unbounded set of out-of-order indexes.
  public static var maxIndexAhead: Int { 1 << 20 }
  /// Pending back-pressure waits per stream (one worker runs an attempt at a time; a
  /// few more for a stale attempt's).
  public static var maxPollers: Int { 8 }
  /// The largest item index an ObjectID can name (return index i+1 below the put flag).
  public static var maxIndex: Int { Int(Int32.max) - 2 }

  struct Stream {
    /// Items 0..<contiguous all arrived.
    var contiguous = 0
    /// Arrived past a gap (a report of an older attempt that overtook one of the new).
    var ahead: Set<Int> = []
    /// Taken by the reader (handed out in order).
    var consumed = 0
    /// The task ended: with `total` items, or (nil) with an error after them.
    var ended = false
    var total: Int?
    /// The reader dropped its generator: items arriving from now on are not kept.
    var closed = false
    /// The error of a failed stream was handed to the reader.
    var errorTaken = false
    var pollers: [(id: UInt64, want: Int, poller: Poller)] = []
  }

  var streams: [TaskID: Stream] = [:]
  var nextPollID: UInt64 = 1

  public init() {}

  public var count: Int { streams.count }
  public func isStreaming(_ tid: TaskID) -> Bool { streams[tid] != nil }

  /// A streaming task was submitted here.
  public mutating func started(_ tid: TaskID) { streams[tid] = Stream() }

  public enum Report: Equatable, Sendable {
    /// Keep it: hold it for the reader.
    case new
    /// Reported before (a retried attempt), or the reader dropped the generator: not kept.
    case notKept
    case refused(String)
  }

  /// The worker reported item `index`.
  public mutating func itemReported(_ tid: TaskID, index: Int) -> Report {
    guard var s = streams[tid] else {
      return .refused("task \(tid.hex) is no streaming generator of this owner (or its reader is gone)")
    }
    guard index >= 0, index <= Self.maxIndex else { return .refused("item index \(index) is out of range") }
    guard index < s.consumed + Self.maxIndexAhead else {
      return .refused("item \(index) is more than \(Self.maxIndexAhead) items past the reader (at \(s.consumed))")
    }
    if s.closed || s.ended || index < s.contiguous || s.ahead.contains(index) { return .notKept }
    if index == s.contiguous {
      s.contiguous += 1
      while s.ahead.remove(s.contiguous) != nil { s.contiguous += 1 }
    } else {
      s.ahead.insert(index)
    }
    streams[tid] = s
    return .new
  }

  /// (consumed, closed): what the worker is told after each report.
  public func progress(_ tid: TaskID) -> (consumed: Int, closed: Bool) {
    guard let s = streams[tid] else { return (0, true) }
    return (s.consumed, s.closed)
  }

  public enum Next: Equatable, Sendable {
    /// Item `index` is the reader's now (the stream's reference to it passes to the reader).
    case item(Int)
    /// The stream ended with an error: return 0 holds it (handed out once).
    case error
    /// No more items.
    case end
    /// The next item has not arrived and the task still runs.
    case notYet
  }

  /// The reader asks for its next item. Pollers whose wait is satisfied come back, to be
  /// answered with `progress`.
  public mutating func next(_ tid: TaskID) -> (Next, answer: [(UInt64, Poller)]) {
    guard var s = streams[tid], !s.closed else { return (.end, []) }
    if s.consumed < s.contiguous {
      let index = s.consumed
      s.consumed += 1
      let taken = s.consumed
      let due = s.pollers.filter { $0.want <= taken }
      s.pollers.removeAll { $0.want <= taken }
      streams[tid] = s
      return (.item(index), due.map { ($0.id, $0.poller) })
    }
    guard s.ended else { return (.notYet, []) }
    if s.total != nil || s.errorTaken { return (.end, []) }
    s.errorTaken = true
    streams[tid] = s
    return (.error, [])
  }

  /// How many items arrived in order (all of a stream that ended well).
  public func kept(_ tid: TaskID) -> Int? { streams[tid].map(\.contiguous) }

  /// The index the reader waits for (the item after what it took); nil once the stream
  /// ended or was dropped (no item is to come).
  public func awaited(_ tid: TaskID) -> Int? {
    guard let s = streams[tid], !s.ended, !s.closed else { return nil }
    return s.consumed
  }

  /// The task ended: `succeeded` (the stream is what arrived: its worker had every
  /// report acknowledged before it replied), or failed after the items that arrived
  /// (the reader then gets the error). Returns items kept past a gap (a stale attempt's,
  /// never to be read: their references are to be released) and the pollers to answer.
  public mutating func ended(_ tid: TaskID, succeeded: Bool) -> (dropped: [Int], answer: [(UInt64, Poller)]) {
    guard var s = streams[tid], !s.ended else { return ([], []) }
    s.ended = true
    s.total = succeeded ? s.contiguous : nil
    let dropped = s.ahead.sorted()
    s.ahead = []
    let due = s.pollers.map { ($0.id, $0.poller) }
    s.pollers = []
    if s.closed { streams[tid] = nil } else { streams[tid] = s }
    return (dropped, due)
  }

  /// The reader dropped its generator. Returns the indexes of items it never took (the
  /// stream's references to them are to be released) and the pollers to answer.
  public mutating func closed(_ tid: TaskID) -> (unconsumed: [Int], answer: [(UInt64, Poller)]) {
    guard var s = streams[tid], !s.closed else { return ([], []) }
    let unconsumed = Array(s.consumed..<s.contiguous) + s.ahead.sorted()
    s.closed = true
    s.ahead = []
    let due = s.pollers.map { ($0.id, $0.poller) }
    s.pollers = []
    if s.ended { streams[tid] = nil } else { streams[tid] = s }
    return (unconsumed, due)
  }

  public enum Poll: Sendable {
    /// Answer at once with `progress`.
    case now
    /// Held under this id: answered when the reader catches up, or by `pollExpired`.
    case held(UInt64)
  }

  /// The worker waits until the reader took `want` items.
  public mutating func pollStarted(_ tid: TaskID, want: Int, poller: Poller) -> Poll {
    guard var s = streams[tid], !s.closed, !s.ended, want > s.consumed, s.pollers.count < Self.maxPollers else {
      return .now
    }
    let id = nextPollID
    nextPollID &+= 1
    s.pollers.append((id, want, poller))
    streams[tid] = s
    return .held(id)
  }

  /// A held poll's time ran out: the poller, when it was still waiting.
  public mutating func pollExpired(_ tid: TaskID, id: UInt64) -> Poller? {
    guard var s = streams[tid], let i = s.pollers.firstIndex(where: { $0.id == id }) else { return nil }
    let p = s.pollers.remove(at: i).poller
    streams[tid] = s
    return p
  }
}
