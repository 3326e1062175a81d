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
/// one serial I/O queue.
///
/// Threading: data-plane handlers (NIO event loops), the I/O queue and the NodeManager
/// (process deaths) call in concurrently; all state is behind one Mutex and actions
/// run outside it. Nothing here blocks an event loop.
public final class ObjectStore: Sendable {
  public struct Options: Sendable {
    public var capacity: Int
    public var spillThreshold: Double
    public var sessionDir: String
    /// Parent directory for spill files (`object_spilling_directory`); the session dir if nil.
    public var spillDirectory: String?
    public init(capacity: Int, spillThreshold: Double = 0.8, sessionDir: String, spillDirectory: String? = nil) {
      self.capacity = capacity; self.spillThreshold = spillThreshold
      self.sessionDir = sessionDir; self.spillDirectory = spillDirectory
    }
  }

  /// Ray's default capacity: 30 % of physical memory, at least 75 MiB.
  public static var defaultCapacity: Int {
    max(75 << 20, Int(Double(ProcessInfo.processInfo.physicalMemory) * 0.3))
  }

  enum Waiting {
    case create(Swiftray_CreateObjectRequest, DataPlaneResponder)
    case pin(Swiftray_PinObjectRequest, DataPlaneResponder)
    var responder: DataPlaneResponder {
      switch self { case .create(_, let r), .pin(_, let r): return r }
    }
  }

  struct State {
    var store: StoreState
    var waiting: [Waiting] = []
    var spilledTotal: UInt64 = 0
    var restoredTotal: UInt64 = 0
    var closed = false
  }

  public let arenaPath: String
  public let spillDir: String
  public let capacity: Int
  public let endpoint: Endpoint
  let base: RawPointer
  let state: Mutex<State>
  let io = DispatchQueue(label: "swiftray.store.io")
  let server: Mutex<DataPlaneServer?> = Mutex(nil)
  let log = Logger(label: "swiftray.store")
  let warn: @Sendable (String) -> Void

  struct RawPointer: @unchecked Sendable { let p: UnsafeMutableRawPointer }  // the arena mapping, alive until close

  public init(options: Options, group: EventLoopGroup, warn: @escaping @Sendable (String) -> Void) throws {
    self.warn = warn
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
    state = Mutex(State(store: StoreState(limits: .init(capacity: cap, spillThreshold: options.spillThreshold))))
    endpoint = Self.endpoint(sessionDir: options.sessionDir)
    let box = WeakBox()
    let srv = try DataPlaneServer(group: group, endpoint: endpoint) { frame, responder in
      box.store?.handle(frame, responder)
    }
    server.withLock { $0 = srv }
    box.store = self
  }

  final class WeakBox: @unchecked Sendable {
    // Written once during init before the server can deliver a frame.
    weak var store: ObjectStore?
  }

  /// Where the store of the node whose session directory is `sessionDir` listens.
  public static func endpoint(sessionDir: String) -> Endpoint { .unix(sessionDir + "/sockets/store.sock") }

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
    let (st, spilled, restored) = state.withLock { ($0.store.stats, $0.spilledTotal, $0.restoredTotal) }
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
    return r
  }

  // MARK: requests

  func handle(_ frame: Swiftray_DataFrame, _ responder: DataPlaneResponder) {
    let now = DispatchTime.now().uptimeNanoseconds
    switch frame.body {
    case .createObject(let req): create(req, responder, now: now)
    case .pinObject(let req): pin(req, responder, now: now)
    case .sealObject(let req):
      guard let id = ObjectID(binary: req.objectID) else { return responder.respond(.ack(.init())) }
      let actions = state.withLock { req.abort ? $0.store.aborted(id) : $0.store.sealed(id) }
      responder.respond(.ack(.init()))
      perform(actions)
    case .unpinObjects(let req):
      let actions = state.withLock { s in
        req.objectIds.compactMap(ObjectID.init(binary:)).flatMap { s.store.unpinned($0, reader: UInt64(req.readerPid)) }
      }
      responder.respond(.ack(.init()))
      perform(actions)
    case .deleteObjects(let req):
      let actions = state.withLock { s in req.objectIds.compactMap(ObjectID.init(binary:)).flatMap { s.store.deleted($0) } }
      responder.respond(.ack(.init()))
      perform(actions)
    case .storeStats:
      responder.respond(.storeStatsReply(stats))
    default:
      responder.respond(.error(.with { $0.message = "not a store request" }))
    }
  }

  func create(_ req: Swiftray_CreateObjectRequest, _ responder: DataPlaneResponder, now: UInt64) {
    guard let id = ObjectID(binary: req.objectID) else { return }
    let (outcome, actions) = state.withLock { s in
      let r = s.store.createRequested(id, size: Int(req.size), creator: UInt64(req.creatorPid),
                                      owner: UInt64(req.ownerPid), now: now)
      if case .waitForSpill = r.0 { s.waiting.append(.create(req, responder)) }
      return r
    }
    var reply = Swiftray_CreateObjectReply()
    switch outcome {
    case .created(let off): reply.status = .created; reply.offset = UInt64(off); responder.respond(.createObjectReply(reply))
    case .exists: reply.status = .exists; responder.respond(.createObjectReply(reply))
    case .full(let e): reply.status = .full; reply.error = e.message; responder.respond(.createObjectReply(reply))
    case .waitForSpill: break
    }
    perform(actions)
  }

  func pin(_ req: Swiftray_PinObjectRequest, _ responder: DataPlaneResponder, now: UInt64) {
    guard let id = ObjectID(binary: req.objectID) else { return }
    let (outcome, actions) = state.withLock { s in
      let r = s.store.pinRequested(id, reader: UInt64(req.readerPid), now: now)
      if case .wait = r.0 { s.waiting.append(.pin(req, responder)) }
      return r
    }
    var reply = Swiftray_PinObjectReply()
    switch outcome {
    case .pinned(let off, let size):
      reply.status = .pinned; reply.offset = UInt64(off); reply.size = UInt64(size)
      responder.respond(.pinObjectReply(reply))
    case .notFound: reply.status = .notFound; responder.respond(.pinObjectReply(reply))
    case .full(let e): reply.status = .full; reply.error = e.message; responder.respond(.pinObjectReply(reply))
    case .wait: break
    }
    perform(actions)
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
          let ok = writeFile(spillPath(id), from: base.p + off, count: size)
          if !ok { warn("could not spill object \(id.hex) to \(spillDir): \(String(cString: strerror(errno))); it stays in memory") }
          perform(state.withLock { s in
            if ok { s.spilledTotal += UInt64(size) }
            return ok ? s.store.spillFinished(id) : s.store.spillFailed(id)
          })
        }
      case .restore(let id, let off, let size):
        io.async { [self] in
          let ok = readFile(spillPath(id), into: base.p + off, count: size)
          if !ok { log.error("store/restore-failed", metadata: ["object": "\(id.hex)"]) }
          perform(state.withLock { s in
            s.restoredTotal += UInt64(size)
            return s.store.restoreFinished(id)
          })
        }
      case .deleteSpillFile(let id):
        io.async { [self] in unlink(spillPath(id)) }
      case .retryWaiting:
        let waiting = state.withLock { s -> [Waiting] in let w = s.waiting; s.waiting = []; return w }
        let now = DispatchTime.now().uptimeNanoseconds
        for w in waiting {
          switch w {
          case .create(let req, let r): create(req, r, now: now)
          case .pin(let req, let r): pin(req, r, now: now)
          }
        }
      }
    }
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
    server.withLock { $0 }?.close()
    io.sync {}
    munmap(base.p, capacity)
    unlink(arenaPath)
    try? FileManager.default.removeItem(atPath: spillDir)
  }
}
