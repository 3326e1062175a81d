import Crypto
import Foundation

/// A NodeManager's proof that it leased a worker to an owner (DESIGN §11): an
/// HMAC-SHA256 of (lease id, worker id, owner id) under a key that only the node and
/// the workers it started hold (handed over in the worker's environment, which the
/// worker clears at start). A worker runs a pushed task only under a valid grant for
/// itself, so holding the cluster token is not enough to run code on a worker the
/// node did not lease to you.
///
/// Threading: an immutable value; any thread.
public struct LeaseGrants: Sendable {
  let key: SymmetricKey
  /// The environment variable a worker gets the key from.
  public static let environmentKey = "SWIFTRAY_LEASE_KEY"

  public init(key: [UInt8]) { self.key = SymmetricKey(data: key) }

  /// A fresh 256-bit key (the OS's CSPRNG), as hex.
  public static func generateKey() -> String { ClusterAuth.generate() }

  /// The key in hex text (64 digits), or nil when it is not that.
  public init?(hex: String) {
    let digits = Array(hex.utf8)
    guard digits.count == 64 else { return nil }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(32)
    for i in stride(from: 0, to: 64, by: 2) {
      guard let b = UInt8(String(decoding: digits[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
      bytes.append(b)
    }
    self.init(key: bytes)
  }

  /// The grant of lease `leaseID` of `worker` to `owner` (an empty owner: the
  /// ControlService, placing an actor).
  public func grant(leaseID: UInt64, worker: Data, owner: Data) -> Data {
    Data(HMAC<SHA256>.authenticationCode(for: Self.message(leaseID, worker, owner), using: key))
  }

  /// True when `grant` is this node's for (lease, worker, owner); constant time.
  public func verify(_ grant: Data, leaseID: UInt64, worker: Data, owner: Data) -> Bool {
    HMAC<SHA256>.isValidAuthenticationCode(grant, authenticating: Self.message(leaseID, worker, owner), using: key)
  }

  /// What a grant signs: the lease id, then the worker id (length-prefixed, so the
  /// boundary with the owner id cannot shift), then the owner id.
  static func message(_ leaseID: UInt64, _ worker: Data, _ owner: Data) -> Data {
    var m = Data()
    withUnsafeBytes(of: leaseID.bigEndian) { m.append(contentsOf: $0) }
    m.append(UInt8(truncatingIfNeeded: worker.count))
    m.append(worker)
    m.append(owner)
    return m
  }
}

/// A worker's side: which pushes it runs. The newest valid grant is remembered, so a
/// task under the same lease costs a comparison, not an HMAC; a lease older than the
/// newest one seen (a lease already given back) is refused.
///
/// Threading: a value; its owner serializes access (the CoreWorker's lock).
public struct LeaseGate: Sendable {
  let grants: LeaseGrants?
  let worker: Data
  var current: (leaseID: UInt64, grant: Data, owner: Data)?

  /// `grants` nil: this process was not started by a NodeManager (a driver), and runs
  /// no pushed task.
  public init(grants: LeaseGrants?, worker: Data) { self.grants = grants; self.worker = worker }

  public enum Verdict: Equatable, Sendable { case admit, refuse(String) }

  public mutating func admit(leaseID: UInt64, grant: Data, owner: Data) -> Verdict {
    if let c = current, c.leaseID == leaseID, c.grant == grant, c.owner == owner { return .admit }
    guard let grants else { return .refuse("this process runs no tasks (it is not a worker of a node)") }
    guard grants.verify(grant, leaseID: leaseID, worker: worker, owner: owner) else {
      return .refuse("its lease (\(leaseID)) was not granted to its owner by this worker's node")
    }
    if let c = current, leaseID < c.leaseID { return .refuse("its lease (\(leaseID)) has ended") }
    current = (leaseID, grant, owner)
    return .admit
  }
}
