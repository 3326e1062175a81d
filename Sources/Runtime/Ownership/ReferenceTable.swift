import DequeModule
import Foundation

/// Reference counts for the objects a process knows about (DESIGN §3), and the
/// borrower protocol. Pure state machine.
///
/// A process holds a ref while any of these is non-zero: local refs (Python
/// `ObjectRef`s alive), refs held by pending tasks it submitted, owned objects here
/// that contain the ref, and — at the owner — registered borrowers. A borrower (a
/// process holding a ref it does not own) is registered at the owner, counted, so an
/// object lives until every borrower has dropped it:
/// - a process registers itself when a borrowed ref first comes into use (`.register`);
/// - a process that sends refs inside a value (a task's return, a `get` reply) first
///   registers the receiver, who counts those registrations as its own
///   (`registrationsReceived`);
/// - when a borrowed ref goes out of use, every registration counted on this process
///   is removed at once (`.forget(id, registrations:)`).
/// Counts commute, and each process's messages to an owner travel in order, so a
/// removal never overtakes the registration it undoes.
///
/// Threading: value type, owned by the CoreWorker shell under its lock.
public struct ReferenceTable: Sendable {
  /// Counts are 32-bit (every live object has an entry: the table's slot size is what
  /// a task in flight costs here), and saturate rather than trap.
  public struct Reference: Sendable, Equatable {
    public var localRefs: Int32 = 0
    public var submittedTaskRefs: Int32 = 0
    /// Live owned objects of this process whose values contain the ref.
    public var contained: Int32 = 0
    public var owned: Bool
    /// At the owner: registrations per borrowing process.
    public var borrowers: [WorkerID: Int] = [:]
    /// At a borrower: registrations the owner counts on this process.
    public var registrations: Int32 = 0
    /// Serialized outside any value the core tracks (e.g. captured by a pickled
    /// function): kept for the owner's lifetime.
    public var escaped = false
    /// Its owner's address was recorded (`OwnerState.owners`) through `borrowedRefAdded`:
    /// that record goes only with this entry (`.forget`), so while this is set it stands.
    public var ownerRecorded = false
    public init(owned: Bool, localRefs: Int32 = 0, submittedTaskRefs: Int32 = 0, contained: Int32 = 0) {
      self.owned = owned; self.localRefs = localRefs; self.submittedTaskRefs = submittedTaskRefs; self.contained = contained
    }
    public var isInUse: Bool {
      localRefs > 0 || submittedTaskRefs > 0 || contained > 0 || !borrowers.isEmpty || escaped
    }
  }

  public enum Action: Sendable, Equatable {
    /// Owned object out of scope: free its value and lineage.
    case free(ObjectID)
    /// Borrowed object out of scope here: drop any cached copy, and tell the owner to
    /// remove `registrations` registrations of this process (when > 0).
    case forget(ObjectID, registrations: Int)
    /// A borrowed ref came into use: register this process at its owner (one count).
    case register(ObjectID)
  }

  public private(set) var refs: [ObjectID: Reference] = [:]
  /// At the owner: what each borrower holds, and the borrowers on each node (when they
  /// said), so a death costs what the dead held, never a scan of every ref.
  private var borrowedBy: [WorkerID: Set<ObjectID>] = [:]
  private var borrowerNode: [WorkerID: Data] = [:]
  private var borrowersOn: [Data: Set<WorkerID>] = [:]
  /// Borrowers known dead (bounded, oldest forgotten first): a registration of one that
  /// arrives after the news of its death (sent by a process that returned it a value)
  /// is not counted, else it would keep the object forever.
  private var dead: Set<WorkerID> = []
  private var deadOrder: Deque<WorkerID> = []
  public static let deadBorrowersKept = 10_000
  public init() {}

  public mutating func ownedObjectCreated(_ id: ObjectID) {
    if refs[id] == nil { refs[id] = Reference(owned: true) }
  }

  /// A Python `ObjectRef` was made. `borrowed`: the ref is owned by another process.
  public mutating func localRefAdded(_ id: ObjectID, borrowed: Bool = false) -> [Action] {
    // Changed in place (one hash lookup: this runs once per ref unpickled).
    func add(_ r: inout Reference) -> Bool {
      r.localRefs.saturatingIncrement()
      let register = borrowed && !r.owned && r.registrations == 0
      if register { r.registrations = 1 }
      return register
    }
    return add(&refs[id, default: Reference(owned: false)]) ? [.register(id)] : []
  }

  /// `localRefAdded(id, borrowed: true)` that also says whether the owner's address
  /// was recorded before (and from now on counts it as recorded): the caller records it
  /// when not, and spares itself that lookup on every later ref of the object.
  public mutating func borrowedRefAdded(_ id: ObjectID) -> (actions: [Action], ownerRecorded: Bool) {
    func add(_ r: inout Reference) -> (Bool, Bool) {
      r.localRefs.saturatingIncrement()
      let register = !r.owned && r.registrations == 0
      if register { r.registrations = 1 }
      defer { r.ownerRecorded = true }
      return (register, r.ownerRecorded)
    }
    let (register, recorded) = add(&refs[id, default: Reference(owned: false)])
    return (register ? [.register(id)] : [], recorded)
  }

  public mutating func localRefRemoved(_ id: ObjectID) -> [Action] {
    // One hash lookup (this runs once per ref dropped): changed, and removed, by index.
    guard let i = refs.index(forKey: id) else { return [] }
    refs.values[i].localRefs = max(0, refs.values[i].localRefs - 1)
    if refs.values[i].isInUse { return [] }
    let r = refs.remove(at: i).value
    return [r.owned ? .free(id) : .forget(id, registrations: Int(r.registrations))]
  }

  public mutating func submittedTaskRefsAdded(_ ids: [ObjectID]) {
    for id in ids { refs[id, default: Reference(owned: false)].submittedTaskRefs.saturatingIncrement() }
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

  /// An owned object whose value contains `ids` was created here.
  public mutating func containedRefsAdded(_ ids: [ObjectID]) {
    for id in ids { refs[id, default: Reference(owned: false)].contained.saturatingIncrement() }
  }

  /// That object was freed (or, for a cached borrowed value, forgotten).
  public mutating func containedRefsRemoved(_ ids: [ObjectID]) -> [Action] {
    var actions: [Action] = []
    for id in ids {
      guard var r = refs[id] else { continue }
      r.contained = max(0, r.contained - 1)
      actions += update(id, r)
    }
    return actions
  }

  /// Refs arrived inside a value whose sender registered this process for them,
  /// `count` times. At the owner itself the sender's registration named the owner as
  /// borrower: it is undone here (the value's containment holds the ref instead).
  /// Call after `containedRefsAdded` (or with another hold) for the same refs.
  public mutating func registrationsReceived(_ id: ObjectID, count: Int, me: WorkerID) -> [Action] {
    guard var r = refs[id] else { return [] }
    if r.owned {
      let n = (r.borrowers[me] ?? 0) - count
      r.borrowers[me] = n > 0 ? n : nil
      if n <= 0 { unindex(me, id) }
    } else {
      r.registrations.saturatingIncrement(by: count)
    }
    return update(id, r)
  }

  /// Distinct borrowers one object may have at its owner: peers registering as
  /// borrowers cannot grow an owner's table without end.
  public static let maxBorrowersPerObject = 10_000
  /// Registrations one borrower may hold on one object (well past any real count; the
  /// sum then cannot overflow).
  public static let maxRegistrationsPerBorrower = 1 << 40

  /// At the owner: `borrower` (on `node`, when known) holds the ref (`count` more
  /// registrations). False (and nothing changes) when the object already has
  /// `maxBorrowersPerObject` others. A borrower known dead is not counted.
  @discardableResult
  public mutating func borrowerAdded(_ id: ObjectID, _ borrower: WorkerID, node: Data = Data(), count: Int = 1) -> Bool {
    guard !dead.contains(borrower) else { return true }
    let held = refs[id]?.borrowers[borrower]
    guard held != nil || (refs[id]?.borrowers.count ?? 0) < Self.maxBorrowersPerObject else { return false }
    let total = (held ?? 0) + min(max(count, 0), Self.maxRegistrationsPerBorrower)
    refs[id, default: Reference(owned: true)].borrowers[borrower] = min(total, Self.maxRegistrationsPerBorrower)
    borrowedBy[borrower, default: []].insert(id)
    if !node.isEmpty, borrowerNode[borrower] == nil {
      borrowerNode[borrower] = node
      borrowersOn[node, default: []].insert(borrower)
    }
    return true
  }

  public mutating func borrowerRemoved(_ id: ObjectID, _ borrower: WorkerID, count: Int) -> [Action] {
    guard var r = refs[id], let n = r.borrowers[borrower] else { return [] }
    r.borrowers[borrower] = n > count ? n - count : nil
    if n <= count { unindex(borrower, id) }
    return update(id, r)
  }

  /// At the owner: these borrowers exited (a process that dies never removes its
  /// registrations itself). What only they held goes.
  public mutating func borrowersDied(_ workers: some Sequence<WorkerID>) -> [Action] {
    var actions: [Action] = []
    for w in workers where !dead.contains(w) {
      dead.insert(w)
      deadOrder.append(w)
      if deadOrder.count > Self.deadBorrowersKept, let oldest = deadOrder.popFirst() { dead.remove(oldest) }
      forgetNode(of: w)
      for id in (borrowedBy.removeValue(forKey: w) ?? []).sorted(by: { $0.hex < $1.hex }) {
        guard var r = refs[id] else { continue }
        r.borrowers[w] = nil
        actions += update(id, r)
      }
    }
    return actions
  }

  /// At the owner: `node` died, and every borrower known to be on it with it.
  public mutating func borrowersDied(onNode node: Data) -> [Action] {
    borrowersDied(borrowersOn.removeValue(forKey: node).map { $0.sorted { $0.hex < $1.hex } } ?? [])
  }

  /// `borrower` no longer holds `id`.
  private mutating func unindex(_ borrower: WorkerID, _ id: ObjectID) {
    borrowedBy[borrower]?.remove(id)
    guard borrowedBy[borrower]?.isEmpty == true else { return }
    borrowedBy[borrower] = nil
    forgetNode(of: borrower)
  }

  private mutating func forgetNode(of borrower: WorkerID) {
    guard let node = borrowerNode.removeValue(forKey: borrower) else { return }
    borrowersOn[node]?.remove(borrower)
    if borrowersOn[node]?.isEmpty == true { borrowersOn[node] = nil }
  }

  public mutating func refEscaped(_ id: ObjectID) {
    refs[id, default: Reference(owned: false)].escaped = true
  }

  public func isInScope(_ id: ObjectID) -> Bool { refs[id]?.isInUse ?? false }

  private mutating func update(_ id: ObjectID, _ r: Reference) -> [Action] {
    if r.isInUse { refs[id] = r; return [] }
    refs[id] = nil
    return [r.owned ? .free(id) : .forget(id, registrations: Int(r.registrations))]
  }
}

extension Int32 {
  /// Adds without trapping: a count stops at `Int32.max`.
  mutating func saturatingIncrement(by n: Int = 1) {
    let (sum, overflow) = addingReportingOverflow(Int32(clamping: n))
    self = overflow ? (n < 0 ? .min : .max) : sum
  }
}
