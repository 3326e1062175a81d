import NIOCore

/// Where a server listens: a Unix domain socket on one node, TCP between nodes.
/// Text form: "unix:/path/to.sock" or "tcp:host:port"; "memory:NAME" names a server
/// on this process's `MemoryNetwork` (tests and simulations of several processes in one:
/// nothing outside the process can reach it).
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
  case unix(String)
  case tcp(host: String, port: Int)
  case memory(String)

  public init?(_ text: String) {
    if text.hasPrefix("unix:") {
      self = .unix(String(text.dropFirst(5)))
    } else if text.hasPrefix("tcp:") {
      let rest = text.dropFirst(4)
      guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]) else { return nil }
      self = .tcp(host: String(rest[..<colon]), port: port)
    } else if text.hasPrefix("memory:"), text.count > 7 {
      self = .memory(String(text.dropFirst(7)))
    } else {
      return nil
    }
  }

  public var description: String {
    switch self {
    case .unix(let p): return "unix:\(p)"
    case .tcp(let h, let p): return "tcp:\(h):\(p)"
    case .memory(let name): return "memory:\(name)"
    }
  }
}
