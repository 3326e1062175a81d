import Crypto
import Foundation

/// How runtime-environment packages (zipped `working_dir`s and `py_modules`) lie in the
/// head's KV: chunks under `<digest>/<index>`, then a manifest under `<digest>` written
/// last, so a package is visible only once all of it is there. Chunks keep each KV call
/// well under the 4 MiB a gRPC request may carry; the KV persists them like any entry
/// (on Redis they survive a head restart).
///
/// Threading: pure functions.
public enum PackageStore {
  public static let namespace = "runtime_env_packages"
  public static let chunkBytes = 2 << 20

  public struct Manifest: Sendable, Equatable {
    public var size: Int
    public var chunks: Int
    public init(size: Int, chunks: Int) { self.size = size; self.chunks = chunks }
  }

  public static func manifestKey(_ p: RuntimeEnv.Package) -> Data { Data(p.digest.utf8) }
  public static func chunkKey(_ p: RuntimeEnv.Package, _ index: Int) -> Data { Data("\(p.digest)/\(index)".utf8) }

  public static func encode(_ m: Manifest) -> Data { Data("\(m.size),\(m.chunks)".utf8) }

  /// The manifest in `data`; nil unless it is two numbers that agree with each other
  /// and with `maxBytes` (a value read back from the KV is checked like a peer's).
  public static func decodeManifest(_ data: Data, maxBytes: Int) -> Manifest? {
    guard data.count <= 64 else { return nil }
    let parts = String(decoding: data, as: UTF8.self).split(separator: ",")
    guard parts.count == 2, let size = Int(parts[0]), let chunks = Int(parts[1]),
          (0...maxBytes).contains(size), chunks == chunkCount(size) else { return nil }
    return Manifest(size: size, chunks: chunks)
  }

  static func chunkCount(_ size: Int) -> Int { (size + chunkBytes - 1) / chunkBytes }

  /// The package `data` is, when its digest matches `uri`; else `invalidArgument`.
  public static func checked(uri: String, _ data: Data, maxBytes: Int) throws(SwiftrayError) -> RuntimeEnv.Package {
    guard let p = RuntimeEnv.Package(uri: uri) else {
      throw SwiftrayError(.invalidArgument, "a package URI is pkg://<sha256 hex>.zip, got \(uri.prefix(100))")
    }
    guard data.count <= maxBytes else {
      throw SwiftrayError(.invalidArgument, String(format: "Package size (%.2fMiB) exceeds the maximum size of %.2fMiB (runtime_env_max_package_bytes). You can exclude large files using the 'excludes' option to the runtime_env.",
                                                   Double(data.count) / 1048576, Double(maxBytes) / 1048576))
    }
    guard digest(data) == p.digest else {
      throw SwiftrayError(.invalidArgument, "package \(uri) does not hold the bytes its name says (SHA-256 differs)")
    }
    return p
  }

  /// Where the packages Ray's own clients upload (`gcs://_ray_pkg_<hash>.zip`, named by
  /// Ray's hash of the folder, not of the zip) are mapped to the `pkg://` URI of their
  /// bytes: the node fetches and checks only `pkg://` packages.
  public static let aliasNamespace = "runtime_env_package_aliases"

  /// A package name Ray's client uses after `/api/packages/gcs/`: `_ray_pkg_` and at
  /// most 200 letters, digits, `_`, `-`, `.`, ending `.zip`.
  public static func isRayPackageName(_ name: Substring) -> Bool {
    name.hasPrefix("_ray_pkg_") && name.hasSuffix(".zip") && name.utf8.count <= 200
      && name.utf8.allSatisfy { $0 == 45 || $0 == 46 || $0 == 95 || (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) }
  }

  public static func aliasKey(_ name: Substring) -> Data { Data("gcs://\(name)".utf8) }

  /// The `pkg://` URI an alias entry names, checked like any value read back.
  public static func decodeAlias(_ data: Data) -> RuntimeEnv.Package? {
    data.count <= 100 ? RuntimeEnv.Package(uri: String(decoding: data, as: UTF8.self)) : nil
  }

  public static func digest(_ data: Data) -> String {
    SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
  }

  /// `data` cut into the chunks `chunkKey` names, in order.
  public static func chunks(_ data: Data) -> [Data] {
    stride(from: 0, to: data.count, by: chunkBytes).map { data.subdata(in: data.startIndex + $0 ..< data.startIndex + min(data.count, $0 + chunkBytes)) }
  }
}
