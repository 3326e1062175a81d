/// Reference counts for the objects a process knows about (DESIGN §3): local refs
/// (Python `ObjectRef`s alive), refs held by pending tasks it submitted, and refs that
/// escaped inside serialized values. Pure state machine.
///
/// Threading: value type, owned by the CoreWorker shell under its lock.
public struct ReferenceTable: Sendable {
  public struct Reference: Sendable, Equatable {
    public var localRefs = 0
    public var submittedTaskRefs = 0
    public var owned: Bool
    /// Serialized into another value: a borrower we cannot count yet may hold it.
    /// Kept until the borrower protocol tracks it (object store issue).
    public var escaped = false
    public var isInUse: Bool { localRefs > 0 || submittedTaskRefs > 0 || escaped }
  }

  public enum Action: Sendable, Equatable {
    /// Owned object out of scope: free its value and lineage.
    case free(ObjectID)
    /// Borrowed object out of scope here: drop any cached copy.
    case forget(ObjectID)
  }

  public private(set) var refs: [ObjectID: Reference] = [:]
  public init() {}

  public mutating func ownedObjectCreated(_ id: ObjectID) {
    if refs[id] == nil { refs[id] = Reference(owned: true) }
  }

  public mutating func localRefAdded(_ id: ObjectID) {
    refs[id, default: Reference(owned: false)].localRefs += 1
  }

  public mutating func localRefRemoved(_ id: ObjectID) -> [Action] {
    guard var r = refs[id] else { return [] }
    r.localRefs = max(0, r.localRefs - 1)
    return update(id, r)
  }

  public mutating func submittedTaskRefsAdded(_ ids: [ObjectID]) {
    for id in ids { refs[id, default: Reference(owned: false)].submittedTaskRefs += 1 }
  }

  public mutating func submittedTaskRefsRemoved(_ ids: [ObjectID]) -> [Action] {
    var actions: [Action] = []
    for id in ids {
      guard var r = refs[id] else { continue }
      r.submittedTaskRefs = max(0, r.submittedTaskRefs - 1)
      actions += update(id, r)
    }
    return actions
  }

  public mutating func refEscaped(_ id: ObjectID) {
    refs[id, default: Reference(owned: false)].escaped = true
  }

  public func isInScope(_ id: ObjectID) -> Bool { refs[id]?.isInUse ?? false }

  private mutating func update(_ id: ObjectID, _ r: Reference) -> [Action] {
    if r.isInUse { refs[id] = r; return [] }
    refs[id] = nil
    return [r.owned ? .free(id) : .forget(id)]
  }
}
