import DequeModule
import Foundation
import RuntimeProto
import SwiftProtobuf

/// Lanes (DESIGN §5, "the hot path"): a second, lean way to push a task to a worker of
/// the same node and get its reply, beside the NIO data plane. A lane is a Unix socket
/// between an owner and a worker (`w-<id>.lane` next to the worker's `w-<id>.sock`),
/// read and written by the threads that need it, not through an event loop: the
/// submitting thread writes its frame itself, the worker's task thread polls its lanes
/// itself and writes its reply itself, and the owner's lane reactor reads replies. A
/// sync call then costs three thread wake-ups instead of six (each one is tens of
/// microseconds on a virtual machine).
///
/// The bytes are the data plane's: a connection opens with the `AuthGate` preamble
/// (4-byte big-endian length, `"SRA1"`, the cluster token), then length-prefixed
/// `DataFrame`s. Only `pushTask` and `cancelTask` travel on a lane; anything else gets
/// an error reply.
public enum Lane {
  /// The lane of the worker whose data-plane endpoint is `endpoint` (a worker's Unix
  /// socket on this node), or nil.
  public static func path(forWorker endpoint: Endpoint) -> String? {
    guard case .unix(let p) = endpoint, p.hasSuffix(".sock"),
          (p as NSString).lastPathComponent.hasPrefix("w-") else { return nil }
    return String(p.dropLast(5)) + ".lane"
  }

  /// `frame` encoded with its length in front, or nil when it cannot be encoded.
  /// Encoded straight behind its length (`LengthPrefixed`): one buffer, no copy.
  public static func encode(_ frame: Swiftray_DataFrame) -> [UInt8]? {
    if let bytes = encodedByHand(frame) { return bytes }
    guard let framed: LengthPrefixed = try? frame.serializedBytes(partial: true), framed.fits else { return nil }
    return framed.bytes
  }

  /// A push or a task's reply written by hand whole (`WireWriter`) behind its length:
  /// SwiftProtobuf sizes a nested message once more for every level above it, and a
  /// spec is a tree two levels down. Nil for any other frame, and for one with fields
  /// this build does not know (`encode` then has SwiftProtobuf write it).
  public static func encodedByHand(_ frame: Swiftray_DataFrame) -> [UInt8]? {
    switch frame.body {
    case .pushTask(let req)?: return framed(frame, bodyField: 10) { $0.pushTaskRequest(req) }
    case .pushTaskReply(let reply)?: return framed(frame, bodyField: 11) { $0.pushTaskReply(reply) }
    default: return nil
    }
  }

  /// `frame`'s own fields, then its body as field `bodyField` written by `body` (run
  /// once to count, once to write), all behind the frame's length.
  private static func framed(_ frame: Swiftray_DataFrame, bodyField: UInt64,
                             _ body: (inout WireWriter) -> Bool) -> [UInt8]? {
    var count = WireWriter.counting()
    guard count.frameHead(frame), count.message(bodyField, body) else { return nil }
    let total = count.size
    guard total <= Int(UInt32.max) else { return nil }
    return WireWriter.written(count: 4 + total, lengths: count.lengths) { w in
      withUnsafeBytes(of: UInt32(total).bigEndian) { w.raw($0) }
      return w.frameHead(frame) && w.message(bodyField, body)
    }
  }

  public static func lengthPrefixed(_ body: [UInt8]) -> [UInt8] {
    var out = [UInt8]()
    out.reserveCapacity(4 + body.count)
    withUnsafeBytes(of: UInt32(body.count).bigEndian) { out.append(contentsOf: $0) }
    out.append(contentsOf: body)
    return out
  }

  /// A frame's bytes (its length already cut off) decoded, or nil when they are not a
  /// frame. A task pushed and a task's reply are read by hand (`WireReader`), anything
  /// else by SwiftProtobuf.
  public static func decode(_ bytes: ArraySlice<UInt8>) -> Swiftray_DataFrame? {
    bytes.withUnsafeBytes { raw in
      WireReader.frame(raw) ?? (try? Swiftray_DataFrame(serializedBytes: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!), count: raw.count, deallocator: .none)))
    }
  }

  /// A new non-blocking, close-on-exec Unix stream socket connected to `path`, with the
  /// preamble written; nil when nothing listens there (the caller uses the data plane).
  static func connect(_ path: String, auth: ClusterAuth) -> LaneSocket? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return nil }
    guard withSocketAddress(path, { Glibc.connect(fd, $0, $1) }) == 0 else { Glibc.close(fd); return nil }
    let lane = LaneSocket(fd: fd)
    guard case .sent = lane.write(lengthPrefixed(AuthGate.preamble(auth))) else { return nil }
    return lane
  }

  /// Calls `body` with `path` as a `sockaddr_un`; -1 when the path does not fit.
  static func withSocketAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return -1 }
    withUnsafeMutableBytes(of: &addr.sun_path) { dst in
      for (i, b) in bytes.enumerated() { dst[i] = b }
      dst[bytes.count] = 0
    }
    return withUnsafePointer(to: &addr) { p in
      p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
  }
}

/// A protobuf encoding with room for its 4-byte big-endian length in front: SwiftProtobuf
/// sizes the buffer once and encodes into the part behind the length, so a frame is
/// one allocation and no copy. Threading: a value.
struct LengthPrefixed: SwiftProtobufContiguousBytes {
  private(set) var bytes: [UInt8]
  /// The body's length fits the 4-byte prefix.
  var fits: Bool { bytes.count - 4 <= Int(UInt32.max) }

  init(repeating: UInt8, count: Int) {
    bytes = [UInt8](repeating: repeating, count: 4 + count)
    bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(truncatingIfNeeded: count).bigEndian, toByteOffset: 0, as: UInt32.self) }
  }
  init<S: Sequence>(_ sequence: S) where S.Element == UInt8 {
    let body = Array(sequence)
    self.init(repeating: 0, count: body.count)
    bytes.replaceSubrange(4..., with: body)
  }
  var count: Int { bytes.count - 4 }
  func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
    try bytes.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[4...])) }
  }
  mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
    try bytes.withUnsafeMutableBytes { try body(UnsafeMutableRawBufferPointer(rebasing: $0[4...])) }
  }
}

/// Cuts a byte stream into length-prefixed frames, each at most `max` bytes.
/// A pure value: tested on its own (`LaneTests`). Threading: one reader at a time.
public struct FrameReader {
  public enum Next: Equatable { case frame(ArraySlice<UInt8>), incomplete, tooLarge(UInt32) }
  public var max: Int
  private var buffer: [UInt8] = []
  private var start = 0

  public init(max: Int) { self.max = max }

  /// Bytes received and not yet handed out as frames.
  public var buffered: Int { buffer.count - start }
  /// Bytes of storage the reader holds (tests: it stays bounded).
  public var storageCapacity: Int { buffer.capacity }

  /// Storage up to this size is kept for the next frames once all are read; a larger
  /// one (a large frame's) is let go.
  static let keptCapacity = 1 << 20

  /// Bytes one `receive` reads at most.
  public static let scratchBytes = 65536
  /// Where `receive` reads: kept from read to read (a 64 KiB array made and freed per
  /// read cost an allocation, and its free made malloc consolidate its fast bins).
  private var scratch: [UInt8] = []
  /// What one `receive` reads: `scratchBytes`, less while `max` is small (a connection
  /// not yet authenticated keeps 4 KiB, not 64, however many a peer opens). `max` is
  /// capped before the length prefix is added, so no limit can overflow it.
  public var scratchSize: Int { Swift.max(Swift.min(max, Self.scratchBytes - 4), 4092) + 4 }

  /// Appends what `read` puts into the buffer it is given (`scratchSize` long) and
  /// returns what `read` returned (the bytes read, or 0 or less for none).
  public mutating func receive(_ read: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
    var s: [UInt8] = []
    swap(&s, &scratch)
    if s.count != scratchSize { s = [UInt8](repeating: 0, count: scratchSize) }
    let n = s.withUnsafeMutableBytes { read($0) }
    if n > 0 { s.withUnsafeBytes { append(UnsafeRawBufferPointer(rebasing: $0[0..<Swift.min(n, $0.count)])) } }
    scratch = s
    return n
  }

  public mutating func append(_ bytes: UnsafeRawBufferPointer) {
    if start > 0, start == buffer.count {
      // Every frame handed out (they are valid until this call, so none holds the
      // storage now): start over in place. Emptying the buffer in `next`, while the
      // frame it returns still held the storage, made each frame allocate storage of
      // the buffer's whole capacity, and that capacity crept up a page per frame.
      if buffer.capacity > Self.keptCapacity { buffer = [] } else { buffer.removeAll(keepingCapacity: true) }
      start = 0
    } else if start > 0, start >= buffer.count - start {
      // Handed-out frames are dropped from the front only once they are the larger
      // part, so a stream of small frames never moves the buffer per frame.
      buffer.removeSubrange(0..<start)
      start = 0
    }
    buffer.append(contentsOf: bytes)
  }

  /// The next whole frame (valid until the next `append`), `.incomplete` until one has
  /// arrived, or `.tooLarge` with the length a peer announced beyond `max` (the caller
  /// closes the connection: nothing after it can be framed).
  public mutating func next() -> Next {
    guard buffer.count - start >= 4 else { return .incomplete }
    let length = buffer.withUnsafeBytes { UInt32(bigEndian: $0.loadUnaligned(fromByteOffset: start, as: UInt32.self)) }
    guard UInt64(length) <= UInt64(max) else { return .tooLarge(length) }
    let end = start + 4 + Int(length)
    guard buffer.count >= end else { return .incomplete }
    let frame = buffer[(start + 4)..<end]
    start = end
    return .frame(frame)
  }
}

/// One end of a lane: a non-blocking socket that any thread may write to, and one
/// thread at a time reads from.
///
/// Threading: `write`/`flush`/`close` from any thread (never block: what the socket
/// does not take now waits in `pending` for `flush`, which the lane's poller calls
/// when the socket is writable again); `read` from the one thread that polls this lane.
final class LaneSocket: Sendable {
  enum WriteResult: Equatable { case sent, queued, closed }
  enum ReadResult: Equatable { case data, wouldBlock, closed }

  struct Output {
    /// Frames accepted by `write` and not yet taken by the socket, in order; the first
    /// may be partly sent already (`sentOfFirst`). Frames, not one byte array, so a
    /// socket that takes a little at a time never makes the rest be copied again.
    var pending: Deque<[UInt8]> = []
    var sentOfFirst = 0
    /// A thread is sending now: others append behind it, and it sends theirs too.
    var writing = false
    var closed = false
    /// Frames wait on purpose (`hold`), not for the socket: its poller leaves them.
    var holding = false

    /// Up to `limit` bytes of frames from the front, for the thread that sends them.
    mutating func take(limit: Int = 1 << 20) -> [ArraySlice<UInt8>] {
      var out: [ArraySlice<UInt8>] = []
      var size = 0
      holding = false
      while size < limit, let first = pending.popFirst() {
        out.append(first[sentOfFirst...])
        size += first.count - sentOfFirst
        sentOfFirst = 0
      }
      return out
    }
  }

  let fd: Int32
  let output = Locked(Output())

  init(fd: Int32) { self.fd = fd }

  /// True while bytes wait for the socket to become writable.
  var wantsWrite: Bool { output.withLock { !$0.pending.isEmpty && !$0.writing && !$0.closed && !$0.holding } }

  /// Sends `bytes` after everything written before; returns at once.
  @discardableResult
  func write(_ bytes: [UInt8]) -> WriteResult {
    let mine: [ArraySlice<UInt8>]? = output.withLock { o in
      if o.closed { return nil }
      if o.writing { o.pending.append(bytes); return [] }
      o.writing = true
      if o.pending.isEmpty { return [bytes[...]] }
      // Held frames (`hold`), or the rest of a send that would have blocked: in order.
      o.pending.append(bytes)
      return o.take()
    }
    guard let mine else { return .closed }
    return mine.isEmpty ? .queued : send(mine)
  }

  /// Queues `bytes` behind what waits without sending: a reply held while more tasks are
  /// queued goes with the next one sent (`write`, `flush`), one send for several.
  @discardableResult
  func hold(_ bytes: [UInt8]) -> WriteResult {
    output.withLock { o in
      if o.closed { return .closed }
      o.pending.append(bytes)
      o.holding = true
      return .queued
    }
  }

  /// Runs of small frames joined into one buffer each, so one `send` takes them all.
  static func coalesced(_ frames: [ArraySlice<UInt8>], limit: Int = 64 << 10) -> [ArraySlice<UInt8>] {
    var out: [ArraySlice<UInt8>] = []
    var run: [UInt8] = []
    for f in frames {
      if f.count >= limit {
        if !run.isEmpty { out.append(run[...]); run = [] }
        out.append(f)
        continue
      }
      if run.count + f.count > limit { out.append(run[...]); run = [] }
      if run.isEmpty { run.reserveCapacity(min(limit, frames.count * f.count)) }
      run.append(contentsOf: f)
    }
    if !run.isEmpty { out.append(run[...]) }
    return out
  }

  /// Sends what waits (the poller saw the socket writable).
  @discardableResult
  func flush() -> WriteResult {
    let mine: [ArraySlice<UInt8>]? = output.withLock { o in
      if o.closed { return nil }
      if o.writing || o.pending.isEmpty { return [] }
      o.writing = true
      return o.take()
    }
    guard let mine else { return .closed }
    if mine.isEmpty { return .sent }
    return send(mine)
  }

  /// Sends `frames` and whatever others queued meanwhile, until the socket would block
  /// (the unsent rest goes back to the front of `pending`). Holds the writing role.
  private func send(_ first: [ArraySlice<UInt8>]) -> WriteResult {
    var frames = first
    while true {
      if frames.count > 1 { frames = Self.coalesced(frames) }
      var index = 0
      var offset = 0
      var broken = false
      sending: while index < frames.count {
        let done: Bool = frames[index].withUnsafeBytes { raw in
          while offset < raw.count {
            let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            if n > 0 { offset += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return false }
            broken = true
            return false
          }
          return true
        }
        guard done else { break sending }
        index += 1
        offset = 0
      }
      let unsent = frames[index...]
      let sentOfFirst = offset
      let next: (WriteResult?, [ArraySlice<UInt8>]) = output.withLock { o in
        if broken || o.closed {
          o.writing = false
          o.closed = true
          o.pending = []
          return (.closed, [])
        }
        if !unsent.isEmpty {
          // Back to the front, in order; the first of them partly sent.
          for f in unsent.reversed() { o.pending.prepend(Array(f)) }
          o.sentOfFirst = sentOfFirst
          o.writing = false
          // Now they wait for the socket, frames held meanwhile with them: its poller sends.
          o.holding = false
          return (.queued, [])
        }
        if o.pending.isEmpty { o.writing = false; return (.sent, []) }
        return (nil, o.take())
      }
      if let result = next.0 { return result }
      frames = next.1
    }
  }

  /// Reads what has arrived into `reader` (at most 1 MiB per call, so one busy lane
  /// does not starve the others).
  func read(into reader: inout FrameReader) -> ReadResult {
    var got = false
    for _ in 0..<16 {
      let n = reader.receive { Glibc.recv(fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
      if n > 0 {
        got = true
        if n < reader.scratchSize { return .data }
        continue
      }
      if n < 0 && errno == EINTR { continue }
      if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return got ? .data : .wouldBlock }
      return .closed
    }
    return .data
  }

  /// Closes the socket once; later writes answer `.closed`.
  func close() {
    let first = output.withLock { o in
      defer { o.closed = true; o.pending = [] }
      return !o.closed
    }
    if first { shutdown(fd, Int32(SHUT_RDWR)) }
  }

  /// The descriptor is freed only with the last reference (a responder may still hold
  /// this lane), so a write never lands on a reused descriptor number; `close` already
  /// ended the connection. Its poller stops polling it before letting go.
  deinit { Glibc.close(fd) }
}
