import Foundation
import Dispatch
import Runtime
import Testing

@Suite struct LockedTests {
  @Test func aCriticalSectionIsCountedOnItsOwnThreadOnly() {
    let lock = Locked(0)
    #expect(LockDiscipline.locksHeld == 0)
    let other = Locked(-1)
    let inside = lock.withLock { v -> Int in
      v += 1
      let done = DispatchSemaphore(value: 0)
      // Another thread is inside no lock while this one holds one.
      Thread.detachNewThread { let n = LockDiscipline.locksHeld; other.withLock { $0 = n }; done.signal() }
      done.wait()
      return LockDiscipline.locksHeld
    }
    let elsewhere = other.withLock { $0 }
    #expect(inside == 1)
    #expect(elsewhere == 0)
    #expect(LockDiscipline.locksHeld == 0)
    #expect(lock.withLock { $0 } == 1)
  }

  @Test func aThrowingCriticalSectionStillLeavesTheLock() {
    struct Boom: Error {}
    let lock = Locked(0)
    #expect(throws: Boom.self) { try lock.withLock { (_: inout Int) throws(Boom) -> Void in throw Boom() } }
    #expect(LockDiscipline.locksHeld == 0)
  }

  @Test func actingOutsideAnyLockPassesTheChecks() async throws {
    LockDiscipline.mustNotHoldLock("a send")
    // Blocking is for threads of one's own (never this test's Task).
    try await onOwnThread { LockDiscipline.mayBlock("a wait") }
  }

  @Test func anAsyncLatchReleasesEveryWaiterOnceOpened() async {
    let latch = AsyncLatch()
    await withTaskGroup(of: Void.self) { g in
      for _ in 0..<10 { g.addTask { await latch.wait() } }
      latch.open()
    }
    #expect(latch.isOpen)
    await latch.wait()  // at once once open
  }
}

@Suite struct LogThrottleTests {
  @Test func oneLinePerPeriodCountingTheOnesHeldBack() {
    var t = LogThrottle(periodNanos: 1_000)
    #expect(t.admit(now: 10_000) == 0)
    #expect(t.admit(now: 10_100) == nil)
    #expect(t.admit(now: 10_999) == nil)
    #expect(t.admit(now: 11_000) == 2)
    #expect(t.admit(now: 11_001) == nil)
    #expect(t.admit(now: 5) == 1, "a clock that went back does not silence it for good")
  }
}
