/// Waits for a task's top-level object arguments before the task asks for a lease,
/// so no CPU is held while arguments are computed. Pure state machine.
///
/// Threading: value type, owned by the CoreWorker shell under its lock.
public struct DependencyResolver: Sendable {
  private var missing: [TaskID: Set<ObjectID>] = [:]
  private var waiters: [ObjectID: [TaskID]] = [:]
  public init() {}

  public var numWaitingTasks: Int { missing.count }

  /// Returns true when the task can go ahead now (nothing missing).
  public mutating func taskArrived(_ task: TaskID, dependencies: [ObjectID], isReady: (ObjectID) -> Bool) -> Bool {
    let need = Set(dependencies.filter { !isReady($0) })
    if need.isEmpty { return true }
    missing[task] = need
    for o in need { waiters[o, default: []].append(task) }
    return false
  }

  /// An argument became available (value or error). Returns the tasks now ready,
  /// in the order they arrived.
  public mutating func objectAvailable(_ object: ObjectID) -> [TaskID] {
    guard let tasks = waiters.removeValue(forKey: object) else { return [] }
    var ready: [TaskID] = []
    for t in tasks {
      guard var m = missing[t] else { continue }
      m.remove(object)
      if m.isEmpty { missing[t] = nil; ready.append(t) } else { missing[t] = m }
    }
    return ready
  }

  /// The task no longer waits (cancelled). Returns true when it was waiting.
  public mutating func taskRemoved(_ task: TaskID) -> Bool {
    guard let m = missing.removeValue(forKey: task) else { return false }
    for o in m { waiters[o]?.removeAll { $0 == task }; if waiters[o]?.isEmpty == true { waiters[o] = nil } }
    return true
  }
}
