/// Waits for a task's top-level object arguments before the task asks for a lease,
/// so no CPU is held while arguments are computed. Pure state machine.
///
/// Threading: value type, owned by the CoreWorker shell under its lock.
public struct DependencyResolver: Sendable {
  private var missing: [TaskID: Set<ObjectID>] = [:]
  private var waiters: [ObjectID: Waiting] = [:]
  public init() {}

  /// The tasks that waited for an object, in arrival order. A task removed since
  /// (`taskRemoved`) keeps its entry, skipped when the object arrives: a scan of every
  /// waiter per removal made cancelling N tasks that wait for one object cost N².
  struct Waiting: Sendable {
    var tasks: [TaskID] = []
    /// Entries of `tasks` left by removals since the last compaction.
    var removed = 0
  }

  public var numWaitingTasks: Int { missing.count }
  /// Entries the waiter lists hold, those left by removals included.
  public var numWaiterEntries: Int { waiters.values.reduce(0) { $0 + $1.tasks.count } }

  /// Returns true when the task can go ahead now (nothing missing).
  public mutating func taskArrived(_ task: TaskID, dependencies: [ObjectID], isReady: (ObjectID) -> Bool) -> Bool {
    let need = Set(dependencies.filter { !isReady($0) })
    if need.isEmpty { return true }
    missing[task] = need
    for o in need { waiters[o, default: Waiting()].tasks.append(task) }
    return false
  }

  /// An argument became available (value or error). Returns the tasks now ready,
  /// in the order they arrived.
  public mutating func objectAvailable(_ object: ObjectID) -> [TaskID] {
    guard let w = waiters.removeValue(forKey: object) else { return [] }
    var ready: [TaskID] = []
    for t in w.tasks {
      // A task removed (or ready already: one queued again has two entries) is skipped.
      guard var m = missing[t], m.remove(object) != nil else { continue }
      if m.isEmpty { missing[t] = nil; ready.append(t) } else { missing[t] = m }
    }
    return ready
  }

  /// The task no longer waits (cancelled). Returns true when it was waiting.
  public mutating func taskRemoved(_ task: TaskID) -> Bool {
    guard let m = missing.removeValue(forKey: task) else { return false }
    for o in m {
      waiters[o]?.removed += 1
      // Compacted once removed entries could outnumber the rest, so the list of an
      // object that never arrives stays bounded by the tasks still waiting for it.
      guard let (count, removed) = waiters[o].map({ ($0.tasks.count, $0.removed) }), removed > count / 2 + 16 else { continue }
      let missing = self.missing
      waiters[o]!.tasks.removeAll { missing[$0]?.contains(o) != true }
      waiters[o]!.removed = 0
      if waiters[o]!.tasks.isEmpty { waiters[o] = nil }
    }
    return true
  }
}
