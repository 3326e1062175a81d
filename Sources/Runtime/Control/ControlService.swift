import Foundation
import GRPCCore
import RuntimeProto
import Synchronization

/// The ControlService (Ray's GCS): cluster membership, jobs, and the KV table that
/// holds pickled functions. Tables are in memory here; the storage interface for Redis
/// comes with the recovery issue.
///
/// Threading: gRPC handlers run concurrently; all state sits behind one Mutex.
public final class ControlService: Swiftray_ControlService.SimpleServiceProtocol, Sendable {
  struct State {
    var nodes: [Data: Swiftray_NodeInfo] = [:]
    var nextJob: UInt32 = 1
    var kv: [String: [Data: Data]] = [:]
  }
  let state = Mutex(State())
  public init() {}

  public func registerNode(request: Swiftray_RegisterNodeRequest, context: ServerContext) async throws -> Swiftray_RegisterNodeReply {
    state.withLock { $0.nodes[request.node.nodeID] = request.node }
    return Swiftray_RegisterNodeReply()
  }

  public func getAllNodes(request: Swiftray_GetAllNodesRequest, context: ServerContext) async throws -> Swiftray_GetAllNodesReply {
    var r = Swiftray_GetAllNodesReply()
    r.nodes = state.withLock { Array($0.nodes.values) }.sorted { $0.startTimeMs < $1.startTimeMs }
    return r
  }

  public func registerJob(request: Swiftray_RegisterJobRequest, context: ServerContext) async throws -> Swiftray_RegisterJobReply {
    var r = Swiftray_RegisterJobReply()
    let job = state.withLock { s in let j = s.nextJob; s.nextJob += 1; return j }
    r.jobID = Data(JobID(job).binary)
    return r
  }

  public func kvPut(request: Swiftray_KVPutRequest, context: ServerContext) async throws -> Swiftray_KVPutReply {
    var r = Swiftray_KVPutReply()
    r.added = state.withLock { s in
      if !request.overwrite, s.kv[request.namespace]?[request.key] != nil { return false }
      s.kv[request.namespace, default: [:]][request.key] = request.value
      return true
    }
    return r
  }

  public func kvGet(request: Swiftray_KVGetRequest, context: ServerContext) async throws -> Swiftray_KVGetReply {
    var r = Swiftray_KVGetReply()
    if let v = state.withLock({ $0.kv[request.namespace]?[request.key] }) {
      r.found = true
      r.value = v
    }
    return r
  }

  public func reportResources(request: Swiftray_ReportResourcesRequest, context: ServerContext) async throws -> Swiftray_ReportResourcesReply {
    state.withLock { s in s.nodes[request.nodeID]?.available = request.available }
    return Swiftray_ReportResourcesReply()
  }
}
