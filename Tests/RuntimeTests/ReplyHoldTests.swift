import Runtime
import Testing

@Suite struct ReplyHoldTests {
  /// A burst of tasks queued at a worker: each reply waits for the next, the last of the
  /// burst sends them all, and no more than `maxHeld` ever wait.
  @Test func repliesWaitWhileMoreTasksAreQueuedAndNeverMoreThanMaxHeld() {
    var h = ReplyHold(maxHeld: 3)
    var got: [ReplyHold.Finish] = []
    for i in 0..<8 { got.append(h.finished(moreQueued: true, now: UInt64(1_000 + i))) }
    #expect(got == [.hold(unpark: true), .hold(unpark: false), .hold(unpark: false), .sendAll,
                    .hold(unpark: false), .hold(unpark: false), .hold(unpark: false), .sendAll])
    #expect(h.held == 0)
    #expect(h.finished(moreQueued: true, now: 2_000) == .hold(unpark: false))
    #expect(h.finished(moreQueued: false, now: 2_001) == .sendAll, "the last task of a burst sends at once")
    #expect(h.held == 0)
  }

  /// One task at a time (a caller that waits for each result): nothing is ever held.
  @Test func aWorkerWithNothingQueuedSendsEachReplyAtOnce() {
    var h = ReplyHold(maxHeld: 16)
    for i in 0..<100 { #expect(h.finished(moreQueued: false, now: UInt64(i)) == .sendAll) }
    #expect(h.parked, "the flusher was never needed")
    var off = ReplyHold(maxHeld: 0)
    #expect(off.finished(moreQueued: true, now: 1) == .sendAll, "task_reply_batch=0 holds nothing")
  }

  /// A task that runs long after short ones: what the short ones held leaves once it
  /// was held `maxDelayNanos`, however long that task still runs.
  @Test func theFlusherSendsWhatWasHeldTooLong() {
    var h = ReplyHold(maxHeld: 16, maxDelayNanos: 1_000_000, lingerNanos: 50_000_000)
    #expect(h.finished(moreQueued: true, now: 10_000_000) == .hold(unpark: true))
    #expect(h.finished(moreQueued: true, now: 10_400_000) == .hold(unpark: false))
    #expect(h.tick(now: 10_500_000) == .sleep(500_000), "the oldest was held 0.5 ms: look again when it is due")
    #expect(h.tick(now: 11_000_000) == .flush(thenSleep: 1_000_000))
    #expect(h.held == 0)
    #expect(h.tick(now: 12_000_000) == .sleep(1_000_000), "keeps looking a while after a hold")
  }

  /// The flusher ticks only while replies were held of late: it parks after the linger
  /// and the next hold wakes it (one wake-up per busy period, not per reply).
  @Test func theFlusherParksWhenNothingWasHeldForALingerAndTheNextHoldWakesIt() {
    var h = ReplyHold(maxHeld: 16, maxDelayNanos: 1_000_000, lingerNanos: 5_000_000)
    #expect(h.parked)
    #expect(h.finished(moreQueued: true, now: 1_000_000) == .hold(unpark: true))
    #expect(h.finished(moreQueued: false, now: 1_100_000) == .sendAll)
    #expect(h.tick(now: 2_000_000) == .sleep(1_000_000))
    #expect(h.finished(moreQueued: true, now: 3_000_000) == .hold(unpark: false), "still ticking: no wake-up")
    #expect(h.tick(now: 4_000_000) == .flush(thenSleep: 1_000_000))
    #expect(h.tick(now: 7_999_999) == .sleep(1_000_000))
    #expect(h.tick(now: 8_000_000) == .park)
    #expect(h.parked)
    #expect(h.finished(moreQueued: true, now: 9_000_000) == .hold(unpark: true))
  }

  /// Replies sent another way (a task about to block, an exit) leave nothing for the
  /// flusher; a clock seen going backwards sends at once rather than never.
  @Test func releasedRepliesLeaveNothingDueAndABackwardsClockFlushes() {
    var h = ReplyHold(maxHeld: 16, maxDelayNanos: 1_000_000)
    _ = h.finished(moreQueued: true, now: 5_000_000)
    h.released()
    #expect(h.held == 0)
    #expect(h.tick(now: 9_000_000) == .sleep(1_000_000))
    _ = h.finished(moreQueued: true, now: 20_000_000)
    #expect(h.tick(now: 1_000) == .flush(thenSleep: 1_000_000))
  }
}
