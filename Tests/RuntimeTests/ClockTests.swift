import Foundation
import Runtime
import Synchronization
import Testing

@Suite struct ClockTests {
  @Test func aManualClockFiresTimersInDeadlineOrderAtTheirOwnTime() {
    let clock = ManualClock(start: 0)
    let fired = Locked<[(String, UInt64)]>([])
    clock.schedule(after: .seconds(3)) { fired.withLock { $0.append(("c", clock.now())) } }
    clock.schedule(after: .seconds(1)) { fired.withLock { $0.append(("a", clock.now())) } }
    let cancelled = clock.schedule(after: .seconds(2)) { fired.withLock { $0.append(("x", clock.now())) } }
    clock.schedule(after: .seconds(1)) { fired.withLock { $0.append(("b", clock.now())) } }
    cancelled.cancel()
    clock.advance(by: .milliseconds(999))
    #expect(fired.withLock { $0.isEmpty })
    clock.advance(by: .seconds(5))
    #expect(fired.withLock { $0.map(\.0) } == ["a", "b", "c"])
    #expect(fired.withLock { $0.map(\.1) } == [1_000_000_000, 1_000_000_000, 3_000_000_000])
    #expect(clock.now() == 5_999_000_000 && clock.pendingTimers == 0)
  }

  @Test func aSleepingTaskWakesWhenItsTimeComesOrWhenCancelled() async {
    let clock = ManualClock(start: 0)
    let woke = Atomic<Bool>(false)
    let sleeper = Task { await clock.sleep(for: .seconds(5)); woke.store(true, ordering: .relaxed) }
    while clock.pendingTimers == 0 { await Task.yield() }
    clock.advance(by: .seconds(4))
    try? await Task.sleep(for: .milliseconds(20))
    let early = woke.load(ordering: .relaxed)
    #expect(!early, "not yet")
    clock.advance(by: .seconds(1))
    await sleeper.value
    let late = woke.load(ordering: .relaxed)
    #expect(late)

    let cancelled = Task { await clock.sleep(for: .seconds(3600)) }
    while clock.pendingTimers == 0 { await Task.yield() }
    cancelled.cancel()
    await cancelled.value  // returns without the clock moving
    #expect(clock.pendingTimers == 0, "its timer was withdrawn")
  }

  @Test func theSystemClockRunsTimersOnceAndNotWhenCancelled() async {
    let clock = SystemClock()
    let count = Atomic<Int>(0)
    clock.schedule(after: .milliseconds(1)) { count.add(1, ordering: .relaxed) }
    clock.schedule(after: .seconds(30)) { count.add(100, ordering: .relaxed) }.cancel()
    let start = clock.now()
    await clock.sleep(for: .milliseconds(50))
    #expect(clock.now() - start >= 50_000_000)
    let fired = count.load(ordering: .relaxed)
    #expect(fired == 1)
  }

  @Test func durationsConvertWithoutTrapping() {
    #expect(Duration.seconds(-5).clampedNanoseconds == 0)
    #expect(Duration.milliseconds(1500).clampedNanoseconds == 1_500_000_000)
    #expect(Duration.seconds(Int64.max).clampedNanoseconds == UInt64.max)
    #expect(ManualClock(start: UInt64.max - 1).deadline(after: .seconds(10)) == UInt64.max)
  }
}
