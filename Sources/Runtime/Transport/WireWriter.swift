import Foundation
import RuntimeProto
import SwiftProtobuf

/// Protobuf's binary wire format written by hand, for the frames of the hot path (a
/// task pushed and its reply). SwiftProtobuf sizes a nested message once more for
/// every level above it and goes through a visitor per field; a reply is three levels
/// deep and a push's spec deeper, so that cost more than the bytes. Here a message is counted
/// once, whole, with plain integer arithmetic (each sub-message's length noted in the
/// order met), then written once, the lengths read back in the same order.
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
  /// Where bytes go; nil while only counting. Writes past `capacity` are dropped
  /// (`overflowed`), so a count and a write that disagree cannot corrupt memory.
  private let out: UnsafeMutableRawPointer?
  private let capacity: Int
  /// The length of each sub-message, in the order `message` meets them: noted while
  /// counting, read back (from `nextLength`) while writing.
  private(set) var lengths: [Int]
  private var nextLength = 0

  static func counting() -> WireWriter {
    var lengths: [Int] = []
    lengths.reserveCapacity(16)  // a push with a few arguments: one allocation
    return WireWriter(out: nil, capacity: 0, lengths: lengths)
  }

  private init(out: UnsafeMutableRawPointer?, capacity: Int, lengths: [Int]) {
    self.out = out
    self.capacity = capacity
    self.lengths = lengths
  }

  /// True when more was written than `capacity`.
  var overflowed: Bool { out != nil && size > capacity }

  /// `count` bytes made by `body` writing from the start with the sub-message lengths
  /// a count of the same `body` noted, or nil when `body` refused, or did not write
  /// exactly `count` bytes and meet exactly those sub-messages.
  static func written(count: Int, lengths: [Int], _ body: (inout WireWriter) -> Bool) -> [UInt8]? {
    var whole = true
    let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
      var w = WireWriter(out: buffer.baseAddress.map { UnsafeMutableRawPointer($0) }, capacity: count, lengths: lengths)
      whole = body(&w) && !w.overflowed && w.size == count && w.nextLength == lengths.count
      // Everything is initialised when whole; otherwise the array is dropped empty.
      initialized = whole ? count : 0
    }
    return whole ? bytes : nil
  }

  mutating func byte(_ b: UInt8) {
    if let out, size < capacity { out.storeBytes(of: b, toByteOffset: size, as: UInt8.self) }
    size += 1
  }

  mutating func varint(_ value: UInt64) {
    guard out != nil else {
      size += Self.varintSize(value)
      return
    }
    var v = value
    while v >= 0x80 {
      byte(UInt8(truncatingIfNeeded: v) | 0x80)
      v >>= 7
    }
    byte(UInt8(v))
  }

  static func varintSize(_ v: UInt64) -> Int { (64 - (v | 1).leadingZeroBitCount + 6) / 7 }

  mutating func key(_ field: UInt64, wireType: UInt8) { varint(field << 3 | UInt64(wireType)) }

  /// `count` bytes from `source`.
  mutating func raw(_ source: UnsafeRawBufferPointer) {
    if let out, let base = source.baseAddress, source.count <= capacity - size {
      (out + size).copyMemory(from: base, byteCount: source.count)
    }
    size += source.count
  }

  mutating func raw(_ d: Data) {
    if out == nil { size += d.count } else { d.withUnsafeBytes { raw($0) } }
  }

  mutating func raw(_ s: String) {
    var s = s
    if out == nil { size += s.utf8.count } else { s.withUTF8 { raw(UnsafeRawBufferPointer($0)) } }
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
    raw(s)
  }

  mutating func int32(_ field: UInt64, _ v: Int32) { uint64(field, UInt64(bitPattern: Int64(v))) }

  mutating func int64(_ field: UInt64, _ v: Int64) { uint64(field, UInt64(bitPattern: v)) }

  /// A sub-message written by `body`, behind its length. False: `body` refused its
  /// message, or (writing) wrote other than the length counted for it.
  @discardableResult
  mutating func message(_ field: UInt64, _ body: (inout WireWriter) -> Bool) -> Bool {
    if out == nil {
      // Counted in place; the slot noted first, so lengths stay in the order met.
      let slot = lengths.count
      lengths.append(0)
      let start = size
      guard body(&self) else { return false }
      let length = size - start
      lengths[slot] = length
      key(field, wireType: 2)
      varint(UInt64(length))
      return true
    }
    guard nextLength < lengths.count else { return false }
    let length = lengths[nextLength]
    nextLength += 1
    key(field, wireType: 2)
    varint(UInt64(length))
    let start = size
    return body(&self) && size - start == length
  }

  /// A sub-message SwiftProtobuf encodes (the rare one: an actor's creation options).
  mutating func message<M: SwiftProtobuf.Message>(_ field: UInt64, encoding m: M) -> Bool {
    guard let encoded: [UInt8] = try? m.serializedBytes(partial: true) else { return false }
    key(field, wireType: 2)
    varint(UInt64(encoded.count))
    encoded.withUnsafeBytes { raw($0) }
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
    bool(3, f.moreInFlight)
    return true
  }

  /// A task's reply, whole. False: some part of it has fields this build does not know.
  mutating func pushTaskReply(_ r: Swiftray_PushTaskReply) -> Bool {
    guard r.unknownFields.data.isEmpty else { return false }
    for ret in r.returns {
      // Taken out of its parent once, not once per pass.
      let object = ret.hasObject ? ret.object : nil
      guard message(1, { w in
        guard ret.unknownFields.data.isEmpty else { return false }
        w.bytes(1, ret.objectID)
        return object.map { o in w.message(2) { $0.rayObject(o) } } ?? true
      }) else { return false }
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

  /// A value as the core holds it. False: it has fields this build does not know.
  mutating func rayObject(_ o: Swiftray_RayObject) -> Bool {
    guard o.unknownFields.data.isEmpty else { return false }
    bytes(1, o.data)
    bytes(2, o.metadata)
    for ref in o.nestedRefs { guard message(3, { $0.objectReference(ref) }) else { return false } }
    uint64(4, o.storeSize)
    bytes(5, o.storeNode)
    string(6, o.storeAddress)
    return true
  }

  /// A task pushed to its worker, whole. False: some part of it has fields this build
  /// does not know.
  mutating func pushTaskRequest(_ r: Swiftray_PushTaskRequest) -> Bool {
    guard r.unknownFields.data.isEmpty else { return false }
    if r.hasSpec {
      let spec = r.spec
      guard message(1, { $0.taskSpec(spec) }) else { return false }
    }
    if !r.gpuIds.isEmpty {  // packed, as proto3 writes repeated numbers
      var count = WireWriter(out: nil, capacity: 0, lengths: [])
      for g in r.gpuIds { count.varint(UInt64(bitPattern: Int64(g))) }
      key(2, wireType: 2)
      varint(UInt64(count.size))
      for g in r.gpuIds { varint(UInt64(bitPattern: Int64(g))) }
    }
    uint64(3, r.leaseID)
    bytes(4, r.leaseGrant)
    bytes(5, r.leaseOwner)
    return true
  }

  mutating func taskSpec(_ s: Swiftray_TaskSpec) -> Bool {
    guard s.unknownFields.data.isEmpty else { return false }
    bytes(1, s.taskID)
    bytes(2, s.jobID)
    bytes(3, s.parentTaskID)
    if s.hasOwner {
      let owner = s.owner
      guard message(4, { $0.address(owner) }) else { return false }
    }
    if s.hasFunction {
      let f = s.function
      guard f.unknownFields.data.isEmpty else { return false }
      message(5) { w in w.bytes(1, f.functionID); w.string(2, f.name); return true }
    }
    for arg in s.args { guard message(6, { $0.taskArg(arg) }) else { return false } }
    int32(7, s.numReturns)
    if s.hasResources {
      let r = s.resources
      guard r.unknownFields.data.isEmpty else { return false }
      message(8) { w in
        // Entries in the dictionary's own order, each with key and value even when
        // empty or zero: as SwiftProtobuf writes a map.
        for (name, quantity) in r.quantities {
          w.message(1) { e in
            e.key(1, wireType: 2); e.varint(UInt64(name.utf8.count)); e.raw(name)
            e.key(2, wireType: 0); e.varint(UInt64(bitPattern: quantity))
            return true
          }
        }
        return true
      }
    }
    int32(9, s.maxRetries)
    bool(10, s.retryExceptions)
    bytes(11, s.retryExceptionFilter)
    int32(12, s.attempt)
    string(13, s.name)
    int32(14, s.depth)
    uint64(15, s.submitSeq)
    bytes(16, s.actorID)
    if s.hasActorCreation { guard message(17, encoding: s.actorCreation) else { return false } }
    uint64(18, s.actorSeq)
    bytes(19, s.callerID)
    string(20, s.methodName)
    if s.hasStrategy {
      let st = s.strategy
      guard st.unknownFields.data.isEmpty else { return false }
      message(21) { w in
        w.int32(1, Int32(truncatingIfNeeded: st.kind.rawValue))
        w.bytes(2, st.nodeID)
        w.bool(3, st.soft)
        w.bytes(4, st.placementGroupID)
        w.int32(5, st.bundleIndex)
        w.bool(6, st.captureChildTasks)
        return true
      }
    }
    string(22, s.runtimeEnv)
    bool(23, s.streaming)
    int64(24, s.generatorBackpressure)
    bool(25, s.dynamicReturns)
    return true
  }

  mutating func taskArg(_ a: Swiftray_TaskArg) -> Bool {
    guard a.unknownFields.data.isEmpty else { return false }
    switch a.kind {
    case .ref(let ref)?: guard message(1, { $0.objectReference(ref) }) else { return false }
    case .value(let value)?: guard message(2, { $0.rayObject(value) }) else { return false }
    case nil: break
    }
    bytes(3, a.objectID)
    return true
  }

  mutating func objectReference(_ r: Swiftray_ObjectReference) -> Bool {
    guard r.unknownFields.data.isEmpty else { return false }
    bytes(1, r.objectID)
    guard r.hasOwner else { return true }
    let owner = r.owner
    return message(2) { $0.address(owner) }
  }

  mutating func address(_ a: Swiftray_Address) -> Bool {
    guard a.unknownFields.data.isEmpty else { return false }
    bytes(1, a.workerID)
    bytes(2, a.nodeID)
    string(3, a.endpoint)
    int32(4, a.pid)
    string(5, a.localEndpoint)
    return true
  }
}

/// The reading side of `WireWriter`: a lane's most common frames, a task pushed and its
/// reply, read by hand. Anything it does not expect (another body, a field it does not know, a
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

  /// A frame whose body is a task pushed or a task's reply, or nil (see the type's
  /// comment).
  public static func frame(_ raw: UnsafeRawBufferPointer) -> Swiftray_DataFrame? {
    var f = Swiftray_DataFrame()
    var body: Swiftray_DataFrame.OneOf_Body?
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 0): guard let v = r.varint() else { return false }; f.id = v
      case (2, 0): guard let v = r.varint() else { return false }; f.payloadSize = v
      case (3, 0): guard let v = r.varint() else { return false }; f.moreInFlight = v != 0
      case (10, 2):
        guard body == nil, let b = r.lengthDelimited(), let push = pushTaskRequest(b) else { return false }
        body = .pushTask(push)
      case (11, 2):
        guard body == nil, let b = r.lengthDelimited(), let reply = pushTaskReply(b) else { return false }
        body = .pushTaskReply(reply)
      default: return false
      }
      return true
    }
    guard whole, let body else { return nil }
    f.body = body
    return f
  }

  static func pushTaskRequest(_ raw: UnsafeRawBufferPointer) -> Swiftray_PushTaskRequest? {
    var m = Swiftray_PushTaskRequest()
    var gpus: [Int32] = []
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 2): guard !m.hasSpec, let b = r.lengthDelimited(), let s = taskSpec(b) else { return false }; m.spec = s
      case (2, 0): guard let v = r.varint() else { return false }; gpus.append(Int32(truncatingIfNeeded: v))
      case (2, 2):  // packed
        guard let b = r.lengthDelimited() else { return false }
        var p = WireReader(b)
        while !p.atEnd {
          guard let v = p.varint() else { return false }
          gpus.append(Int32(truncatingIfNeeded: v))
        }
      case (3, 0): guard let v = r.varint() else { return false }; m.leaseID = v
      case (4, 2): guard let d = r.data() else { return false }; m.leaseGrant = d
      case (5, 2): guard let d = r.data() else { return false }; m.leaseOwner = d
      default: return false
      }
      return true
    }
    guard whole else { return nil }
    m.gpuIds = gpus
    return m
  }

  static func taskSpec(_ raw: UnsafeRawBufferPointer) -> Swiftray_TaskSpec? {
    var s = Swiftray_TaskSpec()
    var args: [Swiftray_TaskArg] = []
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 2): guard let d = r.data() else { return false }; s.taskID = d
      case (2, 2): guard let d = r.data() else { return false }; s.jobID = d
      case (3, 2): guard let d = r.data() else { return false }; s.parentTaskID = d
      case (4, 2): guard !s.hasOwner, let b = r.lengthDelimited(), let a = address(b) else { return false }; s.owner = a
      case (5, 2):
        guard !s.hasFunction, let b = r.lengthDelimited() else { return false }
        var f = Swiftray_FunctionDescriptor()
        guard eachField(b, { r, field, wire in
          switch (field, wire) {
          case (1, 2): guard let d = r.data() else { return false }; f.functionID = d
          case (2, 2): guard let n = r.string() else { return false }; f.name = n
          default: return false
          }
          return true
        }) else { return false }
        s.function = f
      case (6, 2): guard let b = r.lengthDelimited(), let a = taskArg(b) else { return false }; args.append(a)
      case (7, 0): guard let v = r.varint() else { return false }; s.numReturns = Int32(truncatingIfNeeded: v)
      case (8, 2):
        guard !s.hasResources, let b = r.lengthDelimited(), let q = quantities(b) else { return false }
        s.resources.quantities = q
      case (9, 0): guard let v = r.varint() else { return false }; s.maxRetries = Int32(truncatingIfNeeded: v)
      case (10, 0): guard let v = r.varint() else { return false }; s.retryExceptions = v != 0
      case (11, 2): guard let d = r.data() else { return false }; s.retryExceptionFilter = d
      case (12, 0): guard let v = r.varint() else { return false }; s.attempt = Int32(truncatingIfNeeded: v)
      case (13, 2): guard let n = r.string() else { return false }; s.name = n
      case (14, 0): guard let v = r.varint() else { return false }; s.depth = Int32(truncatingIfNeeded: v)
      case (15, 0): guard let v = r.varint() else { return false }; s.submitSeq = v
      case (16, 2): guard let d = r.data() else { return false }; s.actorID = d
      case (17, 2):
        guard !s.hasActorCreation, let d = r.data(),
              let c = try? Swiftray_ActorCreationSpec(serializedBytes: d) else { return false }
        s.actorCreation = c
      case (18, 0): guard let v = r.varint() else { return false }; s.actorSeq = v
      case (19, 2): guard let d = r.data() else { return false }; s.callerID = d
      case (20, 2): guard let n = r.string() else { return false }; s.methodName = n
      case (21, 2):
        guard !s.hasStrategy, let d = r.data(),
              let st = try? Swiftray_SchedulingStrategy(serializedBytes: d) else { return false }
        s.strategy = st
      case (22, 2): guard let n = r.string() else { return false }; s.runtimeEnv = n
      case (23, 0): guard let v = r.varint() else { return false }; s.streaming = v != 0
      case (24, 0): guard let v = r.varint() else { return false }; s.generatorBackpressure = Int64(bitPattern: v)
      case (25, 0): guard let v = r.varint() else { return false }; s.dynamicReturns = v != 0
      default: return false
      }
      return true
    }
    guard whole else { return nil }
    s.args = args
    return s
  }

  /// A resource map's entries; nil for an entry with anything but a key and a value.
  static func quantities(_ raw: UnsafeRawBufferPointer) -> [String: Int64]? {
    var q: [String: Int64] = [:]
    let whole = eachField(raw) { r, field, wire in
      guard field == 1, wire == 2, let b = r.lengthDelimited() else { return false }
      var name = "", quantity: Int64 = 0
      guard eachField(b, { e, field, wire in
        switch (field, wire) {
        case (1, 2): guard let n = e.string() else { return false }; name = n
        case (2, 0): guard let v = e.varint() else { return false }; quantity = Int64(bitPattern: v)
        default: return false
        }
        return true
      }) else { return false }
      q[name] = quantity
      return true
    }
    return whole ? q : nil
  }

  static func taskArg(_ raw: UnsafeRawBufferPointer) -> Swiftray_TaskArg? {
    var m = Swiftray_TaskArg()
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 2): guard m.kind == nil, let b = r.lengthDelimited(), let ref = objectReference(b) else { return false }; m.kind = .ref(ref)
      case (2, 2): guard m.kind == nil, let b = r.lengthDelimited(), let o = rayObject(b) else { return false }; m.kind = .value(o)
      case (3, 2): guard let d = r.data() else { return false }; m.objectID = d
      default: return false
      }
      return true
    }
    return whole ? m : nil
  }

  static func objectReference(_ raw: UnsafeRawBufferPointer) -> Swiftray_ObjectReference? {
    var m = Swiftray_ObjectReference()
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 2): guard let d = r.data() else { return false }; m.objectID = d
      case (2, 2): guard !m.hasOwner, let b = r.lengthDelimited(), let a = address(b) else { return false }; m.owner = a
      default: return false
      }
      return true
    }
    return whole ? m : nil
  }

  static func address(_ raw: UnsafeRawBufferPointer) -> Swiftray_Address? {
    var m = Swiftray_Address()
    let whole = eachField(raw) { r, field, wire in
      switch (field, wire) {
      case (1, 2): guard let d = r.data() else { return false }; m.workerID = d
      case (2, 2): guard let d = r.data() else { return false }; m.nodeID = d
      case (3, 2): guard let n = r.string() else { return false }; m.endpoint = n
      case (4, 0): guard let v = r.varint() else { return false }; m.pid = Int32(truncatingIfNeeded: v)
      case (5, 2): guard let n = r.string() else { return false }; m.localEndpoint = n
      default: return false
      }
      return true
    }
    return whole ? m : nil
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
      case (3, 2): guard let b = r.lengthDelimited(), let ref = objectReference(b) else { return false }; refs.append(ref)
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
