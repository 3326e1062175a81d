/// A one-shot gate: tasks `wait` until someone `open`s it (at once if it is open).
/// Made under a lock to order work (it does nothing when made), opened after it.
///
/// Threading: any thread or task; `open` resumes the waiters outside its own lock.
public final class AsyncLatch: Sendable {
  let state = Locked<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

  public init() {}

  public var isOpen: Bool { state.withLock { $0.open } }

  public func wait() async {
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      let now = state.withLock { s -> Bool in
        if s.open { return true }
        s.waiters.append(c)
        return false
      }
      if now { c.resume() }
    }
  }

  public func open() {
    LockDiscipline.mustNotHoldLock("AsyncLatch.open")
    let waiters = state.withLock { s in
      s.open = true
      defer { s.waiters.removeAll() }
      return s.waiters
    }
    for c in waiters { c.resume() }
  }
}
