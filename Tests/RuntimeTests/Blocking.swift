import Foundation

/// Runs `body`, which blocks (store calls, shutdowns that wait), on a thread of its own.
/// Swift Testing runs tests on the Swift concurrency pool, whose few threads must never
/// block (Sources/Runtime/Concurrency/Locked.swift; SWIFTRAY_LOCK_CHECKS=1 traps on it).
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { c in
    Thread.detachNewThread { c.resume(with: Result { try body() }) }
  }
}
