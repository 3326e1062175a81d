import CPython
import Foundation
import Runtime
import RuntimeProto

/// A borrowed or new `PyObject*`. Threading: only touched while holding the GIL.
public typealias PyPtr = UnsafeMutablePointer<PyObject>

/// Small helpers over the C API. Every function here requires the GIL.
enum Py {
  static var none: PyPtr { sr_NewRefNone() }
  static func bool(_ b: Bool) -> PyPtr { let o = b ? sr_True()! : sr_False()!; sr_IncRef(o); return o }
  static func str(_ s: String) -> PyPtr { PyUnicode_FromString(s) }
  static func int(_ i: Int) -> PyPtr { PyLong_FromLongLong(Int64(i)) }
  static func bytes(_ b: some Collection<UInt8>) -> PyPtr {
    if let r = b.withContiguousStorageIfAvailable({ PyBytes_FromStringAndSize(UnsafeRawPointer($0.baseAddress).map { $0.assumingMemoryBound(to: CChar.self) }, $0.count) }) {
      return r!
    }
    return bytes(Array(b))
  }
  /// Copies the bytes out of a `bytes` object; nil (with TypeError set) otherwise.
  static func toBytes(_ o: PyPtr?) -> [UInt8]? {
    guard let o, sr_IsBytes(o) != 0 else {
      PyErr_SetString(sr_ExcTypeError(), "expected bytes"); return nil
    }
    let n = sr_BytesSize(o)
    return sr_BytesData(o).withMemoryRebound(to: UInt8.self, capacity: n) { Array(UnsafeBufferPointer(start: $0, count: n)) }
  }
  /// One copy of a `bytes` object's buffer into `Data` (values on their way to the core).
  static func toData(_ o: PyPtr?) -> Data? {
    guard let o, sr_IsBytes(o) != 0 else {
      PyErr_SetString(sr_ExcTypeError(), "expected bytes"); return nil
    }
    return Data(bytes: sr_BytesData(o), count: sr_BytesSize(o))
  }
  /// A value on its way to the core with its parts still in Python's memory: `bytes`,
  /// or a packed value `(parts, offsets, total)` from `_serialization.pack` whose
  /// buffer-protocol parts are to be copied once, each to its offset. The views pin
  /// the parts until `release()` (GIL held).
  struct PackedValue {
    var views: [Py_buffer]
    var offsets: [Int]
    let total: Int
    /// Refs pickled inside the value.
    var nested: [ObjectID] = []

    /// `nested` as the core lists them (owners filled in by the core).
    var nestedRefs: [Swiftray_ObjectReference] {
      nested.map { id in Swiftray_ObjectReference.with { $0.objectID = Data(id.binary) } }
    }

    /// Copies every part to its offset in `dst` (at least `total` bytes). Touches no
    /// Python object: may run with the GIL released. A large value is copied by up to
    /// `threads` threads, each a slice of the destination: one core's copy into store
    /// pages runs below what the memory bus takes (100 MiB here: ~10 GB/s on one
    /// thread, ~14 on two).
    func copy(into dst: UnsafeMutableRawBufferPointer, threads: Int = 1) {
      let threads = total >= Self.parallelCopyBytes ? threads : 1
      guard threads > 1, let base = dst.baseAddress else {
        for (v, off) in zip(views, offsets) where v.len > 0 { memcpy(dst.baseAddress! + off, v.buf, v.len) }
        return
      }
      let total = self.total, slice = (total + threads - 1) / threads
      // Addresses as integers: the closure is @Sendable, and the memory it copies is
      // pinned (the views, the created object) until `concurrentPerform` returns.
      let to = Int(bitPattern: base)
      let parts = zip(views, offsets).compactMap { v, off in v.buf.map { (src: Int(bitPattern: $0), at: off, len: v.len) } }
      DispatchQueue.concurrentPerform(iterations: threads) { k in
        let lo = k * slice, hi = min(total, lo + slice)
        for p in parts where p.len > 0 {
          let from = max(lo, p.at), end = min(hi, p.at + p.len)
          if from < end {
            memcpy(UnsafeMutableRawPointer(bitPattern: to + from)!, UnsafeRawPointer(bitPattern: p.src + (from - p.at))!, end - from)
          }
        }
      }
    }

    /// From this size a copy is split among threads (below, starting them costs more
    /// than it saves).
    static let parallelCopyBytes = 16 << 20
    /// Threads a copy may take in a driver: its CPUs, up to 4. A worker copies on its
    /// own thread: it holds the CPUs its task was granted, no more.
    static let driverCopyThreads = min(4, ProcessInfo.processInfo.activeProcessorCount)
    static func copyThreads(_ core: CoreWorker) -> Int { core.options.isDriver ? driverCopyThreads : 1 }

    /// The value as one `Data` (one copy; the GIL released for large values).
    func data() -> Data {
      var data = Data(count: total)
      let fill = { data.withUnsafeMutableBytes { copy(into: $0) } }
      if total > 1 << 20 { withoutGIL(fill) } else { fill() }
      return data
    }

    mutating func release() {
      for i in views.indices { PyBuffer_Release(&views[i]) }
      views = []
    }
  }

  static func packed(_ o: PyPtr?) -> PackedValue? {
    guard let o else { return nil }
    if sr_IsBytes(o) != 0 {
      var v = Py_buffer()
      guard PyObject_GetBuffer(o, &v, 0) == 0 else { return nil }
      return PackedValue(views: [v], offsets: [0], total: v.len)
    }
    guard let items = sequence(o), items.count == 3 || items.count == 4, let parts = sequence(items[0]),
      let offsets = sequence(items[1])?.map({ toInt($0) }), let total = toInt(items[2]),
      parts.count == offsets.count, total >= 0
    else {
      if PyErr_Occurred() == nil { PyErr_SetString(sr_ExcTypeError(), "expected bytes or a packed value") }
      return nil
    }
    var p = PackedValue(views: [], offsets: [], total: total)
    if items.count == 4 {
      guard let refs = sequence(items[3]) else { return nil }
      for r in refs {  // ObjectRefs
        guard let b = PyObject_GetAttrString(r, "_id") else { return nil }
        defer { sr_DecRef(b) }
        guard let id = CoreAPI.objectID(b) else { return nil }
        p.nested.append(id)
      }
    }
    for (part, off) in zip(parts, offsets) {
      var v = Py_buffer()
      guard PyObject_GetBuffer(part, &v, 0) == 0 else { p.release(); return nil }
      p.views.append(v)
      guard let off, off >= 0, off + v.len <= total else {
        p.release()
        PyErr_SetString(sr_ExcValueError(), "packed value part out of bounds"); return nil
      }
      p.offsets.append(off)
    }
    return p
  }

  /// A packed value copied into one `Data`.
  static func valueData(_ o: PyPtr?) -> Data? {
    guard var p = packed(o) else { return nil }
    defer { p.release() }
    return p.data()
  }

  static func float(_ v: Double) -> PyPtr { PyFloat_FromDouble(v)! }

  static func toString(_ o: PyPtr?) -> String? {
    guard let o, sr_IsUnicode(o) != 0, let c = PyUnicode_AsUTF8(o) else {
      PyErr_SetString(sr_ExcTypeError(), "expected str"); return nil
    }
    return String(cString: c)
  }
  static func toInt(_ o: PyPtr?) -> Int? {
    guard let o else { return nil }
    let v = PyLong_AsLongLong(o)
    if v == -1 && PyErr_Occurred() != nil { return nil }
    return Int(v)
  }
  static func toDouble(_ o: PyPtr?) -> Double? {
    guard let o else { return nil }
    let v = PyFloat_AsDouble(o)
    if v == -1 && PyErr_Occurred() != nil { return nil }
    return v
  }
  static func isNone(_ o: PyPtr?) -> Bool { o == nil || o == sr_None() }

  /// Builds a tuple, stealing the references passed in.
  static func tuple(_ items: [PyPtr]) -> PyPtr {
    let t = PyTuple_New(items.count)!
    for (i, it) in items.enumerated() { PyTuple_SetItem(t, i, it) }
    return t
  }
  /// Builds a list, stealing the references passed in.
  static func list(_ items: [PyPtr]) -> PyPtr {
    let l = PyList_New(items.count)!
    for (i, it) in items.enumerated() { PyList_SetItem(l, i, it) }
    return l
  }
  /// The items of a list or tuple as borrowed references.
  static func sequence(_ o: PyPtr?) -> [PyPtr]? {
    guard let o else { return nil }
    if sr_IsList(o) != 0 {
      return (0..<PyList_Size(o)).map { PyList_GetItem(o, $0)! }
    }
    if sr_IsTuple(o) != 0 {
      return (0..<PyTuple_Size(o)).map { PyTuple_GetItem(o, $0)! }
    }
    PyErr_SetString(sr_ExcTypeError(), "expected a list or tuple"); return nil
  }
  static func dict(_ pairs: [(String, PyPtr)]) -> PyPtr {
    let d = PyDict_New()!
    for (k, v) in pairs { PyDict_SetItemString(d, k, v); sr_DecRef(v) }
    return d
  }
  /// Items of a str->number dict.
  static func numberDict(_ o: PyPtr?) -> [String: Double]? {
    guard let o else { return nil }
    guard sr_IsDict(o) != 0 else { PyErr_SetString(sr_ExcTypeError(), "expected a dict"); return nil }
    var out: [String: Double] = [:]
    var pos: Py_ssize_t = 0
    var k: PyPtr? = nil, v: PyPtr? = nil
    while PyDict_Next(o, &pos, &k, &v) != 0 {
      guard let ks = toString(k), let vd = toDouble(v) else { return nil }
      out[ks] = vd
    }
    return out
  }
  static func raise(_ type: PyPtr, _ message: String) -> PyPtr? {
    PyErr_SetString(type, message); return nil
  }
}

/// Holds a Python object across threads. Threading: create, read and release only
/// while holding the GIL; the box itself may be passed between threads.
final class PyBox: @unchecked Sendable {
  let object: PyPtr
  /// Takes a new reference.
  init(_ o: PyPtr) { sr_IncRef(o); object = o }
  /// Must be called with the GIL held.
  func release() { sr_DecRef(object) }
}

/// Releases the GIL around `body` (a blocking wait in Swift). Must be called with the GIL.
@inline(__always)
func withoutGIL<T>(_ body: () throws -> T) rethrows -> T {
  let state = PyEval_SaveThread()
  defer { PyEval_RestoreThread(state) }
  return try body()
}
