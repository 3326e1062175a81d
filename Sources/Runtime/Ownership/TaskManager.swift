import Foundation
import RuntimeProto

/// The owner's record of the tasks it submitted: their specs (lineage), attempts left,
/// and what to do when a reply or a failure arrives. Pure state machine.
///
/// Threading: value type, owned by the CoreWorker shell under its lock.
public struct TaskManager: Sendable {
  public enum Status: Sendable, Equatable {
    case pending      // waiting for args, a lease, or running
    case finished
    case failed
  }
  public struct Entry: Sendable {
    /// The spec while the task may still run. Once it ended and is kept only as lineage
    /// it is packed into its encoding (a fraction of the memory of the message and its
    /// buffers), read back only when a lost return is rebuilt or an error names it.
    private var live: Swiftray_TaskSpec?
    private var packed: [UInt8]?
    /// The owner's address, left out of `packed`: the same for every task of this owner.
    private var packedOwner: SharedAddress?
    public var spec: Swiftray_TaskSpec {
      get {
        if let live { return live }
        var s = packed.flatMap { try? Swiftray_TaskSpec(serializedBytes: $0) } ?? Swiftray_TaskSpec()
        if let packedOwner { s.owner = packedOwner.address }
        return s
      }
      set { live = newValue; packed = nil; packedOwner = nil }
    }
    public let numReturns: Int
    public var retriesLeft: Int  // -1: unlimited
    public var status: Status
    public var cancelRequested = false
    /// The objects passed by reference, held (submitted-task refs) until the task ends.
    public var argRefs: [ObjectID] = []
    /// > 0 while the finished spec is kept as lineage: what it is estimated to cost.
    var keptSize = 0
    /// Finished with every return inline (held by this owner, never in a node's store):
    /// nothing can lose them, so nothing will rebuild them and the spec is not kept.
    var needsNoLineage = false

    init(spec: Swiftray_TaskSpec, retriesLeft: Int, status: Status) {
      live = spec
      numReturns = Int(max(spec.numReturns, 0))
      self.retriesLeft = retriesLeft
      self.status = status
    }

    /// Keeps the spec as its encoding (only lineage reads it from now on).
    mutating func pack(owner: inout SharedAddress?) {
      guard var spec = live else { return }
      if owner?.address != spec.owner { owner = SharedAddress(spec.owner) }
      spec.clearOwner()
      guard let data = try? spec.serializedBytes() as [UInt8] else { return }
      packed = data
      packedOwner = owner
      live = nil
    }
  }

  /// One owner address shared by the packed specs that name it.
  final class SharedAddress: Sendable {
    let address: Swiftray_Address
    init(_ address: Swiftray_Address) { self.address = address }
  }
  private var packedOwner: SharedAddress?

  public enum Outcome: Sendable, Equatable {
    case success
    /// The user's code raised; `retryable` when it matched `retry_exceptions`.
    case applicationError(retryable: Bool)
    case cancelled
  }

  public enum Action: Sendable, Equatable {
    /// Store the reply's return objects; the task is done.
    case complete(TaskID)
    /// Submit again (spec's `attempt` already incremented); `reason` is for the warning.
    case resubmit(TaskID, reason: String)
    /// Store `error` in every return slot; the task is done.
    case fail(TaskID, SwiftrayError)
  }

  public private(set) var entries: [TaskID: Entry] = [:]
  /// Per object: how many kept specs (lineage) name it as an argument. While > 0 its own
  /// task's spec is kept too, so a lost downstream object can be rebuilt through it
  /// even after its value was freed (Ray's lineage pinning).
  public private(set) var lineageRefs: [ObjectID: Int] = [:]
  /// Specs of finished tasks kept for lineage, in the order they finished (each entry's
  /// `keptSize` says what it costs); bounded by `evictLineage` (Ray's `max_lineage_bytes`).
  private var keptCount = 0
  private var keptOrder: [TaskID] = []
  private var keptHead = 0
  public private(set) var lineageBytes = 0
  public init() {}

  public func isLineagePinned(_ id: ObjectID) -> Bool { (lineageRefs[id] ?? 0) > 0 }

  public var numPending: Int { entries.values.filter { $0.status == .pending }.count }
  public func spec(_ id: TaskID) -> Swiftray_TaskSpec? { entries[id]?.spec }
  /// How many objects task `id` returns (nil for a task not known here); never unpacks.
  public func numReturns(_ id: TaskID) -> Int? { entries[id]?.numReturns }
  public func isPending(_ id: TaskID) -> Bool { entries[id]?.status == .pending }

  /// `extraRefs`: more refs the task holds until it ends (an actor call's handle).
  public mutating func taskSubmitted(_ id: TaskID, spec: Swiftray_TaskSpec, extraRefs: [ObjectID] = []) {
    var e = Entry(spec: spec, retriesLeft: Int(spec.maxRetries), status: .pending)
    // Ref arguments, and refs nested in value arguments: both held until the task ends.
    e.argRefs = spec.args.flatMap { a -> [ObjectID] in
      switch a.kind {
      case .ref(let r)?: return ObjectID(binary: r.objectID).map { [$0] } ?? []
      case .value(let v)?: return v.nestedRefs.compactMap { ObjectID(binary: $0.objectID) }
      case nil: return []
      }
    } + extraRefs
    if entries[id] == nil { for a in e.argRefs { lineageRefs[a, default: 0] += 1 } }
    entries[id] = e
  }

  /// Replaces the spec (arguments inlined once resolved), keeping attempts and status.
  public mutating func specResolved(_ id: TaskID, spec: Swiftray_TaskSpec) {
    entries[id]?.spec = spec
  }

  public func argRefs(_ id: TaskID) -> [ObjectID] { entries[id]?.argRefs ?? [] }

  /// `returnsInline`: every return came in the reply itself (none is in a node's
  /// store); such a task keeps no lineage (`needsLineage`).
  public mutating func taskReplied(_ id: TaskID, outcome: Outcome, returnsInline: Bool = false) -> [Action] {
    guard var e = entries[id], e.status == .pending else { return [] }
    switch outcome {
    case .success:
      e.status = .finished
      if returnsInline { finishedWithoutLineage(id, e) } else { settled(id, e) }
      return [.complete(id)]
    case .cancelled:
      e.status = .failed
      settled(id, e)
      return [.fail(id, Self.cancelledError(e.spec))]
    case .applicationError(let retryable):
      if retryable && !e.cancelRequested && consumeRetry(&e) {
        entries[id] = e
        return [.resubmit(id, reason: "the task raised an exception listed in retry_exceptions")]
      }
      e.status = .failed
      if returnsInline { finishedWithoutLineage(id, e) } else { settled(id, e) }
      // The error objects came back in the reply; store them like values.
      return [.complete(id)]
    }
  }

  /// The worker died or the reply never came. Retried while attempts remain.
  public mutating func taskFailed(_ id: TaskID, error: SwiftrayError) -> [Action] {
    guard var e = entries[id], e.status == .pending else { return [] }
    if e.cancelRequested {
      e.status = .failed
      settled(id, e)
      return [.fail(id, Self.cancelledError(e.spec))]
    }
    if error.code == .workerCrashed && consumeRetry(&e) {
      entries[id] = e
      return [.resubmit(id, reason: error.message)]
    }
    e.status = .failed
    settled(id, e)
    var final = error
    if error.code == .workerCrashed {
      final.message += " The task was attempted \(e.spec.attempt + 1) time(s) (max_retries=\(e.spec.maxRetries))."
    }
    return [.fail(id, final)]
  }

  /// `cancel` was called. Returns true when the task is still pending.
  public mutating func cancelRequested(_ id: TaskID) -> Bool {
    guard var e = entries[id], e.status == .pending else { return false }
    e.cancelRequested = true
    entries[id] = e
    return true
  }

  public enum Rebuild: Sendable, Equatable {
    /// Run the task again (an attempt is used); its returns come back under the same ids.
    case resubmit
    /// It is running again already (another of its returns was lost too).
    case alreadyRunning
    /// The object cannot come back: store this error in its place.
    case fail(SwiftrayError)
  }

  /// A return of task `id` was lost with its node (lineage reconstruction). `object`
  /// and `why` are for the error when it cannot be rebuilt.
  public mutating func rebuild(_ id: TaskID, lost object: ObjectID, why: String) -> Rebuild {
    guard var e = entries[id] else {
      return .fail(SwiftrayError(.reconstructionFailed, "Object \(object.hex) was lost (\(why)) and cannot be rebuilt: "
        + "the lineage of the task that made it was released (lineage evicted)."))
    }
    if e.status == .pending { return .alreadyRunning }
    let name = e.spec.name
    if e.spec.streaming {
      // Its stream ended: a second run's reports would not be kept (nor should a reader
      // see a stream twice), so nothing would bring the object back.
      return .fail(SwiftrayError(.reconstructionFailed, "Object \(object.hex) was lost (\(why)) and cannot be rebuilt: "
        + "it is an item of streaming generator \(name), and items of a finished stream are not rebuilt."))
    }
    if e.spec.maxRetries == 0 {
      return .fail(SwiftrayError(.reconstructionFailed, "Object \(object.hex) was lost (\(why)) and cannot be rebuilt: "
        + "its task \(name) has max_retries=0, so it is never re-executed. Set max_retries > 0 to let lost objects be rebuilt."))
    }
    guard consumeRetry(&e) else {
      return .fail(SwiftrayError(.reconstructionFailed, "Object \(object.hex) was lost (\(why)) and cannot be rebuilt: "
        + "its task \(name) is out of retries (max_retries=\(e.spec.maxRetries), attempted \(e.spec.attempt + 1) time(s); "
        + "maximum attempts exceeded)."))
    }
    e.status = .pending
    entries[id] = e
    unkept(id)
    return .resubmit
  }

  /// Evicts the oldest kept specs until their estimated bytes are within `limit`;
  /// their returns can no longer be rebuilt. Returns the arguments no kept spec names
  /// any more (their own lineage may go now).
  public mutating func evictLineage(limit: Int) -> [ObjectID] {
    var unpinned: [ObjectID] = []
    while lineageBytes > limit && keptHead < keptOrder.count {
      let t = keptOrder[keptHead]
      keptHead += 1
      if (entries[t]?.keptSize ?? 0) > 0 { unpinned += release(t) }
    }
    return unpinned
  }

  /// False for a finished task whose returns cannot be lost: its entry goes once the
  /// task is done, whether or not its returns are still referenced.
  public func needsLineage(_ id: TaskID) -> Bool { entries[id]?.needsNoLineage != true }

  /// Neither packed nor counted as lineage: the entry stays only until the owner is done
  /// with the reply (it reads the argument refs to release them), then `release` drops it.
  private mutating func finishedWithoutLineage(_ id: TaskID, _ e: Entry) {
    var e = e
    e.needsNoLineage = true
    entries[id] = e
  }

  private mutating func settled(_ id: TaskID, _ e: Entry) {
    var e = e
    // What the spec costs to keep: its inline argument bytes plus a fixed overhead.
    let size = 256 + e.spec.args.reduce(0) { $0 + $1.value.data.count + $1.value.metadata.count }
    e.pack(owner: &packedOwner)
    let isNew = e.keptSize == 0
    if isNew { e.keptSize = size }
    entries[id] = e
    guard isNew else { return }
    keptCount += 1
    keptOrder.append(id)
    lineageBytes += size
    // Most specs are released long before eviction: drop their ids from the order now
    // and then (amortized O(1)), so it stays proportional to what is kept.
    if keptOrder.count - keptHead > 2 * keptCount + 1024 {
      keptOrder = keptOrder[keptHead...].filter { (entries[$0]?.keptSize ?? 0) > 0 }
      keptHead = 0
    }
  }

  private mutating func unkept(_ id: TaskID) {
    guard let size = entries[id]?.keptSize, size > 0 else { return }
    entries[id]?.keptSize = 0
    keptCount -= 1
    lineageBytes -= size
  }

  /// Lineage is released once nothing can ask for the task's returns again. Returns
  /// the arguments no kept spec names any more (their own lineage may go now).
  @discardableResult
  public mutating func release(_ id: TaskID) -> [ObjectID] {
    guard let e = entries[id], e.status != .pending else { return [] }
    unkept(id)
    entries[id] = nil
    var unpinned: [ObjectID] = []
    for a in e.argRefs {
      let n = (lineageRefs[a] ?? 1) - 1
      lineageRefs[a] = n > 0 ? n : nil
      if n <= 0 { unpinned.append(a) }
    }
    return unpinned
  }

  private func consumeRetry(_ e: inout Entry) -> Bool {
    if e.retriesLeft == 0 { return false }
    if e.retriesLeft > 0 { e.retriesLeft -= 1 }
    e.spec.attempt += 1
    return true
  }

  static func cancelledError(_ spec: Swiftray_TaskSpec) -> SwiftrayError {
    SwiftrayError(.taskCancelled, "Task \(spec.name) (\(TaskID(binary: spec.taskID).map { $0.hex } ?? "?")) was cancelled.")
  }
}
