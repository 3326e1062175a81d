import Foundation

/// Tokens of registered objects that became available here, for a language layer that
/// awaits objects without a thread per object (asyncio's `await ref`, `ref.future()`):
/// it registers a token per object (`CoreWorker.notifyWhenAvailable`), watches `fd`, and
/// takes the tokens whose objects arrived. Each arrival costs O(1): the object's
/// waiter (an `ObjectWaiter` of one) appends its token and signals the eventfd.
///
/// Threading: `post` from any thread (never under a lock: waiters are released after
/// the owner's critical section); `take` from the thread that watches `fd`.
public final class AvailabilityNotices: Sendable {
  let ready = Locked<[UInt64]>([])
  let wakeup = Wakeup()

  /// Readable while tokens wait to be taken (an eventfd).
  public var fd: Int32 { wakeup.fd }

  func post(_ token: UInt64) {
    ready.withLock { $0.append(token) }
    wakeup.signal()
  }

  /// Every token posted since the last take, oldest first; clears `fd` first, so a
  /// token posted meanwhile signals it again.
  public func take() -> [UInt64] {
    wakeup.reset()
    return ready.withLock { r in
      let out = r
      r.removeAll(keepingCapacity: r.count < 4096)
      return out
    }
  }
}

extension CoreWorker {
  /// Posts `token` to `availability` once `id` is available in this process (at once
  /// when it already is; a borrowed object is fetched from its owner meanwhile), as a
  /// `get` of it would then find it. Never blocks.
  public func notifyWhenAvailable(_ id: ObjectID, token: UInt64) {
    let notices = availability
    let waiter = owner { $0.waitStarted([id], needed: 1, makeWaiter: { ObjectWaiter(needed: $0) { notices.post(token) } }) }
    if waiter == nil { notices.post(token) }
  }
}
