import Foundation
import Runtime
import Testing

@Suite struct NodeAddressTests {
  @Test func aJoiningNodeAdvertisesTheAddressItReachesTheHeadFrom() {
    // The head on loopback is reached from loopback.
    #expect(NodeAddress.detect(head: ("127.0.0.1", 6379)) == "127.0.0.1")
    // The head's own guess is an address of this machine whatever the network.
    #expect(NodeAddress.isIPAddress(NodeAddress.detect(head: nil)))
    // A name that does not resolve, or a port out of range, falls back to loopback.
    #expect(NodeAddress.detect(head: ("no-such-host.invalid", 6379)) == "127.0.0.1")
    #expect(NodeAddress.detect(head: ("127.0.0.1", 70000)) == "127.0.0.1")
  }

  @Test func onlyNumericAddressesMayBeAdvertised() {
    #expect(NodeAddress.isIPAddress("10.0.0.2") && NodeAddress.isIPAddress("::1"))
    #expect(!NodeAddress.isIPAddress("localhost") && !NodeAddress.isIPAddress("10.0.0.300") && !NodeAddress.isIPAddress(""))
  }
}

@Suite struct CallsByNodeTests {
  final class Flags: Sendable {
    let cancelled = Locked<[String]>([])
    func cancel(_ name: String) -> @Sendable () -> Void { { self.cancelled.withLock { $0.append(name) } } }
    var names: [String] { cancelled.withLock { $0 } }
  }

  @Test func aNodesDeathCancelsOnlyTheCallsWaitingOnIt() {
    let calls = CallsByNode(), flags = Flags()
    let a = calls.register("tcp:10.0.0.2:1", cancel: flags.cancel("a"))
    let b = calls.register("tcp:10.0.0.3:1", cancel: flags.cancel("b"))
    #expect(a != nil && b != nil)
    calls.nodeDied(["tcp:10.0.0.2:1", "unix:/tmp/x/raylet.sock"])
    #expect(flags.names == ["a"])
    calls.done(b!)
    calls.nodeDied(["tcp:10.0.0.3:1"])  // b ended before: nothing to cancel
    #expect(flags.names == ["a"])
  }

  @Test func aCallToANodeAlreadyDeclaredDeadEndsAtOnce() {
    let calls = CallsByNode(), flags = Flags()
    calls.nodeDied(["tcp:10.0.0.2:1", ""])
    #expect(calls.register("tcp:10.0.0.2:1", cancel: flags.cancel("late")) == nil)
    #expect(flags.names == ["late"])
    // An empty endpoint names no node: a call to the local node is never watched.
    #expect(calls.register("", cancel: flags.cancel("local")) != nil)
    #expect(flags.names == ["late"])
  }
}
