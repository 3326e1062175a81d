import Foundation
import RuntimeProto
import SwiftProtobuf

/// Protobuf's binary wire format written by hand, for the frames of the hot path (a
/// task's reply, the head of every lane frame). SwiftProtobuf sizes a nested message
/// once more for every level above it and goes through a visitor per field; a reply
/// is three levels deep, so that cost more than the bytes. Here each level is counted
/// with a plain integer pass and written once.
///
/// Threading: a value type, used by one thread.
///
/// The output decodes as the message written would: fields at their defaults are
/// skipped as SwiftProtobuf skips them, a set sub-message is written even when empty.
/// A message with unknown fields is not written here (the callers fall back to
/// SwiftProtobuf), so nothing decoded from a newer peer is dropped; a field added to
/// one of these messages and not here fails `LaneTests`' every-field round trip.
struct WireWriter {
  /// Bytes written (or, counting, that would be).
  private(set) var size = 0
  /// Nil while only counting.
  private(set) var bytes: [UInt8]?

  static func counting() -> WireWriter { WireWriter(size: 0, bytes: nil) }

  static func writing(capacity: Int) -> WireWriter {
    var out = [UInt8]()
    out.reserveCapacity(capacity)
    return WireWriter(size: 0, bytes: out)
  }

  mutating func byte(_ b: UInt8) {
    size += 1
    bytes?.append(b)
  }

  mutating func varint(_ value: UInt64) {
    var v = value
    while v >= 0x80 {
      byte(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    byte(UInt8(v))
  }

  mutating func key(_ field: UInt64, wireType: UInt8) { varint(field << 3 | UInt64(wireType)) }

  mutating func raw<C: Collection>(_ data: C) where C.Element == UInt8 {
    size += data.count
    bytes?.append(contentsOf: data)
  }

  mutating func uint64(_ field: UInt64, _ v: UInt64) {
    guard v != 0 else { return }
    key(field, wireType: 0)
    varint(v)
  }

  mutating func bool(_ field: UInt64, _ v: Bool) { uint64(field, v ? 1 : 0) }

  mutating func bytes(_ field: UInt64, _ d: Data, always: Bool = false) {
    guard always || !d.isEmpty else { return }
    key(field, wireType: 2)
    varint(UInt64(d.count))
    raw(d)
  }

  mutating func string(_ field: UInt64, _ s: String) {
    guard !s.isEmpty else { return }
    key(field, wireType: 2)
    varint(UInt64(s.utf8.count))
    raw(s.utf8)
  }

  /// A sub-message written by `body`, behind its length (counted first).
  mutating func message(_ field: UInt64, _ body: (inout WireWriter) -> Void) {
    var count = WireWriter.counting()
    body(&count)
    key(field, wireType: 2)
    varint(UInt64(count.size))
    if bytes == nil { size += count.size } else { body(&self) }
  }

  /// A sub-message SwiftProtobuf encodes (the rare ones: nested refs, addresses).
  mutating func message<M: SwiftProtobuf.Message>(_ field: UInt64, encoding m: M) -> Bool {
    guard let encoded: [UInt8] = try? m.serializedBytes(partial: true) else { return false }
    key(field, wireType: 2)
    varint(UInt64(encoded.count))
    raw(encoded)
    return true
  }
}

extension WireWriter {
  /// A frame's own fields (all but its body). False: it has fields this build does
  /// not know.
  mutating func frameHead(_ f: Swiftray_DataFrame) -> Bool {
    guard f.unknownFields.data.isEmpty else { return false }
    uint64(1, f.id)
    uint64(2, f.payloadSize)
    return true
  }

  /// A task's reply, whole. False: some part of it has fields this build does not know.
  mutating func pushTaskReply(_ r: Swiftray_PushTaskReply) -> Bool {
    guard r.unknownFields.data.isEmpty else { return false }
    var ok = true
    for ret in r.returns {
      guard ret.unknownFields.data.isEmpty, !ret.hasObject || ret.object.unknownFields.data.isEmpty else { return false }
      message(1) { w in
        w.bytes(1, ret.objectID)
        if ret.hasObject { w.message(2) { w in if !w.rayObject(ret.object) { ok = false } } }
      }
      guard ok else { return false }
    }
    bool(2, r.isApplicationError)
    bool(3, r.isRetryableError)
    bool(4, r.wasCancelled)
    string(5, r.actorCreationError)
    for lost in r.lostArguments { bytes(6, lost, always: true) }
    string(7, r.lostDetail)
    bool(8, r.handedBack)
    uint64(9, r.startedWallNs)
    uint64(10, r.endedWallNs)
    uint64(11, r.streamedItems)
    return true
  }

  /// A value as the core holds it. False: a nested ref could not be encoded.
  mutating func rayObject(_ o: Swiftray_RayObject) -> Bool {
    bytes(1, o.data)
    bytes(2, o.metadata)
    for ref in o.nestedRefs { guard message(3, encoding: ref) else { return false } }
    uint64(4, o.storeSize)
    bytes(5, o.storeNode)
    string(6, o.storeAddress)
    return true
  }
}

/// The reading side of `WireWriter`: a lane's most common frame, a task's reply, read
/// by hand. Anything it does not expect (another body, a field it does not know, a
/// sub-message met twice, which protobuf would merge, a varint past 64 bits, a length
/// past the end, a string that is not UTF-8) makes it return nil; the caller then
/// decodes with SwiftProtobuf, which takes or refuses the bytes as it always did. So
/// this decides nothing about what is valid: it only skips the visitor machinery for
/// the frames it recognises (`LaneTests` checks it agrees with SwiftProtobuf on
/// mutated frames).
///
/// Threading: a value type over bytes the caller keeps alive, used by one thread.
public struct WireReader {
  private let raw: UnsafeRawBufferPointer
  private var at = 0

  init(_ raw: UnsafeRawBufferPointer) { self.raw = raw }

  var atEnd: Bool { at >= raw.count }

  mutating func varint() -> UInt64? {
    var value: UInt64 = 0, shift: UInt64 = 0
    while at < raw.count {
      let b = raw[at]
      at += 1
      if shift == 63 && b > 1 { return nil }  // past 64 bits
      value |= UInt64(b & 0x7F) << shift
      if b < 0x80 { return value }
      shift += 7
      if shift > 63 { return nil }
    }
    return nil
  }

  mutating func key() -> (field: UInt64, wire: UInt64)? {
    guard let k = varint(), k >> 3 != 0 else { return nil }
    return (k >> 3, k & 7)
  }

  mutating func lengthDelimited() -> UnsafeRawBufferPointer? {
    guard let n = varint(), n <= UInt64(raw.count - at) else { return nil }
    let start = at
    at += Int(n)
    return UnsafeRawBufferPointer(rebasing: raw[start..<at])
  }

  mutating func data() -> Data? {
    guard let b = lengthDelimited() else { return nil }
    return b.isEmpty ? Data() : Data(bytes: b.baseAddress!, count: b.count)
  }

  mutating func string() -> String? {
    guard let b = lengthDelimited() else { return nil }
    return String(validating: b, as: UTF8.self)
  }

  /// Calls `field` for each field of the message in `raw`, with the reader at the
  /// field's value; false when a key cannot be read or `field` refuses its field.
  static func eachField(_ raw: UnsafeRawBufferPointer,
                        _ field: (inout WireReader, _ number: UInt64, _ wireType: UInt64) -> Bool) -> Bool {
    var r = WireReader(raw)
    while !r.atEnd {
      guard let (number, wire) = r.key(), field(&r, number, wire) else { return false }
    }
    return true
  }

  /// A frame whose body is a task's reply, or nil (see the type's comment).
  public static func replyFrame(_ raw: UnsafeRawBufferPointer) -> Swiftray_DataFrame? {
    var f = Swiftray_DataFrame()
    var body: Swiftray_PushTaskReply?
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 0): guard let v = r.varint() else { return false }; f.id = v
      case (2, 0): guard let v = r.varint() else { return false }; f.payloadSize = v
      case (11, 2):
        guard body == nil, let b = r.lengthDelimited(), let reply = pushTaskReply(b) else { return false }
        body = reply
      default: return false
      }
      return true
    }
    guard whole, let body else { return nil }
    f.body = .pushTaskReply(body)
    return f
  }

  static func pushTaskReply(_ raw: UnsafeRawBufferPointer) -> Swiftray_PushTaskReply? {
    var m = Swiftray_PushTaskReply()
    var returns: [Swiftray_ReturnObject] = [], lost: [Data] = []
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 2): guard let b = r.lengthDelimited(), let ret = returnObject(b) else { return false }; returns.append(ret)
      case (2, 0): guard let v = r.varint() else { return false }; m.isApplicationError = v != 0
      case (3, 0): guard let v = r.varint() else { return false }; m.isRetryableError = v != 0
      case (4, 0): guard let v = r.varint() else { return false }; m.wasCancelled = v != 0
      case (5, 2): guard let s = r.string() else { return false }; m.actorCreationError = s
      case (6, 2): guard let d = r.data() else { return false }; lost.append(d)
      case (7, 2): guard let s = r.string() else { return false }; m.lostDetail = s
      case (8, 0): guard let v = r.varint() else { return false }; m.handedBack = v != 0
      case (9, 0): guard let v = r.varint() else { return false }; m.startedWallNs = v
      case (10, 0): guard let v = r.varint() else { return false }; m.endedWallNs = v
      case (11, 0): guard let v = r.varint() else { return false }; m.streamedItems = v
      default: return false
      }
      return true
    }
    guard whole else { return nil }
    m.returns = returns
    m.lostArguments = lost
    return m
  }

  static func returnObject(_ raw: UnsafeRawBufferPointer) -> Swiftray_ReturnObject? {
    var m = Swiftray_ReturnObject()
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 2): guard let d = r.data() else { return false }; m.objectID = d
      case (2, 2):
        guard !m.hasObject, let b = r.lengthDelimited(), let o = rayObject(b) else { return false }
        m.object = o
      default: return false
      }
      return true
    }
    return whole ? m : nil
  }

  static func rayObject(_ raw: UnsafeRawBufferPointer) -> Swiftray_RayObject? {
    var m = Swiftray_RayObject()
    var refs: [Swiftray_ObjectReference] = []
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 2): guard let d = r.data() else { return false }; m.data = d
      case (2, 2): guard let d = r.data() else { return false }; m.metadata = d
      case (3, 2):
        guard let d = r.data(), let ref = try? Swiftray_ObjectReference(serializedBytes: d) else { return false }
        refs.append(ref)
      case (4, 0): guard let v = r.varint() else { return false }; m.storeSize = v
      case (5, 2): guard let d = r.data() else { return false }; m.storeNode = d
      case (6, 2): guard let s = r.string() else { return false }; m.storeAddress = s
      default: return false
      }
      return true
    }
    guard whole else { return nil }
    m.nestedRefs = refs
    return m
  }
}
