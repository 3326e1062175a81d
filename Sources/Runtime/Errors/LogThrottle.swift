/// Lets a repeated warning through at most once per period and counts the ones held
/// back, so a peer that provokes it thousands of times a second cannot flood the log.
/// Pure (time passed in). Threading: a value; its owner serializes access.
public struct LogThrottle: Sendable, Equatable {
  public let periodNanos: UInt64
  private var last: UInt64?
  private var held = 0

  public init(periodNanos: UInt64 = 10_000_000_000) { self.periodNanos = periodNanos }

  /// nil: stay quiet this time; otherwise log now, saying how many were held back since
  /// the last one logged.
  public mutating func admit(now: UInt64) -> Int? {
    if let last, now >= last, now - last < periodNanos {
      held += 1
      return nil
    }
    defer { held = 0 }
    last = now
    return held
  }
}
