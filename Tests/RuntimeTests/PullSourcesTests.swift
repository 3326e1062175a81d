import Testing
import Runtime

@Suite struct PullSourcesTests {
  @Test func aKnownStoreIsPulledFromAtOnce() {
    var p = PullSources<Int>()
    _ = p.viewChanged(["tcp:10.0.0.2:7000"])
    #expect(p.check("tcp:10.0.0.2:7000", 1) == .allowed)
    #expect(p.numParked == 0)
  }

  @Test func aStoreOfANodeThatJustJoinedWaitsForTheViewThatShowsIt() {
    var p = PullSources<Int>()
    _ = p.viewChanged(["tcp:a:1"])
    #expect(p.check("tcp:b:2", 7) == .parked)
    let (allowed, refused) = p.viewChanged(["tcp:a:1", "tcp:b:2"])
    #expect(allowed == [7] && refused.isEmpty && p.numParked == 0)
  }

  @Test func anAddressNoViewShowsIsRefusedAfterThePatience() {
    var p = PullSources<Int>(patience: 2)
    #expect(p.check("tcp:evil:9", 3) == .parked)
    let first = p.viewChanged(["tcp:a:1"])
    #expect(first.allowed.isEmpty && first.refused.isEmpty && p.numParked == 1)
    let (allowed, refused) = p.viewChanged(["tcp:a:1"])
    #expect(allowed.isEmpty && refused == [3] && p.numParked == 0)
  }

  @Test func aStoreOfANodeThatDiedIsNoLongerPulledFrom() {
    var p = PullSources<Int>()
    _ = p.viewChanged(["tcp:a:1", "tcp:b:2"])
    _ = p.viewChanged(["tcp:a:1"])
    #expect(p.check("tcp:b:2", 1) == .parked)
  }

  @Test func waitingRequestsAreBounded() {
    var p = PullSources<Int>(maxParked: 2)
    #expect(p.check("tcp:x:1", 1) == .parked && p.check("tcp:x:1", 2) == .parked)
    #expect(p.check("tcp:x:1", 3) == .refused)
  }
}
