import Foundation
import Runtime
import Testing

@Suite struct NodePickerTests {
  func node(_ id: UInt8, total: [String: Double], free: [String: Double], alive: Bool = true, start: Int64 = 0) -> NodePicker.NodeView {
    NodePicker.NodeView(id: Data([id]), address: "tcp:127.0.0.1:\(id)", total: ResourceSet(units: total),
                        available: ResourceSet(units: free), alive: alive, startTimeMs: start)
  }

  @Test func onlyLiveNodesThatCanEverFitTheShapeArePicked() {
    let nodes = [node(1, total: ["CPU": 4], free: ["CPU": 4]),
                 node(2, total: ["CPU": 1, "special": 1], free: ["CPU": 0], alive: false),
                 node(3, total: ["CPU": 1, "special": 2], free: ["CPU": 0])]
    #expect(NodePicker.pick(ResourceSet(units: ["special": 1]), among: nodes)?.id == Data([3]))
    #expect(NodePicker.pick(ResourceSet(units: ["GPU": 1]), among: nodes) == nil)
  }

  @Test func aNodeWithTheShapeFreeNowBeatsABusyOneThenTheLeastUsedWins() {
    let nodes = [node(1, total: ["CPU": 2], free: ["CPU": 0], start: 1),
                 node(2, total: ["CPU": 4], free: ["CPU": 1], start: 2),
                 node(3, total: ["CPU": 4], free: ["CPU": 3], start: 3)]
    #expect(NodePicker.pick(ResourceSet(units: ["CPU": 1]), among: nodes)?.id == Data([3]))
    #expect(NodePicker.pick(ResourceSet(units: ["CPU": 1]), among: nodes, excluding: Data([3]))?.id == Data([2]))
  }
}

@Suite struct NodeRouteTests {
  func node(_ id: UInt8, cpus: Double, extra: [String: Double] = [:], alive: Bool = true, start: Int64) -> NodePicker.NodeView {
    let total = ResourceSet(units: extra.merging(["CPU": cpus]) { a, _ in a })
    return NodePicker.NodeView(id: Data([id]), address: "tcp:h:\(id)", total: total, available: total, alive: alive, startTimeMs: start)
  }

  @Test func defaultStaysWhenThisNodeCanFitAndSpillsWhenOnlyAnotherCan() {
    let me = node(1, cpus: 1, start: 1), other = node(2, cpus: 1, extra: ["special": 1], start: 2)
    let cpu = ResourceSet(units: ["CPU": 1]), special = ResourceSet(units: ["special": 1])
    #expect(NodePicker.route(.init(cpu), needs: cpu, me: me, others: [other], turn: 0) == .local)
    #expect(NodePicker.route(.init(special), needs: special, me: me, others: [other], turn: 0) == .spillback("tcp:h:2"))
  }

  @Test func spreadTakesTheFeasibleNodesInTurn() {
    let me = node(1, cpus: 1, start: 1), a = node(2, cpus: 1, start: 2), b = node(3, cpus: 1, start: 3)
    let key = SchedulingKey(ResourceSet(units: ["CPU": 1]), strategy: .spread)
    let routes = (0..<3).map { NodePicker.route(key, needs: key.shape, me: me, others: [a, b], turn: $0) }
    #expect(routes == [.local, .spillback("tcp:h:2"), .spillback("tcp:h:3")])
  }

  @Test func nodeAffinityGoesToItsNodeAndSoftFallsBackWhenItIsDead() {
    let me = node(1, cpus: 1, start: 1), dead = node(2, cpus: 1, alive: false, start: 2)
    let target = NodeID(binary: [UInt8](repeating: 7, count: 28))!
    var live = node(3, cpus: 1, start: 3)
    live.id = Data(target.binary)
    let cpu = ResourceSet(units: ["CPU": 1])
    #expect(NodePicker.route(.init(cpu, strategy: .nodeAffinity(target, soft: false)), needs: cpu, me: me, others: [live], turn: 0)
            == .spillback("tcp:h:3"))
    var gone = dead
    gone.id = Data(target.binary)
    #expect(NodePicker.route(.init(cpu, strategy: .nodeAffinity(target, soft: true)), needs: cpu, me: me, others: [gone], turn: 0) == .local)
    guard case .reject(let why) = NodePicker.route(.init(cpu, strategy: .nodeAffinity(target, soft: false)), needs: cpu, me: me,
                                                   others: [gone], turn: 0) else { Issue.record("not rejected"); return }
    #expect(why.contains("soft=True"))
  }
}
