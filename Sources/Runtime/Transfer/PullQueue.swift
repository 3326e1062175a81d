import Foundation

/// Pulls of objects from other nodes' stores (DESIGN §4) as a pure state machine: which
/// chunk requests to send so that at most `maxBytesInFlight` bytes are requested and
/// not yet written, the oldest pull served first, and when a pull is complete or failed.
/// The shell (`ObjectStore`) sends the requests, writes each chunk into the object's
/// extent and reports it here.
///
/// Threading: value type, owned by its shell under a lock.
public struct PullQueue: Sendable {
  public struct Config: Sendable, Equatable {
    /// Ray's object manager uses 5 MiB chunks.
    public var chunkSize: Int
    /// Bytes requested but not yet arrived, across all pulls.
    public var maxBytesInFlight: Int
    /// A chunk not answered within this fails its pull, naming the store asked.
    public var chunkTimeoutMs: Int
    public init(chunkSize: Int = 5 << 20, maxBytesInFlight: Int = 64 << 20, chunkTimeoutMs: Int = 10_000) {
      self.chunkSize = max(1, chunkSize); self.maxBytesInFlight = max(1, maxBytesInFlight)
      self.chunkTimeoutMs = max(1, chunkTimeoutMs)
    }
  }

  public struct Chunk: Sendable, Equatable {
    public var id: ObjectID
    public var source: String
    public var offset: Int
    public var length: Int
  }

  public enum Action: Sendable, Equatable {
    case request(Chunk)
    /// Every byte arrived: seal the copy.
    case complete(ObjectID)
    /// Give up: drop the half-written copy and fail whoever waits with this reason.
    case fail(ObjectID, String)
  }

  struct Pull: Sendable {
    var size: Int
    var source: String
    var next = 0        // offset of the first chunk not yet requested
    var received = 0    // bytes arrived
    var inFlight = 0    // bytes requested, not arrived
    var failure: String?  // failed; waiting for its chunks in flight
  }

  public let config: Config
  private var pulls: [ObjectID: Pull] = [:]
  /// Pulls in start order: chunks are requested for the oldest first.
  private var order: [ObjectID] = []
  public private(set) var bytesInFlight = 0

  public init(config: Config = Config()) { self.config = config }

  public func isActive(_ id: ObjectID) -> Bool { pulls[id] != nil }
  public var activePulls: Int { pulls.count }

  /// A copy of `size` bytes of `id` is to be pulled from the store at `source` (its
  /// extent is reserved by the caller).
  public mutating func started(_ id: ObjectID, size: Int, source: String) -> [Action] {
    guard pulls[id] == nil else { return [] }
    pulls[id] = Pull(size: size, source: source)
    order.append(id)
    if size <= 0 { return finish(id) }
    return issue()
  }

  /// `length` bytes at `offset` of `id` were written into its extent.
  public mutating func chunkArrived(_ id: ObjectID, offset: Int, length: Int) -> [Action] {
    guard var p = pulls[id] else { return [] }
    p.inFlight -= length
    p.received += length
    bytesInFlight -= length
    pulls[id] = p
    if p.failure != nil { return settleFailure(id) }
    if p.received >= p.size { return finish(id) + issue() }
    return issue()
  }

  /// A chunk request of `id` failed (source gone, object missing there): the pull
  /// fails once its other chunks in flight have come back, since until then a late
  /// chunk may still be written into the extent the caller would release.
  public mutating func chunkFailed(_ id: ObjectID, length: Int, reason: String) -> [Action] {
    guard var p = pulls[id] else { return [] }
    p.inFlight -= length
    bytesInFlight -= length
    if p.failure == nil { p.failure = reason }
    pulls[id] = p
    return settleFailure(id)
  }

  // MARK: internals

  private mutating func settleFailure(_ id: ObjectID) -> [Action] {
    guard let p = pulls[id], let reason = p.failure, p.inFlight <= 0 else { return issue() }
    pulls[id] = nil
    order.removeAll { $0 == id }
    return [.fail(id, reason)] + issue()
  }

  private mutating func finish(_ id: ObjectID) -> [Action] {
    pulls[id] = nil
    order.removeAll { $0 == id }
    return [.complete(id)]
  }

  /// Requests chunks, oldest pull first, while the budget allows (one chunk always may
  /// go when nothing is in flight, so a chunk size above the budget cannot stall).
  private mutating func issue() -> [Action] {
    var out: [Action] = []
    for id in order {
      guard var p = pulls[id], p.failure == nil else { continue }
      while p.next < p.size {
        let len = min(config.chunkSize, p.size - p.next)
        guard bytesInFlight == 0 || bytesInFlight + len <= config.maxBytesInFlight else {
          pulls[id] = p
          return out
        }
        out.append(.request(Chunk(id: id, source: p.source, offset: p.next, length: len)))
        p.next += len
        p.inFlight += len
        bytesInFlight += len
      }
      pulls[id] = p
    }
    return out
  }
}
