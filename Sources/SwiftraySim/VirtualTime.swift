import HeapModule
import Runtime

/// The simulation's random source: one seed for the whole run.
typealias SimRandom = SeededRandom

extension SeededRandom {
  mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
  mutating func between(_ lo: UInt64, _ hi: UInt64) -> UInt64 { UInt64.random(in: lo...hi, using: &self) }
}

/// Virtual time: events run in (time, sequence) order; nothing else moves the clock.
/// Messages on one channel (a connection) keep their order; channels reorder freely.
/// A trace of the last events is kept for a failure's report.
///
/// Threading: single-threaded (the simulation's one thread).
struct VirtualTime {
  struct Scheduled: Comparable {
    let time: UInt64
    let seq: UInt64
    let label: String
    let run: () -> Void
    static func < (a: Scheduled, b: Scheduled) -> Bool { (a.time, a.seq) < (b.time, b.seq) }
    static func == (a: Scheduled, b: Scheduled) -> Bool { (a.time, a.seq) == (b.time, b.seq) }
  }

  private(set) var now: UInt64 = 0
  private var queue = Heap<Scheduled>()
  private var seq: UInt64 = 0
  private var channelTail: [String: UInt64] = [:]
  private(set) var trace: [String] = []
  private(set) var steps = 0
  static let traceLength = 40

  var isEmpty: Bool { queue.isEmpty }
  var pending: Int { queue.count }

  mutating func at(_ time: UInt64, _ label: String, _ run: @escaping () -> Void) {
    seq += 1
    queue.insert(Scheduled(time: max(time, now), seq: seq, label: label, run: run))
  }

  mutating func after(_ delay: UInt64, _ label: String, _ run: @escaping () -> Void) { at(now &+ delay, label, run) }

  /// A message on `channel`, delivered after `delay` but never before the one sent on
  /// the same channel before it.
  mutating func send(on channel: String, delay: UInt64, _ label: String, _ run: @escaping () -> Void) {
    let t = max(now &+ delay, channelTail[channel] ?? 0)
    channelTail[channel] = t
    at(t, label, run)
  }

  /// Pops the next event (advancing the clock to it) for the caller to run.
  mutating func next() -> Scheduled? {
    guard let e = queue.popMin() else { return nil }
    now = e.time
    steps += 1
    trace.append("t=\(Double(now) / 1e6)ms \(e.label)")
    if trace.count > Self.traceLength * 2 { trace.removeFirst(trace.count - Self.traceLength) }
    return e
  }

  func lastEvents() -> [String] { Array(trace.suffix(Self.traceLength)) }
}
