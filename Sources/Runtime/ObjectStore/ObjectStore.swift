import Foundation
import Logging
import NIOCore
import NIOPosix
import RuntimeProto
import Synchronization

/// A node's shared-memory object store (DESIGN §4): one arena file in /dev/shm that
/// every process of the node maps, placement and spilling decided by `StoreState`,
/// served on a data-plane socket (create/seal/pin/unpin/delete/stats) so that a `get`
/// costs one local round trip, never a gRPC call. Spill files are written and read on
/// one serial I/O queue. On a networked node it also listens on TCP, serving object
/// chunks to other nodes' stores, and pulls the objects its readers need from them
/// (`PullQueue` decides which chunks; copies pulled here are secondary, evictable).
///
/// Threading: data-plane handlers (NIO event loops), the I/O queue and the NodeManager
/// (process deaths) call in concurrently; all state is behind one lock and actions
/// run outside it. Nothing here blocks an event loop.
public final class ObjectStore: Sendable {
  public struct Options: Sendable {
    public var capacity: Int
    public var spillThreshold: Double
    public var sessionDir: String
    /// Parent directory for spill files (`object_spilling_directory`); the session dir if nil.
    public var spillDirectory: String?
    /// Serve other nodes on TCP on this host (a free port); nil: this node only.
    public var remoteHost: String?
    public var pull: PullQueue.Config
    /// Record objects' lifecycle events for the head (`enable_task_events`).
    public var recordEvents: Bool
    public init(capacity: Int, spillThreshold: Double = 0.8, sessionDir: String, spillDirectory: String? = nil,
                remoteHost: String? = nil, pull: PullQueue.Config = .init(), recordEvents: Bool = true) {
      self.capacity = capacity; self.spillThreshold = spillThreshold
      self.sessionDir = sessionDir; self.spillDirectory = spillDirectory
      self.remoteHost = remoteHost; self.pull = pull; self.recordEvents = recordEvents
    }
  }

  /// Ray's default capacity: 30 % of the memory this process may use (a container's
  /// limit, else the machine's), at least 75 MiB.
  public static var defaultCapacity: Int { MachineMemory.defaultStoreCapacity(usable: MachineMemory.current) }

  enum Waiting {
    case create(Swiftray_CreateObjectRequest, DataPlaneResponder)
    case pin(Swiftray_PinObjectRequest, DataPlaneResponder)
    case chunk(Swiftray_ReadChunkRequest, DataPlaneResponder)
    var responder: DataPlaneResponder {
      switch self { case .create(_, let r), .pin(_, let r), .chunk(_, let r): return r }
    }
  }

  /// The pin holder of a chunk being copied out to another node (no pid is this large).
  static let transferReader = UInt64(UInt32.max) + 1

  struct State {
    var store: StoreState
    var pulls: PullQueue
    var waiting: [Waiting] = []
    var spilledTotal: UInt64 = 0
    var restoredTotal: UInt64 = 0
    var pulledTotal: UInt64 = 0
    var evictedTotal: UInt64 = 0
    var objectEvents: ObjectEventLog
    var closed = false
    /// The stores of the cluster view: the only ones pulled from.
    var sources = PullSources<(Swiftray_PinObjectRequest, DataPlaneResponder)>()
  }

  public let arenaPath: String
  public let spillDir: String
  public let capacity: Int
  public let endpoint: Endpoint
  /// Where other nodes reach this store ("tcp:host:port"); empty when not networked.
  public let remoteAddress: String
  let base: RawPointer
  let state: Locked<State>
  let io = DispatchQueue(label: "swiftray.store.io")
  let servers: Locked<[DataPlaneServer]> = Locked([])
  /// Serves the requests on this node's Unix socket that are the node's, not the
  /// store's (`NodeManager.localRequest`: registration, key-value reads); set once by
  /// the node. Never reachable over TCP.
  public let localRequests = Locked<DataPlaneServer.Handler?>(nil)
  /// Connections to other nodes' stores, for pulls.
  let peers: DataPlaneClientPool
  /// How long a pulled chunk may take (`object_manager_pull_timeout_ms`).
  let chunkDeadline: TimeAmount
  let log = Logger(label: "swiftray.store")
  let warn: @Sendable (String) -> Void

  struct RawPointer: @unchecked Sendable { let p: UnsafeMutableRawPointer }  // the arena mapping, alive until close

  /// Its listeners and its pulls from other stores use `auth`'s token.
  public init(options: Options, group: EventLoopGroup, auth: ClusterAuth, warn: @escaping @Sendable (String) -> Void) throws {
    self.warn = warn
    chunkDeadline = .milliseconds(Int64(options.pull.chunkTimeoutMs))
    let cap = options.capacity / Allocator.alignment * Allocator.alignment
    Self.removeStaleArenas()
    let tag = "swiftray_\(getpid())_\(String(UInt32.random(in: 0 ... .max), radix: 16))"
    var dir = "/dev/shm"
    var fs = statvfs()
    if statvfs(dir, &fs) != 0 || Int(fs.f_bavail) * Int(fs.f_frsize) < cap {
      // As Ray does: a /dev/shm smaller than the store (containers) falls back to disk.
      let avail = statvfs(dir, &fs) == 0 ? Int(fs.f_bavail) * Int(fs.f_frsize) : 0
      warn("/dev/shm has \(avail) bytes available, less than object_store_memory=\(cap); the object store "
        + "uses \(options.sessionDir) instead, which can be slower. Lower object_store_memory or enlarge "
        + "/dev/shm (docker: --shm-size).")
      dir = options.sessionDir
    }
    let path = "\(dir)/\(tag)"
    let fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw SwiftrayError(.system, "cannot create the object store at \(path): \(String(cString: strerror(errno)))") }
    defer { Foundation.close(fd) }
    guard ftruncate(fd, off_t(cap)) == 0,
      let p = mmap(nil, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED
    else {
      unlink(path)
      throw SwiftrayError(.system, "cannot map the object store (\(cap) bytes) at \(path): \(String(cString: strerror(errno)))")
    }
    arenaPath = path
    capacity = cap
    base = RawPointer(p: p)
    spillDir = (options.spillDirectory ?? options.sessionDir) + "/\(tag)_spill"
    state = Locked(State(store: StoreState(limits: .init(capacity: cap, spillThreshold: options.spillThreshold)),
                        pulls: PullQueue(config: options.pull),
                        objectEvents: ObjectEventLog(enabled: options.recordEvents)))
    endpoint = Self.endpoint(sessionDir: options.sessionDir)
    peers = DataPlaneClientPool(group: group, auth: auth)
    let box = WeakBox()
    let handler: DataPlaneServer.Handler = { frame, responder in box.store?.handle(frame, responder) }
    // Other nodes need only chunk reads (pulls): create, seal, pin, unpin, delete and
    // the rest are served on this node's Unix socket alone.
    let remoteHandler: DataPlaneServer.Handler = { frame, responder in
      guard case .readChunk? = frame.body else {
        return responder.respond(.error(.with {
          $0.message = "an object store serves only chunk reads over TCP; other requests go to its node's Unix socket"
        }))
      }
      box.store?.handle(frame, responder)
    }
    var srvs = [try DataPlaneServer(group: group, endpoint: endpoint, auth: auth, handler: handler)]
    if let host = options.remoteHost {
      do { srvs.append(try DataPlaneServer(group: group, endpoint: .tcp(host: host, port: 0), auth: auth, handler: remoteHandler)) }
      catch { srvs[0].close(); munmap(p, cap); unlink(path); throw SwiftrayError(.system, "the object store cannot listen on \(host): \(error)") }
    }
    remoteAddress = srvs.count > 1 ? srvs[1].endpoint.description : ""
    servers.withLock { $0 = srvs }
    box.store = self
  }

  final class WeakBox: @unchecked Sendable {
    // Written once during init before the server can deliver a frame.
    weak var store: ObjectStore?
  }

  /// Where the store of the node whose session directory is `sessionDir` listens.
  public static func endpoint(sessionDir: String) -> Endpoint { .unix(SessionPaths.socket(sessionDir, "store.sock")) }

  /// Arenas in /dev/shm of processes that died without cleaning up (pid is the 2nd field).
  static func removeStaleArenas() {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm") else { return }
    for name in names where name.hasPrefix("swiftray_") {
      let parts = name.split(separator: "_")
      guard parts.count >= 3, let pid = Int32(parts[1]) else { continue }
      if kill(pid, 0) != 0 && errno == ESRCH { unlink("/dev/shm/" + name) }
    }
  }

  public var stats: Swiftray_StoreStats {
    let (st, spilled, restored, pulled, evicted) = state.withLock {
      ($0.store.stats, $0.spilledTotal, $0.restoredTotal, $0.pulledTotal, $0.evictedTotal)
    }
    var r = Swiftray_StoreStats()
    r.capacity = UInt64(st.capacity)
    r.used = UInt64(st.used)
    r.pinnedBytes = UInt64(st.pinnedBytes)
    r.spilledBytes = UInt64(st.spilledBytes)
    r.numObjects = UInt64(st.objects)
    r.numPinned = UInt64(st.pinnedObjects)
    r.numSpilled = UInt64(st.spilledObjects)
    r.numReaders = UInt64(st.readers)
    r.arenaPath = arenaPath
    r.spillDir = spillDir
    r.bytesSpilledTotal = spilled
    r.bytesRestoredTotal = restored
    r.remoteAddress = remoteAddress
    r.numSecondary = UInt64(st.secondaryObjects)
    r.bytesPulledTotal = pulled
    r.bytesEvictedTotal = evicted
    return r
  }

  /// The stores of the nodes alive in the cluster view (their TCP addresses): the only
  /// ones this store pulls from. Pins that waited for a view are decided now. Any thread.
  /// The nodes of these stores were declared dead: pulls from them fail now (their
  /// readers go on to the rebuild) instead of at the chunk deadline, which a silent
  /// partition would otherwise make them wait out.
  public func storesGone(_ addresses: [String]) {
    for a in addresses { if let ep = Endpoint(a) { peers.close(ep) } }
  }

  public func setPullSources(_ sources: Set<String>) {
    let (allowed, refused) = state.withLock { $0.sources.viewChanged(sources) }
    let now = Clocks.current.now()
    for (req, responder) in allowed { pin(req, responder, now: now) }
    for (req, responder) in refused { refusePull(req, responder) }
  }

  func refusePull(_ req: Swiftray_PinObjectRequest, _ responder: DataPlaneResponder) {
    log.warning("store/pull-refused", metadata: ["from": "\(req.pullFrom)"])
    var reply = Swiftray_PinObjectReply()
    reply.status = .pullFailed
    reply.error = "\(req.pullFrom) is not the object store of a node alive in this node's view of the cluster: not pulled from"
    responder.respond(.pinObjectReply(reply))
  }

  /// Frees `ids` here (their owner, on another node, is done with them). Any thread.
  public func free(_ ids: [ObjectID]) {
    let actions = state.withLock { s in ids.flatMap { s.store.deleted($0) } }
    perform(actions)
  }

  // MARK: requests

  func handle(_ frame: Swiftray_DataFrame, _ responder: DataPlaneResponder) {
    if let bad = Self.invalid(frame.body, capacity: capacity) {
      return responder.respond(.error(.with { $0.message = bad }))
    }
    let now = Clocks.current.now()
    switch frame.body {
    case .createObject(let req): create(req, responder, now: now)
    case .pinObject(let req): pin(req, responder, now: now)
    case .sealObject(let req):
      guard let id = ObjectID(binary: req.objectID) else { return responder.respond(.ack(.init())) }
      let wall = WallClock.nanos()
      let actions = state.withLock { s in
        guard !req.abort else { return s.store.aborted(id) }
        s.objectEvents.record(id, .sealed, size: s.store.entries[id]?.size ?? 0, wallNs: wall)
        return s.store.sealed(id)
      }
      responder.respond(.ack(.init()))
      perform(actions)
    case .unpinObjects(let req):
      let actions = state.withLock { s in
        req.objectIds.compactMap(ObjectID.init(binary:)).flatMap { s.store.unpinned($0, reader: UInt64(req.readerPid)) }
      }
      responder.respond(.ack(.init()))
      perform(actions)
    case .deleteObjects(let req):
      let wall = WallClock.nanos()
      let actions = state.withLock { s in
        req.objectIds.compactMap(ObjectID.init(binary:)).flatMap { id in
          if let e = s.store.entries[id], !e.deleted { s.objectEvents.record(id, .freed, size: e.size, wallNs: wall) }
          return s.store.deleted(id)
        }
      }
      responder.respond(.ack(.init()))
      perform(actions)
    case .promoteObjects(let req):
      var reply = Swiftray_PromoteObjectsReply()
      reply.promoted = state.withLock { s in
        req.objectIds.map { ObjectID(binary: $0).map { s.store.promoted($0, owner: UInt64(req.ownerPid)) } ?? false }
      }
      responder.respond(.promoteObjectsReply(reply))
    case .readChunk(let req): readChunk(req, responder, now: now)
    case .storeStats:
      responder.respond(.storeStatsReply(stats))
    case .registerWorker, .kvGet:
      guard let local = localRequests.withLock({ $0 }) else {
        return responder.respond(.error(.with { $0.message = "this store has no node to register with" }))
      }
      local(frame, responder)
    default:
      responder.respond(.error(.with { $0.message = "not a store request" }))
    }
  }

  /// What is wrong with a request's numbers (nil when nothing): checked before any
  /// conversion or arithmetic, so no peer's value can trap the store. Offsets and
  /// lengths fit the arena (so a sum of two never overflows); an object's size fits an
  /// Int (one larger than the store then gets the store's own "larger than the whole
  /// store"); pids are not negative.
  static func invalid(_ body: Swiftray_DataFrame.OneOf_Body?, capacity: Int) -> String? {
    let cap = UInt64(capacity)
    func pid(_ v: Int32, _ field: String) -> String? { v < 0 ? "\(field) \(v) is negative" : nil }
    func size(_ v: UInt64, _ field: String) -> String? {
      v > cap ? "\(field) \(v) is larger than the object store (\(cap) bytes)" : nil
    }
    func objectSize(_ v: UInt64) -> String? {
      v > UInt64(Int.max / 2) ? "size \(v) is larger than any object store" : nil
    }
    switch body {
    case .createObject(let r)?:
      return objectSize(r.size) ?? pid(r.creatorPid, "creator_pid") ?? pid(r.ownerPid, "owner_pid")
    case .pinObject(let r)?: return objectSize(r.size) ?? pid(r.readerPid, "reader_pid")
    case .unpinObjects(let r)?: return pid(r.readerPid, "reader_pid")
    case .promoteObjects(let r)?: return pid(r.ownerPid, "owner_pid")
    case .readChunk(let r)?: return size(r.offset, "offset") ?? size(r.length, "length")
    default: return nil
    }
  }

  func create(_ req: Swiftray_CreateObjectRequest, _ responder: DataPlaneResponder, now: UInt64) {
    guard let id = ObjectID(binary: req.objectID) else { return }
    let (outcome, actions) = state.withLock { s in
      let r = s.store.createRequested(id, size: StoreState.size(req.size), creator: UInt64(req.creatorPid),
                                      owner: UInt64(req.ownerPid), now: now)
      switch r.0 {
      case .waitForSpill, .waitForCopy: s.waiting.append(.create(req, responder))
      default: break
      }
      return r
    }
    var reply = Swiftray_CreateObjectReply()
    switch outcome {
    case .created(let off): reply.status = .created; reply.offset = UInt64(off); responder.respond(.createObjectReply(reply))
    case .exists: reply.status = .exists; responder.respond(.createObjectReply(reply))
    case .full(let e): reply.status = .full; reply.error = e.message; responder.respond(.createObjectReply(reply))
    case .waitForSpill, .waitForCopy: break
    }
    perform(actions)
  }

  func pin(_ req: Swiftray_PinObjectRequest, _ responder: DataPlaneResponder, now: UInt64) {
    guard let id = ObjectID(binary: req.objectID) else { return }
    var refusedSource = false
    let (outcome, actions, pulls) = state.withLock { s -> (StoreState.PinOutcome, [StoreState.Action], [PullQueue.Action]) in
      var (r, actions) = s.store.pinRequested(id, reader: UInt64(req.readerPid), now: now)
      var pulls: [PullQueue.Action] = []
      if case .notFound = r, !req.pullFrom.isEmpty, req.size > 0, !s.pulls.isActive(id) {
        switch s.sources.check(req.pullFrom, (req, responder)) {
        case .allowed: break
        case .parked: return (.wait, actions, [])  // decided by the next cluster view
        case .refused: refusedSource = true; return (.wait, actions, [])
        }
      }
      if case .notFound = r, !req.pullFrom.isEmpty, req.size > 0 {
        if s.pulls.isActive(id) {
          r = .wait  // freed while being pulled: wait for that pull to settle
        } else {
          // Not here: reserve its extent as a secondary copy and pull it.
          let (c, more) = s.store.createRequested(id, size: StoreState.size(req.size), creator: 0, owner: 0, now: now, secondary: true)
          actions += more
          switch c {
          case .created:
            pulls = s.pulls.started(id, size: StoreState.size(req.size), source: req.pullFrom); r = .wait
            s.objectEvents.began(id, .pulled, wallNs: WallClock.nanos(), peer: req.pullFrom)
          case .exists, .waitForSpill, .waitForCopy: r = .wait
          case .full(let e): r = .full(e)
          }
        }
      }
      if case .wait = r { s.waiting.append(.pin(req, responder)) }
      return (r, actions, pulls)
    }
    if refusedSource { refusePull(req, responder) }
    var reply = Swiftray_PinObjectReply()
    switch outcome {
    case .pinned(let off, let size):
      reply.status = .pinned; reply.offset = UInt64(off); reply.size = UInt64(size)
      responder.respond(.pinObjectReply(reply))
    case .notFound: reply.status = .notFound; responder.respond(.pinObjectReply(reply))
    case .lost(let why): reply.status = .lost; reply.error = why; responder.respond(.pinObjectReply(reply))
    case .full(let e): reply.status = .full; reply.error = e.message; responder.respond(.pinObjectReply(reply))
    case .wait: break
    }
    perform(actions)
    perform(pulls)
  }

  // MARK: transfer

  /// Another node's store asks for a chunk: pinned while it is copied out, then sent raw
  /// after the reply frame.
  func readChunk(_ req: Swiftray_ReadChunkRequest, _ responder: DataPlaneResponder, now: UInt64) {
    guard let id = ObjectID(binary: req.objectID) else { return }
    let (outcome, actions) = state.withLock { s in
      let r = s.store.pinRequested(id, reader: Self.transferReader, now: now)
      if case .wait = r.0 { s.waiting.append(.chunk(req, responder)) }
      return r
    }
    perform(actions)
    var reply = Swiftray_ReadChunkReply()
    switch outcome {
    case .pinned(let off, let size):
      reply.objectSize = UInt64(size)
      let (from, count) = (StoreState.size(req.offset), StoreState.size(req.length))  // a peer's numbers: clamped, the sum cannot overflow
      var payload = responder.allocator.buffer(capacity: 0)
      if from + count > size {
        reply.status = .failed
        reply.error = "chunk \(from)+\(count) is past the end of object \(id.hex) (\(size) bytes)"
      } else {
        payload = responder.allocator.buffer(capacity: count)
        payload.writeBytes(UnsafeRawBufferPointer(start: base.p + off + from, count: count))
      }
      perform(state.withLock { $0.store.unpinned(id, reader: Self.transferReader) })
      reply.status == .ok ? responder.respond(.readChunkReply(reply), payload: payload) : responder.respond(.readChunkReply(reply))
    case .notFound, .lost:
      reply.status = .notFound
      responder.respond(.readChunkReply(reply))
    case .full(let e):
      reply.status = .failed
      reply.error = e.message
      responder.respond(.readChunkReply(reply))
    case .wait: break
    }
  }

  func perform(_ actions: [PullQueue.Action]) {
    for a in actions {
      switch a {
      case .request(let c):
        guard let ep = Endpoint(c.source) else {
          perform(state.withLock { $0.pulls.chunkFailed(c.id, length: c.length, reason: "bad store address \(c.source)") })
          continue
        }
        var req = Swiftray_ReadChunkRequest()
        req.objectID = Data(c.id.binary)
        req.offset = UInt64(c.offset)
        req.length = UInt64(c.length)
        peers.requestWithPayload(ep, .readChunk(req), deadline: chunkDeadline) { [self] r in
          chunkReplied(c, r)
        }
      case .complete(let id):
        let wall = WallClock.nanos()
        perform(state.withLock { s in
          let size = s.store.entries[id]?.size ?? 0
          s.pulledTotal += UInt64(size)
          s.objectEvents.record(id, .pulled, size: size, wallNs: wall)
          return s.store.sealed(id)
        })
      case .fail(let id, let reason):
        let wall = WallClock.nanos()
        let (actions, pins) = state.withLock { s -> ([StoreState.Action], [DataPlaneResponder]) in
          s.objectEvents.record(id, .pullFailed, size: s.store.entries[id]?.size ?? 0, wallNs: wall, peer: reason)
          var pins: [DataPlaneResponder] = []
          s.waiting.removeAll { w in
            guard case .pin(let req, let r) = w, req.objectID == Data(id.binary) else { return false }
            pins.append(r)
            return true
          }
          return (s.store.aborted(id), pins)
        }
        var reply = Swiftray_PinObjectReply()
        reply.status = .pullFailed
        reply.error = reason
        for r in pins { r.respond(.pinObjectReply(reply)) }
        perform(actions)
      }
    }
  }

  /// On an event loop: writes an arrived chunk into the copy's extent (reserved while
  /// the pull is active, so the write needs no lock), then reports it.
  func chunkReplied(_ c: PullQueue.Chunk, _ r: Result<(Swiftray_DataFrame, ByteBuffer?), SwiftrayError>) {
    var failure: String?
    switch r {
    case .success(let (frame, payload)):
      guard case .readChunkReply(let reply)? = frame.body else { failure = "bad reply from the store at \(c.source)"; break }
      switch reply.status {
      case .ok:
        guard let payload, payload.readableBytes == c.length else {
          failure = "short chunk from the store at \(c.source)"
          break
        }
        let off = state.withLock { s in s.pulls.isActive(c.id) ? s.store.entries[c.id]?.offset : nil }
        guard let off else { return }
        payload.withUnsafeReadableBytes { src in (base.p + off + c.offset).copyMemory(from: src.baseAddress!, byteCount: c.length) }
      case .notFound:
        failure = "object \(c.id.hex) is no longer in the object store at \(c.source) (freed, or lost with its node)"
      default:
        failure = "the object store at \(c.source) could not send object \(c.id.hex): \(reply.error)"
      }
    case .failure(let e):
      failure = "the object store at \(c.source), which holds object \(c.id.hex), is unreachable: \(e.message)"
    }
    perform(state.withLock { s in
      failure.map { s.pulls.chunkFailed(c.id, length: c.length, reason: $0) } ?? s.pulls.chunkArrived(c.id, offset: c.offset, length: c.length)
    })
  }

  /// A process of this node died: its pins, half-written and owned objects go.
  public func processDied(_ pid: Int32) {
    perform(state.withLock { $0.store.processDied(UInt64(pid)) })
  }

  // MARK: actions

  func perform(_ actions: [StoreState.Action]) {
    for a in actions {
      switch a {
      case .spill(let id, let off, let size):
        io.async { [self] in
          let began = WallClock.nanos()
          let ok = writeFile(spillPath(id), from: base.p + off, count: size)
          if !ok { warn("could not spill object \(id.hex) to \(spillDir): \(String(cString: strerror(errno))); it stays in memory") }
          let wall = WallClock.nanos()
          perform(state.withLock { s in
            guard ok else { return s.store.spillFailed(id) }
            s.spilledTotal += UInt64(size)
            s.objectEvents.record(id, .spilled, size: size, wallNs: wall, startNs: began)
            return s.store.spillFinished(id)
          })
        }
      case .restore(let id, let off, let size):
        io.async { [self] in
          let began = WallClock.nanos()
          let ok = readFile(spillPath(id), into: base.p + off, count: size)
          let wall = WallClock.nanos()
          if !ok {
            warn("object \(id.hex) could not be read back from its spill file \(spillPath(id)) (missing, short or "
              + "unreadable): it is lost on this node; its owner rebuilds it or reports it lost")
          }
          perform(state.withLock { s in
            guard ok else { return s.store.restoreFailed(id) }
            s.restoredTotal += UInt64(size)
            s.objectEvents.record(id, .restored, size: size, wallNs: wall, startNs: began)
            return s.store.restoreFinished(id)
          })
        }
      case .deleteSpillFile(let id):
        io.async { [self] in unlink(spillPath(id)) }
      case .evicted(let id, let size):
        let wall = WallClock.nanos()
        state.withLock { s in
          s.evictedTotal += UInt64(size)
          s.objectEvents.record(id, .evicted, size: size, wallNs: wall)
        }
      case .retryWaiting:
        let waiting = state.withLock { s -> [Waiting] in let w = s.waiting; s.waiting = []; return w }
        let now = Clocks.current.now()
        for w in waiting {
          switch w {
          case .create(let req, let r): create(req, r, now: now)
          case .pin(let req, let r): pin(req, r, now: now)
          case .chunk(let req, let r): readChunk(req, r, now: now)
          }
        }
      }
    }
  }

  /// What happened to objects here since the last call (at most `max`), and how many
  /// events the ring dropped: for the NodeManager's reports to the head.
  public func takeObjectEvents(max: Int) -> (events: [Swiftray_ObjectEvent], dropped: UInt64) {
    state.withLock { $0.objectEvents.take(max: max) }
  }

  func spillPath(_ id: ObjectID) -> String { "\(spillDir)/\(id.hex)" }

  func writeFile(_ path: String, from p: UnsafeMutableRawPointer, count: Int) -> Bool {
    try? FileManager.default.createDirectory(atPath: spillDir, withIntermediateDirectories: true)
    let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return false }
    defer { Foundation.close(fd) }
    var done = 0
    while done < count {
      let n = pwrite(fd, p + done, count - done, off_t(done))
      if n <= 0 { if n < 0 && errno == EINTR { continue }; return false }
      done += n
    }
    return true
  }

  func readFile(_ path: String, into p: UnsafeMutableRawPointer, count: Int) -> Bool {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { Foundation.close(fd) }
    // Exactly the object's bytes: a file of another length is not this object's.
    var st = stat()
    guard fstat(fd, &st) == 0, Int64(st.st_size) == Int64(count) else { return false }
    var done = 0
    while done < count {
      let n = pread(fd, p + done, count - done, off_t(done))
      if n <= 0 { if n < 0 && errno == EINTR { continue }; return false }
      done += n
    }
    return true
  }

  /// Stops serving, fails waiters, unmaps and removes the arena and spill files.
  public func close() {
    let waiting = state.withLock { s -> [Waiting] in s.closed = true; let w = s.waiting; s.waiting = []; return w }
    for w in waiting { w.responder.respond(.error(.with { $0.message = "the object store is shutting down" })) }
    for srv in servers.withLock({ $0 }) { srv.close() }
    peers.closeAll()
    io.sync {}
    munmap(base.p, capacity)
    unlink(arenaPath)
    try? FileManager.default.removeItem(atPath: spillDir)
  }
}
