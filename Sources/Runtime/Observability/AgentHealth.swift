import Foundation
import NIOHTTP1

/// What a node's dashboard-agent port answers (`--dashboard-agent-listen-port`, 52365
/// under KubeRay): the health endpoints kubelet probes and KubeRay's readiness checks
/// call — without the cluster token (probes carry none), and revealing nothing else.
/// `/api/healthz`: 200 `raylet: success\ngcs: success` while this node runs and has
/// heard from the head lately, else 503 saying which part failed; the older
/// `/api/local_raylet_healthz`: 200 `success` while this node runs.
///
/// Threading: a pure function of what the shell read (its clock, the node's state).
public enum AgentHealth {
  public struct Sample: Sendable, Equatable {
    /// The node manager is up and not stopping.
    public var rayletUp: Bool
    /// Nanoseconds since the head last answered this node (nil: never).
    public var sinceHeadNanos: UInt64?
    /// How long without an answer the head counts as unreachable.
    public var staleAfterNanos: UInt64
    public init(rayletUp: Bool, sinceHeadNanos: UInt64?, staleAfterNanos: UInt64) {
      self.rayletUp = rayletUp; self.sinceHeadNanos = sinceHeadNanos; self.staleAfterNanos = staleAfterNanos
    }
  }

  public static func answer(_ path: String, _ s: Sample) -> HTTPResponse {
    switch path {
    case "/api/local_raylet_healthz":
      return s.rayletUp ? .text(.ok, "success") : .text(.serviceUnavailable, "raylet: this node is stopping")
    case "/api/healthz":
      let raylet = s.rayletUp ? "success" : "this node is stopping"
      let gcs: String
      switch s.sinceHeadNanos {
      case .none: gcs = "the head has not answered this node yet"
      case .some(let n) where n > s.staleAfterNanos: gcs = "the head has not answered this node for \(n / 1_000_000_000) s"
      default: gcs = "success"
      }
      let ok = raylet == "success" && gcs == "success"
      // Ray's exact body, no newline after it.
      return HTTPResponse(ok ? .ok : .serviceUnavailable, body: Array("raylet: \(raylet)\ngcs: \(gcs)".utf8))
    default:
      return .text(.notFound, "no such page: \(path) (this port serves /api/healthz and /api/local_raylet_healthz)")
    }
  }
}
