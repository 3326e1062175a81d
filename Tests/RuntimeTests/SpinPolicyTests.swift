import Runtime
import Testing

@Suite struct SpinPolicyTests {
  @Test func aSpinThatPaysKeepsSpinning() {
    var p = SpinPolicy(budgetNanos: 500_000)
    for _ in 0..<100 {
      let spins = p.begin()
      let keeps = p.look(elapsed: 10_000, sinceLast: 2_000)
      #expect(spins && keeps)
      p.paid()
    }
  }

  @Test func beingPreemptedStopsSpinningForLongerEachTime() {
    var p = SpinPolicy(budgetNanos: 500_000, gapNanos: 50_000)
    var skipped: [Int] = []
    for _ in 0..<5 {
      var n = 0
      while !p.begin() { n += 1 }
      skipped.append(n)
      let keeps = p.look(elapsed: 80_000, sinceLast: 80_000)  // the CPU went elsewhere
      #expect(!keeps)
    }
    #expect(skipped == [0, 1, 2, 4, 8])
  }

  @Test func aSpinThatFindsNothingBacksOffAndOneThatPaysResets() {
    var p = SpinPolicy(budgetNanos: 100_000)
    var spins: [Bool] = []
    spins.append(p.begin())
    let first = p.look(elapsed: 100_000, sinceLast: 1_000)  // the budget ran out
    spins.append(p.begin())  // one wait skipped
    spins.append(p.begin())
    let second = p.look(elapsed: 100_000, sinceLast: 1_000)
    spins.append(p.begin())  // two skipped
    spins.append(p.begin())
    spins.append(p.begin())
    p.paid()
    spins.append(p.begin())
    let third = p.look(elapsed: 100_000, sinceLast: 1_000)
    spins.append(p.begin())  // back to one
    spins.append(p.begin())
    #expect(!first && !second && !third)
    #expect(spins == [true, false, true, false, false, true, true, false, true])
  }

  @Test func theBackoffIsBounded() {
    var p = SpinPolicy(budgetNanos: 100_000)
    for _ in 0..<40 {
      while !p.begin() {}
      _ = p.look(elapsed: 100_000, sinceLast: 1_000)
    }
    #expect(p.skip <= SpinPolicy.maxBackoff)
  }

  @Test func noBudgetNeverSpins() {
    var p = SpinPolicy(budgetNanos: 0)
    let spins = p.begin()
    #expect(!spins)
  }
}
