import DequeModule
import Foundation

/// The head's recent worker (and driver) exits, numbered, so each node can ask for the
/// ones after the last it saw and pass them to its processes: owners drop dead
/// borrowers (a borrower that dies never removes its registrations itself). Bounded:
/// a node that falls more than `kept` exits behind misses the oldest — their objects
/// then stay until their owner exits, as before this log.
///
/// Threading: value type, owned by the ControlService under its lock.
public struct WorkerDeathLog: Sendable {
  public static let kept = 10_000
  /// Exits in one answer: a node far behind catches up over several report periods.
  public static let maxPerAnswer = 1_000

  /// This log's id: a restarted head starts a new log (its numbers start again).
  public let id: UInt64
  private var entries: Deque<Data> = []
  /// The number of `entries.first`.
  private var first: UInt64 = 0

  public init(id: UInt64 = UInt64.random(in: 1...UInt64.max)) { self.id = id }

  /// The number the next exit will get.
  public var end: UInt64 { first + UInt64(entries.count) }

  public mutating func died(_ worker: Data) {
    guard WorkerID(binary: worker) != nil else { return }  // a peer's bytes
    entries.append(worker)
    if entries.count > Self.kept {
      entries.removeFirst()
      first += 1
    }
  }

  /// The exits a node that saw `log`'s entries up to `next` has not seen, and where it
  /// goes on from. Any peer's numbers are taken: another log (a restarted head) starts
  /// from the first entry kept, a number past the end gets nothing, one from before the
  /// first entry kept starts at that entry.
  public func since(log: UInt64, next: UInt64) -> (workers: [Data], next: UInt64) {
    let from = log == id ? min(max(next, first), end) : first
    let n = Int(min(end - from, UInt64(Self.maxPerAnswer)))
    let start = Int(from - first)
    return (Array(entries[start..<(start + n)]), from + UInt64(n))
  }
}
