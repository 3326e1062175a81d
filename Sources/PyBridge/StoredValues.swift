import CPyStoreView
import CPython
import Foundation
import Runtime
import RuntimeProto

/// Values between Python and the node's shared-memory store: large values are written
/// straight from Python's buffers into the store (one copy, GIL released); stored
/// values reach Python as read-only `StoreView`s over the store's memory that unpin the
/// object when the last view (or numpy array made from one) dies.
///
/// Threading: every function requires the GIL; each releases it around store I/O.
enum StoredValues {
  enum Placed { case inline(Swiftray_RayObject), stored(ObjectID) }

  /// A stored object pinned for this process: its bytes stay valid until unpinned.
  struct Pinned { let id: ObjectID; let bytes: UnsafeRawBufferPointer }

  /// The packed value `o` (see `Py.packed`) as an inline object up to the inline
  /// threshold, else written by `store` straight from Python's buffers with the GIL
  /// released. nil with a Python exception set when `o` is not a packed value.
  static func write<T>(_ core: CoreWorker, _ o: PyPtr?, inline: (Swiftray_RayObject) -> T,
                       store: (Py.PackedValue) throws(SwiftrayError) -> T) -> Result<T, SwiftrayError>? {
    guard var p = Py.packed(o) else { return nil }
    defer { p.release() }
    if p.total <= core.options.config.maxDirectCallObjectSize {
      var ro = Swiftray_RayObject()
      ro.data = p.data()
      ro.nestedRefs = p.nestedRefs
      return .success(inline(ro))
    }
    return withoutGIL {
      do throws(SwiftrayError) { return .success(try store(p)) } catch { return .failure(error) }
    }
  }

  /// A value for `put` or a task argument: inline, or a new object in the store owned
  /// by this process (one local reference). nil with a Python exception set on failure.
  static func place(_ core: CoreWorker, _ o: PyPtr?) -> Placed? {
    let r = write(core, o, inline: { Placed.inline($0) }, store: { p throws(SwiftrayError) in
      .stored(try core.putStored(size: p.total, nested: p.nested) { p.copy(into: $0, threads: Py.PackedValue.copyThreads(core)) })
    })
    switch r {
    case nil: return nil
    case .success(let placed)?: return placed
    case .failure(let e)?: _ = ErrorMapping.raise(e); return nil
    }
  }

  /// A task's return value for its owner: inline, or written to the store (a store
  /// that cannot make room turns into an `ObjectStoreFullError` for the owner).
  static func placeReturn(_ core: CoreWorker, _ id: ObjectID, owner: Swiftray_Address, _ o: PyPtr?) -> Swiftray_RayObject? {
    let r = write(core, o, inline: { $0 }, store: { p throws(SwiftrayError) in
      var ro = try core.storeReturn(id, size: p.total, owner: owner) { p.copy(into: $0) }
      ro.nestedRefs = p.nestedRefs
      return ro
    })
    switch r {
    case nil: return nil
    case .success(let ro)?: return ro
    case .failure(let e)?: return CoreWorker.errorObject(e.code, e.message)
    }
  }

  /// Pins the stored objects among `items` (one store round trip each, GIL released);
  /// nil for inline values.
  static func pinAll(_ core: CoreWorker, _ items: [(ObjectID, Swiftray_RayObject)?]) -> [Result<Pinned, SwiftrayError>?] {
    guard items.contains(where: { ($0?.1.storeSize ?? 0) > 0 }) else { return items.map { _ in nil } }
    return withoutGIL {
      items.map { item -> Result<Pinned, SwiftrayError>? in
        guard let (id, o) = item, o.storeSize > 0 else { return nil }
        do throws(SwiftrayError) { return .success(Pinned(id: id, bytes: try core.pinStored(id, o))) }
        catch { return .failure(error) }
      }
    }
  }

  /// The reply for a normal task whose stored arguments could not be read from the
  /// store (their node died or is unreachable), or nil when all are readable. Errors
  /// the owner stored as the arguments' values are not this: the task fails with them.
  static func lostArguments(_ spec: Swiftray_TaskSpec, _ pins: [Result<Pinned, SwiftrayError>?]) -> Swiftray_PushTaskReply? {
    guard spec.actorID.isEmpty, !spec.hasActorCreation else { return nil }
    var reply = Swiftray_PushTaskReply()
    for (a, p) in zip(spec.args, pins) {
      guard case .failure(let e)? = p, e.code == .objectLost else { continue }
      reply.lostArguments.append(a.objectID)
      if reply.lostDetail.isEmpty { reply.lostDetail = e.message }
    }
    return reply.lostArguments.isEmpty ? nil : reply
  }

  /// A read-only view of a pinned object; its death unpins it.
  static func view(_ core: CoreWorker, _ pinned: Pinned) -> PyPtr? {
    sr_StoreView_SetRelease(released)
    let ctx = Unmanaged.passRetained(core.objectStore).toOpaque()
    let buf = pinned.bytes
    let v = pinned.id.binary.withUnsafeBufferPointer { sr_StoreView_New(buf.baseAddress, buf.count, ctx, $0.baseAddress) }
    if v == nil { Unmanaged<StoreClient>.fromOpaque(ctx).release(); core.objectStore.unpin([pinned.id]) }
    return v
  }

  /// The data of a value for Python: a view when it is stored (pinned by `pinAll`),
  /// `bytes` when inline; nil with an exception set on failure.
  static func data(_ core: CoreWorker, _ o: Swiftray_RayObject, _ pin: Result<Pinned, SwiftrayError>?) -> PyPtr? {
    switch pin {
    case nil: return Py.bytes(o.data)
    case .success(let p)?: return view(core, p)
    case .failure(let e)?: return ErrorMapping.instance(e.code, e.message)
    }
  }

  static let released: sr_view_release_fn = { ctx, idp in
    guard let ctx, let idp else { return }
    let client = Unmanaged<StoreClient>.fromOpaque(ctx).takeRetainedValue()
    if let id = ObjectID(binary: Data(bytes: idp, count: 28)) { client.unpin([id]) }
  }

  static var liveViews: Int { sr_StoreView_Live() }
}
