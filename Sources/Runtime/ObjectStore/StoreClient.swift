import Foundation
import RuntimeProto
import Synchronization

/// One process's handle on its node's object store: the arena mapped once (so a read
/// is pointer arithmetic after a pin) and the store's data-plane socket for create,
/// seal, pin, unpin and delete.
///
/// Threading: any thread. `create`, `seal`, `pin` and `stats` block until the store
/// answers: never call them on an event loop, and release the GIL first.
public final class StoreClient: Sendable {
  public let endpoint: Endpoint
  public let capacity: Int
  /// Where other nodes pull this node's objects from; empty when not networked.
  public let remoteAddress: String
  let base: ObjectStore.RawPointer
  let pool: DataPlaneClientPool
  let pid = getpid()
  /// Called (on the calling thread) when the store cannot be reached, before the error
  /// is thrown: a worker ends itself there, since its node is gone.
  let onUnreachable: (@Sendable (SwiftrayError) -> Void)?

  /// Asks the store where its arena is and maps it. Blocks for one round trip.
  public init(endpoint: Endpoint, pool: DataPlaneClientPool,
              onUnreachable: (@Sendable (SwiftrayError) -> Void)? = nil) throws {
    self.endpoint = endpoint
    self.pool = pool
    self.onUnreachable = onUnreachable
    let info = try Self.call(.storeStats(.init()), endpoint: endpoint, pool: pool)
    guard case .storeStatsReply(let st) = info else { throw SwiftrayError(.system, "bad reply from the object store") }
    let fd = open(st.arenaPath, O_RDWR | O_CLOEXEC)
    guard fd >= 0 else { throw SwiftrayError(.system, "cannot open the object store \(st.arenaPath): \(String(cString: strerror(errno)))") }
    defer { Foundation.close(fd) }
    // The arena's size as the store says, checked against the file itself before mapping.
    var fst = stat()
    guard fstat(fd, &fst) == 0, let cap = Int(exactly: st.capacity), cap > 0, cap <= Int(fst.st_size) else {
      throw SwiftrayError(.system, "the object store at \(st.arenaPath) reported a capacity (\(st.capacity)) its file does not have")
    }
    guard let p = mmap(nil, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
      throw SwiftrayError(.system, "cannot map the object store \(st.arenaPath): \(String(cString: strerror(errno)))")
    }
    capacity = cap
    remoteAddress = st.remoteAddress
    base = ObjectStore.RawPointer(p: p)
  }

  /// Sends a request and waits for its reply.
  func call(_ body: Swiftray_DataFrame.OneOf_Body) throws(SwiftrayError) -> Swiftray_DataFrame.OneOf_Body {
    try Self.call(body, endpoint: endpoint, pool: pool, onUnreachable: onUnreachable)
  }

  /// A request the node itself answers on this socket (`NodeManager.localRequest`),
  /// its refusal named after `method`. Blocks until the node answers.
  public func askNode(_ body: Swiftray_DataFrame.OneOf_Body, calling method: String) throws(SwiftrayError) -> Swiftray_DataFrame.OneOf_Body {
    try Self.call(body, endpoint: endpoint, pool: pool, onUnreachable: onUnreachable, refused: "\(method) through this node failed")
  }

  static func call(_ body: Swiftray_DataFrame.OneOf_Body, endpoint: Endpoint, pool: DataPlaneClientPool,
                   onUnreachable: (@Sendable (SwiftrayError) -> Void)? = nil,
                   refused: String = "the object store failed") throws(SwiftrayError) -> Swiftray_DataFrame.OneOf_Body {
    LockDiscipline.mayBlock("a call to the object store")
    let box = Locked<Result<Swiftray_DataFrame, SwiftrayError>?>(nil)
    let sem = DispatchSemaphore(value: 0)
    pool.request(endpoint, body) { r in box.withLock { $0 = r }; sem.signal() }
    sem.wait()
    let r = box.withLock { $0! }
    switch r {
    case .success(let f):
      if case .error(let e)? = f.body { throw SwiftrayError(.localRayletDied, "\(refused): \(e.message)") }
      guard let b = f.body else { throw SwiftrayError(.system, "empty reply from the object store") }
      return b
    case .failure(let e):
      let error = SwiftrayError(.localRayletDied, "the node's object store at \(endpoint) is unreachable: \(e.message)")
      onUnreachable?(error)
      throw error
    }
  }

  /// Where to write a new object of `size` bytes, or nil when it exists already.
  /// Waits while the store spills to make room; throws `objectStoreFull` when it cannot.
  public func create(_ id: ObjectID, size: Int, ownerPid: Int32) throws(SwiftrayError) -> UnsafeMutableRawBufferPointer? {
    var req = Swiftray_CreateObjectRequest()
    req.objectID = Data(id.binary)
    req.size = UInt64(size)
    req.creatorPid = pid
    req.ownerPid = ownerPid
    guard case .createObjectReply(let r) = try call(.createObject(req)) else { throw SwiftrayError(.system, "bad create reply") }
    switch r.status {
    case .created:
      let off = try extent(r.offset, UInt64(size), of: id)
      return UnsafeMutableRawBufferPointer(start: base.p + off, count: size)
    case .exists: return nil
    case .full, .UNRECOGNIZED: throw SwiftrayError(.objectStoreFull, r.error)
    }
  }

  /// A reply's extent, checked to lie inside the arena before it is turned into memory.
  func extent(_ offset: UInt64, _ size: UInt64, of id: ObjectID) throws(SwiftrayError) -> Int {
    let cap = UInt64(capacity)
    guard offset <= cap, size <= cap - offset else {
      throw SwiftrayError(.system, "the object store placed \(id.hex) at \(offset)+\(size), outside its \(cap)-byte arena")
    }
    return Int(offset)
  }

  public func seal(_ id: ObjectID, abort: Bool = false) throws(SwiftrayError) {
    var req = Swiftray_SealObjectRequest()
    req.objectID = Data(id.binary)
    req.abort = abort
    _ = try call(.sealObject(req))
  }

  /// Pins the object for this process and returns its bytes (read them only until
  /// `unpin`), or nil when the store does not have it. Restores a spilled object first;
  /// with `pullFrom` (another node's store), pulls its `size` bytes from there first.
  public func pin(_ id: ObjectID, pullFrom: String = "", size: Int = 0) throws(SwiftrayError) -> UnsafeRawBufferPointer? {
    var req = Swiftray_PinObjectRequest()
    req.objectID = Data(id.binary)
    req.readerPid = pid
    req.pullFrom = pullFrom
    req.size = UInt64(size)
    guard case .pinObjectReply(let r) = try call(.pinObject(req)) else { throw SwiftrayError(.system, "bad pin reply") }
    switch r.status {
    case .pinned:
      let off = try extent(r.offset, r.size, of: id)
      return UnsafeRawBufferPointer(start: base.p + off, count: Int(r.size))
    case .notFound: return nil
    case .pullFailed: throw SwiftrayError(.objectLost, "Object \(id.hex) could not be fetched from another node: \(r.error).")
    case .lost: throw SwiftrayError(.objectLost, "Object \(id.hex) was lost from this node's object store: \(r.error).")
    case .full, .UNRECOGNIZED: throw SwiftrayError(.objectStoreFull, r.error)
    }
  }

  /// Does not wait.
  public func unpin(_ ids: [ObjectID]) {
    var req = Swiftray_UnpinObjectsRequest()
    req.objectIds = ids.map { Data($0.binary) }
    req.readerPid = pid
    pool.request(endpoint, .unpinObjects(req)) { _ in }
  }

  /// Makes the copies of `ids` pulled into this store primary, owned by this process;
  /// `done` gets which were here to promote (none if the store did not answer). Does
  /// not wait.
  public func promote(_ ids: [ObjectID], done: @escaping @Sendable ([Bool]) -> Void) {
    var req = Swiftray_PromoteObjectsRequest()
    req.objectIds = ids.map { Data($0.binary) }
    req.ownerPid = pid
    pool.request(endpoint, .promoteObjects(req)) { result in
      guard case .success(let f) = result, case .promoteObjectsReply(let r)? = f.body else {
        return done(ids.map { _ in false })
      }
      done(ids.indices.map { $0 < r.promoted.count && r.promoted[$0] })
    }
  }

  /// Does not wait.
  public func delete(_ ids: [ObjectID]) {
    guard !ids.isEmpty else { return }
    var req = Swiftray_DeleteObjectsRequest()
    req.objectIds = ids.map { Data($0.binary) }
    pool.request(endpoint, .deleteObjects(req)) { _ in }
  }

  public func stats() throws(SwiftrayError) -> Swiftray_StoreStats {
    guard case .storeStatsReply(let r) = try call(.storeStats(.init())) else { throw SwiftrayError(.system, "bad stats reply") }
    return r
  }

  // Views handed to Python retain this client, so the arena is unmapped only after the
  // last of them (and the CoreWorker) is gone.
  deinit { munmap(base.p, capacity) }
}
