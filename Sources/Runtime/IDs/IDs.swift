import Foundation

/// Random bytes for IDs. Threading: safe from any thread (SystemRandomNumberGenerator).
@inline(__always) public func randomWord() -> UInt64 { UInt64.random(in: .min ... .max) }

/// Hex helpers shared by every ID type.
public enum Hex {
  public static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    var out: [UInt8] = []
    out.reserveCapacity(bytes.underestimatedCount * 2)
    for b in bytes { out.append(digit(b >> 4)); out.append(digit(b & 0xF)) }
    return String(decoding: out, as: UTF8.self)
  }
  @inline(__always) static func digit(_ n: UInt8) -> UInt8 { n < 10 ? 48 + n : 87 + n }
  static func decode(_ hex: String) -> [UInt8]? {
    let chars = Array(hex.utf8)
    guard chars.count % 2 == 0 else { return nil }
    var out = [UInt8](); out.reserveCapacity(chars.count / 2)
    func nib(_ c: UInt8) -> UInt8? {
      switch c {
      case 48...57: return c - 48
      case 97...102: return c - 87
      case 65...70: return c - 55
      default: return nil
      }
    }
    var i = 0
    while i < chars.count {
      guard let h = nib(chars[i]), let l = nib(chars[i + 1]) else { return nil }
      out.append(h << 4 | l); i += 2
    }
    return out
  }
}

/// Big-endian packing of words into bytes, the wire form of every ID.
enum WordBytes {
  static func pack(_ words: [UInt64], tail: UInt32? = nil) -> [UInt8] {
    var out = [UInt8]()
    out.reserveCapacity(words.count * 8 + (tail == nil ? 0 : 4))
    for w in words { withUnsafeBytes(of: w.bigEndian) { out.append(contentsOf: $0) } }
    if let t = tail { withUnsafeBytes(of: t.bigEndian) { out.append(contentsOf: $0) } }
    return out
  }
  // Callers check the count first, so `offset` + the word's size is within `b`.
  static func word(_ b: some Collection<UInt8>, at offset: Int) -> UInt64 {
    // Contiguous bytes (arrays, `Data`): one unaligned load, not a walk of indices.
    if let v = b.withContiguousStorageIfAvailable({
      UInt64(bigEndian: UnsafeRawBufferPointer($0).loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }) { return v }
    var v: UInt64 = 0
    var i = b.index(b.startIndex, offsetBy: offset)
    for _ in 0..<8 { v = v << 8 | UInt64(b[i]); i = b.index(after: i) }
    return v
  }
  /// `Data` (every id off the wire): one load from its bytes, past the generic path's
  /// closure and checks (ids are parsed several times per task).
  @inline(__always)
  static func word(_ b: Data, at offset: Int) -> UInt64 {
    b.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
  }
  static func word32(_ b: some Collection<UInt8>, at offset: Int) -> UInt32 {
    if let v = b.withContiguousStorageIfAvailable({
      UInt32(bigEndian: UnsafeRawBufferPointer($0).loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }) { return v }
    var v: UInt32 = 0
    var i = b.index(b.startIndex, offsetBy: offset)
    for _ in 0..<4 { v = v << 8 | UInt32(b[i]); i = b.index(after: i) }
    return v
  }
}

/// How ids hash in `Dictionary` and `Set`: a multiply-xorshift mix of their words with
/// the table's seed, in place of the default SipHash over each field. An owner looks up
/// several tables per task (tasks, objects, workers); SipHash's set-up, one round per
/// field and finalisation were ~5 % of a driver's CPU in actor calls. Ids come from
/// this process or from authenticated peers, and the mix is keyed by each table's
/// random seed; every output bit depends on every input word, the low ones too (a
/// table's bucket is the hash's low bits).
/// Threading: pure.
public enum IDHash {
  @inlinable @inline(__always)
  public static func mix(_ a: UInt64, _ b: UInt64, _ c: UInt64, _ d: UInt64, seed: Int) -> Int {
    var h = (a ^ UInt64(bitPattern: Int64(seed))) &* 0x9E37_79B9_7F4A_7C15
    h = (h ^ (h >> 29) ^ b) &* 0xBF58_476D_1CE4_E5B9
    h = (h ^ (h >> 32) ^ c) &* 0x94D0_49BB_1331_11EB
    h = (h ^ (h >> 29) ^ d) &* 0xBF58_476D_1CE4_E5B9
    return Int(truncatingIfNeeded: h ^ (h >> 31))
  }
}

/// A job (one driver's run). 4 bytes, assigned by the ControlService.
public struct JobID: Hashable, Sendable, CustomStringConvertible {
  public var value: UInt32
  public init(_ value: UInt32) { self.value = value }
  public var binary: [UInt8] { WordBytes.pack([], tail: value) }
  public init?(binary b: some Collection<UInt8>) {
    guard b.count == 4 else { return nil }
    value = WordBytes.word32(b, at: 0)
  }
  public var hex: String { Hex.encode(binary) }
  public var description: String { hex }
}

/// A 28-byte random identity: nodes and workers.
public struct UniqueID: Hashable, Sendable, CustomStringConvertible {
  public var a: UInt64, b: UInt64, c: UInt64, d: UInt32
  public init(a: UInt64, b: UInt64, c: UInt64, d: UInt32) { self.a = a; self.b = b; self.c = c; self.d = d }
  public static func random() -> UniqueID {
    UniqueID(a: randomWord(), b: randomWord(), c: randomWord(), d: UInt32(truncatingIfNeeded: randomWord()))
  }
  public static let nil_ = UniqueID(a: 0, b: 0, c: 0, d: 0)
  public var isNil: Bool { self == .nil_ }
  public var binary: [UInt8] { WordBytes.pack([a, b, c], tail: d) }
  public init?(binary bytes: some Collection<UInt8>) {
    guard bytes.count == 28 else { return nil }
    a = WordBytes.word(bytes, at: 0); b = WordBytes.word(bytes, at: 8)
    c = WordBytes.word(bytes, at: 16); d = WordBytes.word32(bytes, at: 24)
  }
  public init?(hex: String) {
    guard let b = Hex.decode(hex), let id = UniqueID(binary: b) else { return nil }
    self = id
  }
  public var hex: String { Hex.encode(binary) }
  public var description: String { hex }
  @inlinable public func hash(into hasher: inout Hasher) { hasher.combine(_rawHashValue(seed: 0)) }
  @inlinable public func _rawHashValue(seed: Int) -> Int { IDHash.mix(a, b, c, UInt64(d), seed: seed) }
}

public typealias NodeID = UniqueID
public typealias WorkerID = UniqueID

/// A task: 24 bytes = a per-process random prefix, a per-process counter, the job.
/// Derivable without coordination, unique across processes.
public struct TaskID: Hashable, Sendable, CustomStringConvertible {
  public var prefix: UInt64, counter: UInt64, job: UInt64
  public init(prefix: UInt64, counter: UInt64, job: UInt64) {
    self.prefix = prefix; self.counter = counter; self.job = job
  }
  public var binary: [UInt8] { WordBytes.pack([prefix, counter, job]) }
  public init?(binary b: some Collection<UInt8>) {
    guard b.count == 24 else { return nil }
    prefix = WordBytes.word(b, at: 0); counter = WordBytes.word(b, at: 8); job = WordBytes.word(b, at: 16)
  }
  /// The same from `Data` (ids off the wire, parsed several times per task): direct loads.
  public init?(binary b: Data) {
    guard b.count == 24 else { return nil }
    prefix = WordBytes.word(b, at: 0); counter = WordBytes.word(b, at: 8); job = WordBytes.word(b, at: 16)
  }
  public var hex: String { Hex.encode(binary) }
  public var description: String { hex }
  public static let nil_ = TaskID(prefix: 0, counter: 0, job: 0)
  @inlinable public func hash(into hasher: inout Hasher) { hasher.combine(_rawHashValue(seed: 0)) }
  @inlinable public func _rawHashValue(seed: Int) -> Int { IDHash.mix(prefix, counter, job, 0, seed: seed) }
}

/// An actor is named by its creation task; its handle object (what handles count,
/// like refs) is that task's first return.
public typealias ActorID = TaskID

extension TaskID {
  public var actorHandleObject: ObjectID { ObjectID.forReturn(of: self, index: 0) }
}

/// An object: the task that creates it plus an index. Return values use 1...n;
/// `put` values set the top bit, so they are never confused with returns.
public struct ObjectID: Hashable, Sendable, CustomStringConvertible {
  public var task: TaskID
  public var index: UInt32
  public static let putFlag: UInt32 = 0x8000_0000
  public init(task: TaskID, index: UInt32) { self.task = task; self.index = index }
  public static func forReturn(of task: TaskID, index: Int) -> ObjectID {
    ObjectID(task: task, index: UInt32(index + 1))
  }
  public static func forPut(by task: TaskID, index: UInt32) -> ObjectID {
    ObjectID(task: task, index: index | putFlag)
  }
  public var isPut: Bool { index & Self.putFlag != 0 }
  public var binary: [UInt8] { task.binary + WordBytes.pack([], tail: index) }
  public init?(binary b: some Collection<UInt8>) {
    guard b.count == 28, let t = TaskID(binary: b.prefix(24)) else { return nil }
    task = t; index = WordBytes.word32(b, at: 24)
  }
  public init?(hex: String) {
    guard let b = Hex.decode(hex), let id = ObjectID(binary: b) else { return nil }
    self = id
  }
  public var hex: String { Hex.encode(binary) }
  public var description: String { hex }
  @inlinable public func hash(into hasher: inout Hasher) { hasher.combine(_rawHashValue(seed: 0)) }
  @inlinable public func _rawHashValue(seed: Int) -> Int {
    IDHash.mix(task.prefix, task.counter, task.job, UInt64(index) | 1 << 32, seed: seed)
  }
}

extension ObjectID {
  /// The position of the first id in `ids` equal to an earlier one; nil when all differ.
  /// Threading: pure. O(n) with an open-addressed table and a multiply-shift hash (ids
  /// from one owner differ in their counter): `Set`'s SipHash cost more than all the rest
  /// of `wait()` over a list of refs.
  public static func firstDuplicate(in ids: [ObjectID]) -> Int? {
    guard ids.count > 1 else { return nil }
    let bits = max(4, Int.bitWidth - (ids.count * 2 - 1).leadingZeroBitCount)
    let mask = (1 << bits) - 1
    var slots = [Int](repeating: -1, count: 1 << bits)
    return slots.withUnsafeMutableBufferPointer { slots in
      ids.withUnsafeBufferPointer { ids in
        for (i, id) in ids.enumerated() {
          var h = id.task.counter &* 0x9E37_79B9_7F4A_7C15
          h ^= id.task.prefix ^ (id.task.job &* 0xC2B2_AE3D_27D4_EB4F) ^ (UInt64(id.index) &* 0x1656_67B1_9E37_79F9)
          h = (h ^ (h >> 31)) &* 0xBF58_476D_1CE4_E5B9
          var slot = Int(truncatingIfNeeded: h >> UInt64(64 - bits))
          while slots[slot] >= 0 {
            if ids[slots[slot]] == id { return i }
            slot = (slot + 1) & mask
          }
          slots[slot] = i
        }
        return nil
      }
    }
  }
}

/// Makes task IDs for one process. Threading: not thread-safe; owned by one state.
public struct TaskIDGenerator: Sendable {
  public let prefix: UInt64
  public var job: JobID
  private var counter: UInt64 = 0
  public init(job: JobID, prefix: UInt64 = randomWord()) { self.job = job; self.prefix = prefix }
  public mutating func next() -> TaskID {
    counter += 1
    return TaskID(prefix: prefix, counter: counter, job: UInt64(job.value))
  }
}

/// A placement group's id: 16 random bytes; its hex names the group's bundle
/// resources (`BundleResources`).
public struct PlacementGroupID: Hashable, Sendable, CustomStringConvertible {
  public let binary: [UInt8]
  public init?(binary: some Collection<UInt8>) {
    guard binary.count == 16 else { return nil }
    self.binary = Array(binary)
  }
  public init?(hex: String) {
    guard let b = Hex.decode(hex) else { return nil }
    self.init(binary: b)
  }
  public static func random() -> PlacementGroupID {
    PlacementGroupID(binary: WordBytes.pack([randomWord(), randomWord()]))!
  }
  public var hex: String { Hex.encode(binary) }
  public var description: String { hex }
}
