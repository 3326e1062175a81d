import NIOPosix

/// gRPC clients by endpoint, each made on first use and kept: the NodeManagers a process
/// leases from, the ones the ControlService checks and places on, a node's head.
///
/// Threading: any thread or task. A client is made outside the lock (making one starts
/// a Task); when two callers race, one client is kept and the other closed.
public final class ControlClients: Sendable {
  struct State {
    var clients: [String: ControlPlane.Connection] = [:]
    var closed = false
  }
  let group: MultiThreadedEventLoopGroup
  let auth: ClusterAuth
  let state = Locked(State())

  /// Clients whose calls carry `auth`'s token.
  public init(group: MultiThreadedEventLoopGroup, auth: ClusterAuth) { self.group = group; self.auth = auth }

  /// The client for `endpoint` (text form), made if needed; nil for an endpoint that
  /// does not parse, or once closed.
  public func client(_ endpoint: String) -> ControlPlane.Connection? {
    enum Known { case client(ControlPlane.Connection), none, closed }
    let known: Known = state.withLock { s in
      if s.closed { return .closed }
      return s.clients[endpoint].map(Known.client) ?? .none
    }
    switch known {
    case .client(let c): return c
    case .closed: return nil
    case .none: break
    }
    guard let ep = Endpoint(endpoint), let made = try? ControlPlane.connect(ep, group: group, auth: auth) else { return nil }
    let (use, spare): (ControlPlane.Connection?, ControlPlane.Connection?) = state.withLock { s in
      if s.closed { return (nil, made) }
      if let c = s.clients[endpoint] { return (c, made) }
      s.clients[endpoint] = made
      return (made, nil)
    }
    spare?.close()
    return use
  }

  /// Forgets the clients of `endpoints` and begins closing them (does not wait).
  public func remove(_ endpoints: some Sequence<String>) {
    let gone: [ControlPlane.Connection] = state.withLock { s in endpoints.compactMap { s.clients.removeValue(forKey: $0) } }
    for c in gone { c.close() }
  }

  /// Closes every client; later calls to `client` get nil. Blocks until in-flight RPCs
  /// end (bounded): call from a thread of your own.
  public func shutdown() {
    let all: [ControlPlane.Connection] = state.withLock { s in
      s.closed = true
      defer { s.clients.removeAll() }
      return Array(s.clients.values)
    }
    for c in all { c.shutdown() }
  }
}
