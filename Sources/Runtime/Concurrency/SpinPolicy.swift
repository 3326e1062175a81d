/// When a thread about to sleep should instead look again for a while ("spin"): worth
/// it when the other side answers within microseconds and a CPU is free, harmful when
/// the threads of the node outnumber its CPUs (the spinner takes the CPU the other side
/// needs). So a thread spins only until it sees it is in the way: a look that took far
/// longer than a look takes (`gapNanos`: the CPU went to another thread meanwhile), or
/// a spin that found nothing, stops spinning for a number of waits that doubles each
/// time (up to `maxBackoff`); a spin that pays resets it.
///
/// A pure value (tested on its own, `SpinPolicyTests`); time is passed in.
/// Threading: its owner's (one thread, or behind a lock).
public struct SpinPolicy: Sendable {
  public let budgetNanos: UInt64
  public let gapNanos: UInt64
  public static let maxBackoff = 1024
  /// Waits left that do not spin.
  public private(set) var skip = 0
  private var backoff = 1

  public init(budgetNanos: UInt64, gapNanos: UInt64 = 50_000) {
    self.budgetNanos = budgetNanos
    self.gapNanos = gapNanos
  }

  /// A wait begins: whether it spins.
  public mutating func begin() -> Bool {
    guard budgetNanos > 0 else { return false }
    if skip > 0 { skip -= 1; return false }
    return true
  }

  /// One look during a spin, `elapsed` after the spin began and `sinceLast` after the
  /// previous look: whether to keep spinning (else the wait sleeps).
  public mutating func look(elapsed: UInt64, sinceLast: UInt64) -> Bool {
    if sinceLast > gapNanos { backOff(); return false }
    if elapsed >= budgetNanos { backOff(); return false }
    return true
  }

  /// The spin found what it waited for.
  public mutating func paid() { backoff = 1 }

  private mutating func backOff() {
    skip = backoff
    backoff = min(backoff * 2, Self.maxBackoff)
  }
}
