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
