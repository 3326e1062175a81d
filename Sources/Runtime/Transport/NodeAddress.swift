import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// The IP address a node advertises to the rest of its cluster (`--node-ip-address`).
///
/// Threading: plain blocking syscalls (a UDP `connect` asks the kernel for a route, no
/// packet is sent); call it before any event loop starts, never on one.
public enum NodeAddress {
  /// As Ray does when no `--node-ip-address` is given: the address of this machine's
  /// interface that routes to `head` (a joining node), or to a public address when this
  /// is the head (the interface of its default route); 127.0.0.1 when there is no
  /// such route (a machine without a network).
  public static func detect(head: (host: String, port: Int)?) -> String {
    let target = head ?? (host: "8.8.8.8", port: 80)
    return routedSource(toward: target.host, port: target.port) ?? "127.0.0.1"
  }

  /// The local address the kernel would send from to reach `host:port`, or nil.
  static func routedSource(toward host: String, port: Int) -> String? {
    guard (1...65535).contains(port) else { return nil }
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
    hints.ai_family = AF_UNSPEC
    var list: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { return nil }
    defer { freeaddrinfo(list) }
    var entry: UnsafeMutablePointer<addrinfo>? = first
    while let a = entry {
      defer { entry = a.pointee.ai_next }
      let fd = socket(a.pointee.ai_family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
      guard fd >= 0 else { continue }
      defer { close(fd) }
      guard connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 else { continue }
      var local = sockaddr_storage()
      var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
      let got = withUnsafeMutablePointer(to: &local) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
      }
      guard got == 0, let text = numericHost(&local, length) else { continue }
      return text
    }
    return nil
  }

  /// True when `text` is a numeric IPv4 or IPv6 address (what a node may advertise).
  /// The host as a URL writes it (an IPv6 address in brackets).
  public static func hostForURL(_ host: String) -> String { host.contains(":") ? "[\(host)]" : host }

  /// True for an address of this machine's loopback (127.0.0.0/8, ::1) or every
  /// interface (0.0.0.0, ::), which a listener there already covers.
  public static func isLoopback(_ text: String) -> Bool {
    text.hasPrefix("127.") || text == "::1" || text == "0.0.0.0" || text == "::" || text == "localhost"
  }

  public static func isIPAddress(_ text: String) -> Bool {
    var v4 = in_addr()
    var v6 = in6_addr()
    return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
  }

  private static func numericHost(_ address: inout sockaddr_storage, _ length: socklen_t) -> String? {
    var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
    let rc = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        getnameinfo($0, length, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST)
      }
    }
    guard rc == 0 else { return nil }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }
}
