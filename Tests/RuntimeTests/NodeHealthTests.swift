import Foundation
import Runtime
import Testing

@Suite struct NodeHealthTests {
  let a = Data([1]), b = Data([2])

  @Test func eachLiveNodeIsCheckedOncePerPeriodWithOneCheckInFlight() {
    var h = NodeHealth(failureThreshold: 3)
    h.nodeRegistered(a)
    h.nodeRegistered(b)
    #expect(Set(h.tick()) == [.check(a), .check(b)])
    #expect(h.tick().isEmpty)  // both still in flight
    h.checkSucceeded(a)
    #expect(h.tick() == [.check(a)])
  }

  @Test func aNodeIsDeadAfterThresholdFailuresInARowAndASuccessResetsTheCount() {
    var h = NodeHealth(failureThreshold: 3)
    h.nodeRegistered(a)
    for _ in 0..<2 { _ = h.tick(); #expect(h.checkFailed(a, error: "timeout", periodMs: 100).isEmpty) }
    _ = h.tick()
    h.checkSucceeded(a)
    for _ in 0..<2 { _ = h.tick(); #expect(h.checkFailed(a, error: "timeout", periodMs: 100).isEmpty) }
    _ = h.tick()
    let died = h.checkFailed(a, error: "connection refused", periodMs: 100)
    guard case .died(a, let detail)? = died.first else { Issue.record("not dead"); return }
    #expect(detail.contains("3 health checks") && detail.contains("connection refused"))
    #expect(h.watched == 0)
    #expect(h.tick().isEmpty)
  }
}
