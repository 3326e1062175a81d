import Foundation
import GRPCNIOTransportHTTP2
import NIOCore
import NIOSSL

/// Mutual TLS between machines (DESIGN §11), on when `SWIFTRAY_USE_TLS=1` (or Ray's
/// `RAY_USE_TLS`): every TCP connection of both planes and of object transfer is TLS,
/// and each side must show a certificate that `SWIFTRAY_TLS_CA_CERT` signed, or the
/// handshake fails before a byte of the protocol is read. Unix sockets stay plaintext:
/// they never leave the machine and live in a 0700 folder of this user; the token is
/// checked on them as on TCP.
///
/// The certificate is the proof of membership, so host names are not checked (nodes
/// join by IP, and an address can move); the CA is the cluster's own.
///
/// Threading: an immutable value (NIOSSLContext is thread-safe); any thread.
public struct ClusterTLS: Sendable, Equatable {
  public let certPath: String
  public let keyPath: String
  public let caPath: String
  /// The PEM bytes, for gRPC's configuration.
  let certPEM: [UInt8], keyPEM: [UInt8], caPEM: [UInt8]
  /// Data-plane contexts, made once: a context per connection would re-read the keys.
  let serverContext: NIOSSLContext
  let clientContext: NIOSSLContext

  public static func == (a: ClusterTLS, b: ClusterTLS) -> Bool {
    a.certPath == b.certPath && a.keyPath == b.keyPath && a.caPath == b.caPath
  }

  /// The variables, each with Ray's name beside ours.
  static let useKeys = ["SWIFTRAY_USE_TLS", "RAY_USE_TLS"]
  static let certKeys = ["SWIFTRAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_CERT"]
  static let keyKeys = ["SWIFTRAY_TLS_SERVER_KEY", "RAY_TLS_SERVER_KEY"]
  static let caKeys = ["SWIFTRAY_TLS_CA_CERT", "RAY_TLS_CA_CERT"]

  /// The TLS configuration the environment asks for; nil when TLS is off. A value
  /// other than 0/1/true/false, or a missing or unreadable file, is an error naming it.
  public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(SwiftrayError) -> ClusterTLS? {
    var on = false
    for key in useKeys {
      guard let v = environment[key]?.lowercased(), !v.isEmpty else { continue }
      switch v {
      case "1", "true", "yes", "on": on = true
      case "0", "false", "no", "off": on = false
      default: throw SwiftrayError(.invalidArgument, "$\(key)=\(v) is not understood: use 1 to turn TLS on, 0 to leave it off.")
      }
      break
    }
    guard on else { return nil }
    func path(_ keys: [String], _ what: String) throws(SwiftrayError) -> (String, [UInt8]) {
      for key in keys {
        guard let p = environment[key], !p.isEmpty else { continue }
        guard let bytes = readPEM(p) else {
          throw SwiftrayError(.invalidArgument, "$\(key) names \(p) (\(what)), which cannot be read as a PEM file of at most 1 MiB.")
        }
        return (p, bytes)
      }
      throw SwiftrayError(.invalidArgument, "TLS is on ($SWIFTRAY_USE_TLS) but $\(keys[0]) (\(what)) is not set: "
        + "set SWIFTRAY_TLS_SERVER_CERT, SWIFTRAY_TLS_SERVER_KEY and SWIFTRAY_TLS_CA_CERT on every node and driver.")
    }
    let (certPath, certPEM) = try path(certKeys, "this node's certificate")
    let (keyPath, keyPEM) = try path(keyKeys, "its private key")
    let (caPath, caPEM) = try path(caKeys, "the cluster's CA certificate")
    do {
      return try ClusterTLS(certPath: certPath, keyPath: keyPath, caPath: caPath,
                            certPEM: certPEM, keyPEM: keyPEM, caPEM: caPEM)
    } catch {
      throw SwiftrayError(.invalidArgument, "cannot use the TLS files \(certPath), \(keyPath), \(caPath): \(error)")
    }
  }

  init(certPath: String, keyPath: String, caPath: String, certPEM: [UInt8], keyPEM: [UInt8], caPEM: [UInt8]) throws {
    self.certPath = certPath; self.keyPath = keyPath; self.caPath = caPath
    self.certPEM = certPEM; self.keyPEM = keyPEM; self.caPEM = caPEM
    let certificateChain = try NIOSSLCertificate.fromPEMBytes(certPEM)
    let privateKey = try NIOSSLPrivateKey(bytes: keyPEM, format: .pem)
    let roots = try NIOSSLCertificate.fromPEMBytes(caPEM)
    guard !certificateChain.isEmpty, !roots.isEmpty else {
      throw SwiftrayError(.invalidArgument, "a certificate file holds no certificate")
    }
    var server = TLSConfiguration.makeServerConfiguration(
      certificateChain: certificateChain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
    server.certificateVerification = .noHostnameVerification
    server.trustRoots = .certificates(roots)
    server.minimumTLSVersion = .tlsv12
    var client = TLSConfiguration.makeClientConfiguration()
    client.certificateChain = certificateChain.map { .certificate($0) }
    client.privateKey = .privateKey(privateKey)
    client.certificateVerification = .noHostnameVerification
    client.trustRoots = .certificates(roots)
    client.minimumTLSVersion = .tlsv12
    serverContext = try NIOSSLContext(configuration: server)
    clientContext = try NIOSSLContext(configuration: client)
  }

  // MARK: data plane

  /// The handler that makes an accepted TCP connection TLS (first in its pipeline).
  func serverHandler() -> NIOSSLServerHandler { NIOSSLServerHandler(context: serverContext) }

  /// The handler that makes an outgoing TCP connection TLS (first in its pipeline).
  func clientHandler() throws -> NIOSSLClientHandler { try NIOSSLClientHandler(context: clientContext, serverHostname: nil) }

  // MARK: gRPC

  var grpcServerSecurity: HTTP2ServerTransport.Posix.TransportSecurity {
    .mTLS(certificateChain: [.bytes(certPEM, format: .pem)], privateKey: .bytes(keyPEM, format: .pem)) { c in
      c.trustRoots = .certificates([.bytes(caPEM, format: .pem)])
      c.clientCertificateVerification = .noHostnameVerification
    }
  }

  var grpcClientSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
    .mTLS(certificateChain: [.bytes(certPEM, format: .pem)], privateKey: .bytes(keyPEM, format: .pem)) { c in
      c.trustRoots = .certificates([.bytes(caPEM, format: .pem)])
      c.serverCertificateVerification = .noHostnameVerification
    }
  }

  /// A PEM file's bytes (bounded), or nil.
  static func readPEM(_ path: String) -> [UInt8]? {
    guard let h = FileHandle(forReadingAtPath: path) else { return nil }
    defer { try? h.close() }
    guard let data = try? h.read(upToCount: (1 << 20) + 1), data.count <= (1 << 20), !data.isEmpty else { return nil }
    return Array(data)
  }
}

extension ClusterAuth {
  /// TLS for `endpoint`: TCP only (Unix sockets never leave the machine).
  func tls(for endpoint: Endpoint) -> ClusterTLS? {
    if case .tcp = endpoint { return tls }
    return nil
  }
}
