import NIOCore
import NIOPosix
import RuntimeProto

/// The network of one process's memory: servers named by `Endpoint.memory`, reached by
/// the same `ControlPlane` clients and `DataPlaneClientPool`s as sockets, so that the
/// runtime's shells (ControlService, NodeManager, CoreWorker) can run side by side in
/// one process — tests, and simulations of whole clusters on a `ManualClock` — with no
/// socket, port or file. Links can be cut and healed: a cut endpoint refuses new calls
/// and fails those in flight, as a connection reset or a missed keep-alive would.
///
/// Nothing outside the process reaches it, so no token is checked on the data plane
/// (gRPC's interceptors still run on the control plane). In production it carries only
/// gRPC calls between services of one process, through each socket server's in-process
/// twin (`ControlPlane.inProcessTwin`); the data plane there stays on sockets.
///
/// Threading: any thread. Handlers and reply callbacks run on event loops, never inline
/// in a request; no lock is held while either runs.
public final class MemoryNetwork: Sendable {
  /// The process's network (memory endpoints are names within it).
  public static let shared = MemoryNetwork()

  /// A data-plane server: its handler, the loop it runs on, and what waits on it.
  struct DataServer {
    let handler: DataPlaneServer.Handler
    let loop: any EventLoop
    /// Requests in the order they were made, handed to the handler by one loop task
    /// (actor calls rely on the order, as on a socket).
    var inbox: [Swiftray_DataFrame] = []
    var drainScheduled = false
    /// Requests handed over and not yet answered.
    var pending: [UInt64: DataPlaneConnection.Waiter] = [:]
  }

  struct State {
    var data: [String: DataServer] = [:]
    var control: [String: MemoryServerTransport] = [:]
    /// gRPC calls in flight, by server name: what to fail when the link is cut.
    var calls: [String: [UInt64: @Sendable () -> Void]] = [:]
    var cut: Set<String> = []
    var nextID: UInt64 = 1
  }

  let state = Locked(State())

  public init() {}

  // MARK: links

  /// Cuts `endpoint` off: calls to it fail from now on (those in flight too) until `heal`.
  public func cut(_ endpoint: Endpoint) {
    guard case .memory(let name) = endpoint else { return }
    let (waiters, calls): ([DataPlaneConnection.Waiter], [@Sendable () -> Void]) = state.withLock { s in
      s.cut.insert(name)
      defer { s.data[name]?.pending.removeAll(); s.calls[name] = nil }
      return (s.data[name].map { Array($0.pending.values) } ?? [], s.calls[name].map { Array($0.values) } ?? [])
    }
    let e = SwiftrayError(.system, "connection lost: \(endpoint) was cut off")
    for w in waiters { w.fail(e) }
    for c in calls { c() }
  }

  /// Lets calls reach `endpoint` again.
  public func heal(_ endpoint: Endpoint) {
    guard case .memory(let name) = endpoint else { return }
    _ = state.withLock { $0.cut.remove(name) }
  }

  /// Whether `name` is cut off.
  func isCut(_ name: String) -> Bool { state.withLock { $0.cut.contains(name) } }

  // MARK: data plane

  /// Serves `handler` at `name` on `loop`; throws when the name is taken.
  func serveData(_ name: String, loop: any EventLoop, handler: @escaping DataPlaneServer.Handler) throws {
    let taken: Bool = state.withLock { s in
      if s.data[name] != nil { return true }
      s.data[name] = DataServer(handler: handler, loop: loop)
      return false
    }
    if taken { throw SwiftrayError(.system, "memory:\(name) is already served") }
  }

  /// Stops serving `name`: what it had not answered fails, as when a process exits.
  func closeData(_ name: String) {
    let waiters: [DataPlaneConnection.Waiter] = state.withLock { s in
      s.data.removeValue(forKey: name).map { Array($0.pending.values) } ?? []
    }
    for w in waiters { w.fail(SwiftrayError(.system, "connection lost: memory:\(name) closed")) }
  }

  /// A request from a `DataPlaneClientPool`: handed to the server in call order, its
  /// reply (or the failure) to `waiter` on an event loop (`fallback` when there is no
  /// server to run it on).
  func request(_ name: String, _ body: Swiftray_DataFrame.OneOf_Body, _ waiter: DataPlaneConnection.Waiter,
               fallback: any EventLoop) {
    LockDiscipline.mustNotHoldLock("MemoryNetwork.request")
    var f = Swiftray_DataFrame()
    f.body = body
    // The size limit a socket's peer enforces, so code that works here works there.
    if let why = DataPlane.tooLarge((try? f.serializedBytes() as [UInt8])?.count ?? 0) {
      return fallback.execute { waiter.fail(SwiftrayError(.invalidArgument, why)) }
    }
    enum Step { case refused(String), drain(any EventLoop), queued }
    let step: Step = state.withLock { s in
      if s.cut.contains(name) { return .refused("memory:\(name) is cut off") }
      guard s.data[name] != nil else { return .refused("nothing serves memory:\(name)") }
      f.id = s.nextID
      s.nextID += 1
      s.data[name]!.pending[f.id] = waiter
      s.data[name]!.inbox.append(f)
      guard !s.data[name]!.drainScheduled else { return .queued }
      s.data[name]!.drainScheduled = true
      return .drain(s.data[name]!.loop)
    }
    switch step {
    case .refused(let why): fallback.execute { waiter.fail(SwiftrayError(.system, "cannot connect to memory:\(name): \(why)")) }
    case .queued: break
    case .drain(let loop): loop.execute { self.drain(name) }
    }
  }

  /// On the server's loop: hands every queued request to its handler, in order.
  private func drain(_ name: String) {
    let (frames, handler): ([Swiftray_DataFrame], DataPlaneServer.Handler?) = state.withLock { s in
      guard s.data[name] != nil else { return ([], nil) }
      s.data[name]!.drainScheduled = false
      defer { s.data[name]!.inbox.removeAll(keepingCapacity: true) }
      return (s.data[name]!.inbox, s.data[name]!.handler)
    }
    guard let handler else { return }
    for f in frames { handler(f, DataPlaneResponder(memory: MemoryReply(network: self, name: name, id: f.id))) }
  }

  /// A server's answer to request `id`: to its waiter, on the server's loop.
  func reply(_ name: String, id: UInt64, _ frame: Swiftray_DataFrame, payload: ByteBuffer?) {
    let found: (DataPlaneConnection.Waiter, any EventLoop)? = state.withLock { s in
      guard let loop = s.data[name]?.loop, let w = s.data[name]?.pending.removeValue(forKey: id) else { return nil }
      if !w.once { s.data[name]?.pending[id] = w }
      return (w, loop)
    }
    guard let (waiter, loop) = found else { return }  // cut, closed, or answered twice
    loop.execute { waiter.succeed(frame, payload: payload) }
  }

  // MARK: control plane

  /// Serves a gRPC server transport at `name`; throws when the name is taken.
  func serveControl(_ name: String, _ transport: MemoryServerTransport) throws {
    let taken: Bool = state.withLock { s in
      if s.control[name] != nil { return true }
      s.control[name] = transport
      return false
    }
    if taken { throw SwiftrayError(.system, "memory:\(name) is already served") }
  }

  /// The service of type `S` served at `name` now, for a caller in this process to call
  /// directly (`LocalCall`); nil when none is (or the link is cut).
  func localService<S>(_ name: String, _ type: S.Type) -> S? {
    guard let t = state.withLock({ $0.cut.contains(name) ? nil : $0.control[name] }),
          t.open.load(ordering: .acquiring) else { return nil }
    return t.services.lazy.compactMap { $0 as? S }.first
  }

  /// Whether a gRPC server is served at `name` now.
  func servesControl(_ name: String) -> Bool {
    state.withLock { $0.control[name] != nil && !$0.cut.contains(name) }
  }

  func closeControl(_ name: String, _ transport: MemoryServerTransport) {
    let calls: [@Sendable () -> Void] = state.withLock { s in
      guard s.control[name] === transport else { return [] }
      s.control[name] = nil
      return s.calls.removeValue(forKey: name).map { Array($0.values) } ?? []
    }
    for c in calls { c() }
  }

  /// Opens a call to `name`: its server, and the id under which `abort` (run when the
  /// link is cut or the server closes) is kept; nil when unreachable.
  func openCall(_ name: String, abort: @escaping @Sendable () -> Void) -> (MemoryServerTransport, UInt64)? {
    state.withLock { s in
      guard !s.cut.contains(name), let server = s.control[name] else { return nil }
      let id = s.nextID
      s.nextID += 1
      s.calls[name, default: [:]][id] = abort
      return (server, id)
    }
  }

  func closeCall(_ name: String, _ id: UInt64) {
    state.withLock { s in
      s.calls[name]?.removeValue(forKey: id)
      if s.calls[name]?.isEmpty == true { s.calls[name] = nil }
    }
  }
}

/// Where a memory server's reply goes. Threading: any thread.
struct MemoryReply: Sendable {
  let network: MemoryNetwork
  let name: String
  let id: UInt64
  func send(_ frame: Swiftray_DataFrame, payload: ByteBuffer?) { network.reply(name, id: id, frame, payload: payload) }
}
