import Foundation
import NIOPosix
import Runtime
import RuntimeProto
import Testing

@Suite struct ControlStorageTests {
  @Test func inMemoryTablesKeepOrRefuseOverwritesAndListAKeyspace() async throws {
    let s = InMemoryControlStorage()
    let k = Data("fn".utf8)
    #expect(try await s.put("kv:a", k, Data([1]), overwrite: false))
    #expect(try await !s.put("kv:a", k, Data([2]), overwrite: false))
    #expect(try await s.get("kv:a", k) == Data([1]))
    #expect(try await s.put("kv:a", k, Data([3]), overwrite: true))
    #expect(try await s.get("kv:b", k) == nil, "namespaces are separate tables")
    #expect(try await s.getAll("kv:a") == [k: Data([3])])
    try await s.delete("kv:a", k)
    #expect(try await s.getAll("kv:a").isEmpty)
  }

  /// A real ControlService over gRPC: what clients change lands in its storage.
  @Test func theControlServiceWritesNodesJobsAndTheKVThroughItsStorage() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let storage = InMemoryControlStorage()
    let auth = try ClusterAuth(token: ClusterAuth.generate(), source: "test")
    let control = ControlService(group: group, storage: storage, auth: auth)
    let path = NSTemporaryDirectory() + "gcs-\(UInt32.random(in: 0 ... .max)).sock"
    let server = try await ControlPlane.serve([control], at: .unix(path), group: group, auth: auth)
    let conn = try ControlPlane.connect(.unix(path), group: group, auth: auth)
    let client = Swiftray_ControlService.Client(wrapping: conn.client)

    var node = Swiftray_NodeInfo()
    node.nodeID = Data(NodeID.random().binary)
    node.total = ResourceSet(units: ["CPU": 2]).proto
    node.nodeManagerEndpoint = "unix:/nonexistent"
    _ = try await client.registerNode(.with { $0.node = node })
    var put = Swiftray_KVPutRequest()
    put.namespace = "fun"
    put.key = Data("f".utf8)
    put.value = Data([9, 9])
    put.overwrite = false
    #expect(try await client.kvPut(put).added)
    #expect(try await !client.kvPut(put).added, "an existing key is kept")
    _ = try await client.registerJob(Swiftray_RegisterJobRequest())

    #expect(try await storage.get("kv:fun", Data("f".utf8)) == Data([9, 9]))
    // Write-through is ordered and asynchronous: wait for the last write (the job's)
    // to land; the node's came before it.
    var job: Data?
    for _ in 0..<300 where job == nil {
      job = try await storage.get(ControlTable.jobs, Data("next".utf8))
      if job == nil { try await Task.sleep(for: .milliseconds(10)) }
    }
    #expect(job != nil)
    let stored = try await storage.get(ControlTable.nodes, node.nodeID).map { try Swiftray_NodeInfo(serializedBytes: $0) }
    #expect(stored?.alive == true && stored?.total == node.total)

    try await onOwnThread {
      conn.shutdown()
      control.shutdown()
      server.shutdown()
    }
    try await group.shutdownGracefully()
  }
}

@Suite struct ControlConnectionTests {
  /// A process that never calls a peer never connects to it (most workers call neither
  /// their node nor the head over gRPC): a client connects on its first call only, and
  /// one closed before any call connects never.
  @Test func aControlClientConnectsOnItsFirstUseOnly() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let path = NSTemporaryDirectory() + "lazy-\(UInt32.random(in: 0 ... .max)).sock"
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { p in
      for (i, b) in path.utf8.enumerated() { p[i] = b }
    }
    let bound = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    #expect(bound == 0)
    #expect(listen(fd, 8) == 0)
    defer { close(fd); unlink(path) }
    func accepted(within ms: Int) async -> Bool {
      for _ in 0..<(ms / 10) {
        let c = accept(fd, nil, nil)
        if c >= 0 { close(c); return true }
        try? await Task.sleep(for: .milliseconds(10))
      }
      return false
    }
    let unused = try ControlPlane.connect(.unix(path), group: group, auth: .disabled, viaTwin: false)
    let closedFirst = try ControlPlane.connect(.unix(path), group: group, auth: .disabled, viaTwin: false)
    closedFirst.close()
    _ = closedFirst.client  // closed: stays unconnected
    #expect(await accepted(within: 300) == false)
    _ = unused.client  // the first use
    #expect(await accepted(within: 5000) == true)
    unused.close()
    try await group.shutdownGracefully()
  }
}
