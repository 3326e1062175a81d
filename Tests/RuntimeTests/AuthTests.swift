import Foundation
import NIOPosix
import Runtime
import RuntimeProto
import Testing

@Suite struct ClusterAuthTests {
  @Test func aTokenIsAcceptedOnlyWhenEveryByteMatches() throws {
    let auth = try ClusterAuth(token: "0123456789abcdef0123", source: "test")
    #expect(auth.accepts(Array("0123456789abcdef0123".utf8)))
    #expect(!auth.accepts(Array("0123456789abcdef0124".utf8)))
    #expect(!auth.accepts(Array("0123456789abcdef012".utf8)))
    #expect(!auth.accepts([UInt8]()))
    #expect(ClusterAuth.disabled.accepts([UInt8]()) && ClusterAuth.disabled.accepts(Array("x".utf8)))
  }

  @Test func generatedTokensAreFreshAndValid() throws {
    let a = ClusterAuth.generate(), b = ClusterAuth.generate()
    #expect(a != b && a.count == 64 && a.allSatisfy(\.isHexDigit))
    #expect(try ClusterAuth(token: a, source: "test").isEnabled)
  }

  @Test func tooShortOrUnprintableTokensAreRefusedWithWhereTheyCameFrom() {
    for bad in ["short", String(repeating: "a", count: 2000), "has a space inside it!!"] {
      do {
        _ = try ClusterAuth(token: bad, source: "$SWIFTRAY_AUTH_TOKEN")
        Issue.record("accepted \(bad.prefix(20))")
      } catch {
        #expect(error.message.contains("$SWIFTRAY_AUTH_TOKEN"))
      }
    }
  }

  @Test func theTokenIsLookedForInTheDocumentedOrder() throws {
    let dir = NSTemporaryDirectory() + "auth-\(UInt32.random(in: 0 ... .max))"
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let home = dir + "/home", session = dir + "/session", path = dir + "/elsewhere/token"
    try FileManager.default.createDirectory(atPath: session, withIntermediateDirectories: true)
    #expect(try ClusterAuth.resolve(environment: ["HOME": home], session: session) == nil)
    try ClusterAuth.writeTokenFile("home-token-0123456789", to: ClusterAuth.defaultPath(environment: ["HOME": home]))
    #expect(try ClusterAuth.resolve(environment: ["HOME": home])?.tokenText == "home-token-0123456789")
    try ClusterAuth.writeTokenFile("session-token-0123456789", to: ClusterAuth.sessionTokenPath(session))
    #expect(try ClusterAuth.resolve(environment: ["HOME": home], session: session)?.tokenText == "session-token-0123456789")
    try ClusterAuth.writeTokenFile("path-token-0123456789", to: path)
    #expect(try ClusterAuth.resolve(environment: ["HOME": home, "RAY_AUTH_TOKEN_PATH": path], session: session)?.tokenText
      == "path-token-0123456789")
    #expect(try ClusterAuth.resolve(environment: ["HOME": home, "SWIFTRAY_AUTH_TOKEN_PATH": path,
                                                   "SWIFTRAY_AUTH_TOKEN": "env-token-0123456789"])?.tokenText == "env-token-0123456789")
    #expect(try ClusterAuth.resolve(environment: ["HOME": home, "SWIFTRAY_AUTH_MODE": "disabled",
                                                   "SWIFTRAY_AUTH_TOKEN": "env-token-0123456789"]) == .disabled)
    #expect(try ClusterAuth.fromEnvironment(["HOME": home]) == nil, "the environment alone says nothing here")
  }

  @Test func tokenFilesArePrivateAndNeverReplacedOrFollowed() throws {
    let dir = NSTemporaryDirectory() + "auth-\(UInt32.random(in: 0 ... .max))"
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = dir + "/.swiftray/auth_token"
    #expect(try ClusterAuth.writeTokenFile("first-token-0123456789", to: path))
    #expect(try !ClusterAuth.writeTokenFile("second-token-0123456789", to: path), "an existing token is kept")
    let attrs = try FileManager.default.attributesOfItem(atPath: path)
    #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o600)
    let dirAttrs = try FileManager.default.attributesOfItem(atPath: dir + "/.swiftray")
    #expect((dirAttrs[.posixPermissions] as? NSNumber)?.intValue == 0o700)
    // A link planted where the token goes is not followed, for reading or writing.
    let link = dir + "/.swiftray/linked"
    try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: path)
    #expect(throws: SwiftrayError.self) { try ClusterAuth.resolve(environment: ["SWIFTRAY_AUTH_TOKEN_PATH": link, "HOME": dir]) }
    #expect(try !ClusterAuth.writeTokenFile("through-the-link-0123456789", to: link))
    #expect(try String(contentsOfFile: path, encoding: .utf8) == "first-token-0123456789\n")
  }
}

@Suite struct AuthGateTests {
  /// A store-like server that answers Ack to anything, behind a token.
  @Test func onlyAClientWithTheTokenIsServed() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let path = NSTemporaryDirectory() + "gate-\(UInt32.random(in: 0 ... .max)).sock"
    let auth = try ClusterAuth(token: ClusterAuth.generate(), source: "test")
    let served = ManagedCount()
    let server = try DataPlaneServer(group: group, endpoint: .unix(path), auth: auth) { _, responder in
      served.add()
      responder.respond(.ack(.init()))
    }
    func ask(_ clientAuth: ClusterAuth) async -> Bool {
      let pool = DataPlaneClientPool(group: group, auth: clientAuth)
      defer { pool.closeAll() }
      return await withCheckedContinuation { c in
        pool.request(.unix(path), .storeStats(.init())) { r in
          if case .success = r { c.resume(returning: true) } else { c.resume(returning: false) }
        }
      }
    }
    #expect(await !ask(try ClusterAuth(token: ClusterAuth.generate(), source: "wrong")))
    #expect(await !ask(.disabled), "no token (an empty preamble) is refused")
    #expect(served.value == 0, "nothing a refused client sent reached the handler")
    #expect(await ask(auth))
    #expect(served.value == 1)
    server.close()
    try await group.shutdownGracefully()
  }
}

final class ManagedCount: Sendable {
  let n = Locked(0)
  func add() { n.withLock { $0 += 1 } }
  var value: Int { n.withLock { $0 } }
}

@Suite struct ClusterTLSTests {
  @Test func tlsIsOffUnlessAskedForAndAskingWithoutFilesSaysWhichIsMissing() throws {
    #expect(try ClusterTLS.fromEnvironment([:]) == nil)
    #expect(try ClusterTLS.fromEnvironment(["SWIFTRAY_USE_TLS": "0", "SWIFTRAY_TLS_CA_CERT": "/nope"]) == nil)
    do {
      _ = try ClusterTLS.fromEnvironment(["RAY_USE_TLS": "1"])
      Issue.record("TLS without certificates was accepted")
    } catch {
      #expect(error.message.contains("SWIFTRAY_TLS_SERVER_CERT"))
    }
    do {
      _ = try ClusterTLS.fromEnvironment(["SWIFTRAY_USE_TLS": "1", "SWIFTRAY_TLS_SERVER_CERT": "/no/such.pem",
                                          "SWIFTRAY_TLS_SERVER_KEY": "/no/key.pem", "SWIFTRAY_TLS_CA_CERT": "/no/ca.pem"])
      Issue.record("unreadable files were accepted")
    } catch {
      #expect(error.message.contains("/no/such.pem"))
    }
    do {
      _ = try ClusterTLS.fromEnvironment(["SWIFTRAY_USE_TLS": "maybe"])
      Issue.record("a value that is neither on nor off was accepted")
    } catch {
      #expect(error.message.contains("SWIFTRAY_USE_TLS=maybe"))
    }
  }
}
