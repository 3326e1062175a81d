import Foundation
import NIOHTTP1
import Runtime
import Testing

/// The pieces of KubeRay's contract that are pure: `--labels` and the health answers.
@Suite struct NodeLabelsTests {
  @Test func labelsParseAsRayAndKubernetesWriteThem() throws {
    #expect(try NodeLabels.parse("") == [:])
    #expect(try NodeLabels.parse("zone=us-east-1a,tier=cpu") == ["zone": "us-east-1a", "tier": "cpu"])
    #expect(try NodeLabels.parse("example.com/gpu-type=A100, empty=") == ["example.com/gpu-type": "A100", "empty": ""])
  }

  @Test func aBadLabelSaysWhichAndHow() {
    for (text, says) in [("zone", "'zone' is not KEY=VALUE"), ("-a=b", "'-a' is not a label key"),
                         ("a=b c", "the value 'b c' of 'a'"), ("a=1,a=2", "'a' is given twice"),
                         ("ray.io/node-id=x", "set by the system"),
                         (String(repeating: "k", count: 64) + "=v", "is not a label key")] {
      #expect(throws: SwiftrayError.self, "\(text)") { try NodeLabels.parse(text) }
      do { _ = try NodeLabels.parse(text) } catch { #expect(error.message.contains(says), "\(text): \(error.message)") }
    }
    let many = (0...NodeLabels.maxLabels).map { "k\($0)=v" }.joined(separator: ",")
    #expect(throws: SwiftrayError.self) { try NodeLabels.parse(many) }
  }

  @Test func aPeersLabelsAreCheckedByTheSameBounds() {
    #expect(NodeLabels.valid(["zone": "a", "example.com/x": ""]))
    #expect(!NodeLabels.valid(["bad key": "a"]))
    #expect(!NodeLabels.valid(["k": String(repeating: "v", count: 64)]))
    #expect(!NodeLabels.valid(Dictionary(uniqueKeysWithValues: (0...NodeLabels.maxLabels).map { ("k\($0)", "v") })))
  }
}

@Suite struct AgentHealthTests {
  let second: UInt64 = 1_000_000_000

  func body(_ r: HTTPResponse) -> String { String(decoding: r.body, as: UTF8.self) }

  @Test func healthyIsRaysExactAnswer() {
    let ok = AgentHealth.Sample(rayletUp: true, sinceHeadNanos: 1 * second, staleAfterNanos: 5 * second)
    let r = AgentHealth.answer("/api/healthz", ok)
    #expect(r.status == .ok && body(r) == "raylet: success\ngcs: success")
    #expect(AgentHealth.answer("/api/local_raylet_healthz", ok).status == .ok)
    #expect(body(AgentHealth.answer("/api/local_raylet_healthz", ok)).hasPrefix("success"))
  }

  @Test func aSilentHeadOrAStoppingNodeFailsTheProbeSayingWhich() {
    let silent = AgentHealth.Sample(rayletUp: true, sinceHeadNanos: 9 * second, staleAfterNanos: 5 * second)
    let r = AgentHealth.answer("/api/healthz", silent)
    #expect(r.status == .serviceUnavailable && body(r) == "raylet: success\ngcs: the head has not answered this node for 9 s")
    #expect(AgentHealth.answer("/api/local_raylet_healthz", silent).status == .ok, "the raylet's own probe does not ask the head")
    let never = AgentHealth.Sample(rayletUp: true, sinceHeadNanos: nil, staleAfterNanos: 5 * second)
    #expect(AgentHealth.answer("/api/healthz", never).status == .serviceUnavailable)
    let stopping = AgentHealth.Sample(rayletUp: false, sinceHeadNanos: 0, staleAfterNanos: 5 * second)
    #expect(AgentHealth.answer("/api/healthz", stopping).status == .serviceUnavailable)
    #expect(AgentHealth.answer("/api/local_raylet_healthz", stopping).status == .serviceUnavailable)
  }

  @Test func nothingElseIsServed() {
    let ok = AgentHealth.Sample(rayletUp: true, sinceHeadNanos: 0, staleAfterNanos: 5 * second)
    for path in ["/", "/api/v0/tasks", "/metrics", "/api/jobs/"] { #expect(AgentHealth.answer(path, ok).status == .notFound) }
  }
}

@Suite struct MachineMemoryTests {
  let gib: UInt64 = 1 << 30

  @Test func aContainersLimitBoundsWhatTheNodeCounts() {
    #expect(MachineMemory.usable(physical: 64 * gib, limits: ["5368709120\n", nil]) == 5 * gib)
    #expect(MachineMemory.usable(physical: 64 * gib, limits: [nil, "1073741824", "2147483648"]) == gib, "the tightest")
    #expect(MachineMemory.usable(physical: 64 * gib, limits: ["max\n"]) == 64 * gib, "no limit")
    #expect(MachineMemory.usable(physical: 64 * gib, limits: ["9223372036854771712"]) == 64 * gib, "cgroup v1's 'unlimited'")
    for junk in ["", "-5", "0", "12abc", "184467440737095516160"] {
      #expect(MachineMemory.usable(physical: 8 * gib, limits: [junk]) == 8 * gib, "\(junk)")
    }
  }

  @Test func theLimitFilesAreTheProcessCgroupsAndTheirAncestors() {
    let hybrid = "4:memory:/process_api/abc\n3:cpuset:/\n0::/\n"
    #expect(MachineMemory.limitFiles(procSelfCgroup: hybrid) == [
      "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes", "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes",
      "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/unified/memory.max",
    ])
    #expect(MachineMemory.limitFiles(procSelfCgroup: "0::/kubepods/pod1\n") == [
      "/sys/fs/cgroup/kubepods/pod1/memory.max", "/sys/fs/cgroup/unified/kubepods/pod1/memory.max",
      "/sys/fs/cgroup/kubepods/memory.max", "/sys/fs/cgroup/unified/kubepods/memory.max",
      "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/unified/memory.max",
    ])
    #expect(MachineMemory.limitFiles(procSelfCgroup: "garbage\n5:memory:relative\n").isEmpty)
    let deep = "0::" + String(repeating: "/a", count: 100) + "\n"
    #expect(MachineMemory.limitFiles(procSelfCgroup: deep).count == 2 * 33, "32 levels and the root")
  }

  @Test func theStoreTakesThirtyPercentOfItAtLeast75MiB() {
    #expect(MachineMemory.defaultStoreCapacity(usable: 10 * gib) == Int(3 * gib))
    #expect(MachineMemory.defaultStoreCapacity(usable: 100 << 20) == 75 << 20)
    #expect(MachineMemory.defaultStoreCapacity(usable: .max) > 0)
  }
}
