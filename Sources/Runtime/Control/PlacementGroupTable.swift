import Foundation
import RuntimeProto

/// The ControlService's placement groups as a pure state machine: their bundles and
/// where each is reserved, names per namespace, and what to do when a group is created,
/// placed, refused, removed, or loses a node. Where bundles go is `BundlePlacement`'s
/// choice; reserving them (prepare, then commit, on each node) is the shell's.
///
/// Threading: a value type, owned by the ControlService under its lock.
public struct PlacementGroupTable: Sendable {
  public typealias Info = Swiftray_PlacementGroupInfo

  struct Entry: Sendable {
    var info: Info
    /// A prepare/commit round is out for it.
    var placing = false
    /// Warned that it cannot be placed now / with the nodes there are.
    var warnedWaiting = false
    var warnedInfeasible = false
    /// Its place in `order` (creation order): waiting groups are placed oldest first.
    var seq = 0
  }

  public enum Action: Sendable, Equatable {
    /// Try to place the groups still waiting (the shell runs one pass at a time).
    case placeWaiting
    /// Give back the group's bundles on these nodes (all of them there).
    case returnBundles(group: Data, nodes: [Data])
    /// Its info changed: wake waiters, write it to storage.
    case published(Data)
    /// Removed: its actors die, its tasks fail.
    case removed(Data)
    case warn(String)
  }

  public enum CreateError: Error, Sendable, Equatable {
    case nameTaken(String)
    case invalid(String)
  }

  private(set) var groups: [Data: Entry] = [:]
  private var names: [String: [String: Data]] = [:]
  private var order: [Data] = []
  private var nextSeq = 0
  /// The groups pending or rescheduling (placing or not): what `waiting` looks at, so a
  /// pass costs nothing per group already created or removed (it runs on every report
  /// and every removal, and the table keeps up to 2,000 removed groups).
  private var unsettled: Set<Data> = []
  private var removedCount = 0
  /// Every group's state changes (bounded), for `list cluster-events`.
  public private(set) var lifecycle = LifecycleLog()
  /// The groups holding bundles on each node (not removed): a node's report is answered
  /// with its bundles without a scan of every group.
  private var byNode: [Data: Set<Data>] = [:]

  public init() {}

  /// The bundles the cluster counts as reserved on `node`, by group: what a node holds
  /// beyond these it gives back (`LeaseQueue.bundlesReconciled`).
  public func bundles(on node: Data) -> [Data: [Int]] {
    var out: [Data: [Int]] = [:]
    for id in byNode[node] ?? [] {
      guard let i = groups[id]?.info, i.state != .removed else { continue }
      let held = i.bundleNodes.indices.filter { i.bundleNodes[$0] == node }
      if !held.isEmpty { out[id] = held }
    }
    return out
  }

  /// Keeps `byNode` in step with a group's bundle nodes (`old` before, `info` after).
  private mutating func reindex(_ id: Data, old: [Data], new info: Info?) {
    for n in Set(old) where !n.isEmpty { byNode[n]?.remove(id); if byNode[n]?.isEmpty == true { byNode[n] = nil } }
    guard let info, info.state != .removed else { return }
    for n in Set(info.bundleNodes) where !n.isEmpty { byNode[n, default: []].insert(id) }
  }

  public func info(_ id: Data) -> Info? { groups[id]?.info }
  public func named(_ name: String, namespace: String) -> Info? {
    names[namespace]?[name].flatMap { groups[$0]?.info }
  }
  /// Every group, oldest first.
  public var all: [Info] { order.compactMap { groups[$0]?.info } }

  /// Groups waiting to be placed, oldest first, that no round is placing now.
  public var waiting: [Data] {
    unsettled.compactMap { id in groups[id].flatMap { $0.placing ? nil : ($0.seq, id) } }
      .sorted { $0.0 < $1.0 }.map(\.1)
  }

  /// Files a new or restored entry at the end of `order`.
  private mutating func append(_ e: Entry) {
    var e = e
    let id = e.info.placementGroupID
    nextSeq += 1
    e.seq = nextSeq
    groups[id] = e
    order.append(id)
    if e.info.state == .pending || e.info.state == .rescheduling { unsettled.insert(id) }
  }

  // MARK: events

  public mutating func created(_ info: Info) -> Result<[Action], CreateError> {
    if groups[info.placementGroupID] != nil { return .success([]) }  // a retried create
    guard !info.bundles.isEmpty else { return .failure(.invalid("a placement group needs at least one bundle")) }
    guard BundlePlacement.Strategy(rawValue: info.strategy) != nil else {
      return .failure(.invalid("unknown placement strategy \(info.strategy)"))
    }
    if !info.name.isEmpty, names[info.namespace]?[info.name] != nil {
      return .failure(.nameTaken(info.name))
    }
    var i = info
    i.state = .pending
    lifecycle.changed("PLACEMENT_GROUP", i.placementGroupID, "PENDING", "\(i.bundles.count) bundle(s), \(i.strategy)")
    i.bundleNodes = Array(repeating: Data(), count: info.bundles.count)
    i.version = 1
    append(Entry(info: i))
    if !i.name.isEmpty { names[i.namespace, default: [:]][i.name] = i.placementGroupID }
    return .success([.published(i.placementGroupID), .placeWaiting])
  }

  /// A round starts for `id`: what to place (nil when it no longer waits).
  public mutating func placementStarted(_ id: Data) -> Info? {
    guard var e = groups[id], !e.placing, e.info.state == .pending || e.info.state == .rescheduling else { return nil }
    e.placing = true
    groups[id] = e
    return e.info
  }

  /// Every bundle is reserved and committed on `nodes` (one per bundle).
  public mutating func placed(_ id: Data, nodes: [Data]) -> [Action] {
    guard var e = groups[id] else { return [] }
    e.placing = false
    if e.info.state == .removed {
      // Removed while its round was out: what the round reserved goes back.
      groups[id] = e
      return [.returnBundles(group: id, nodes: Array(Set(nodes)))]
    }
    let old = e.info.bundleNodes
    e.info.bundleNodes = nodes
    e.info.state = .created
    unsettled.remove(id)
    lifecycle.changed("PLACEMENT_GROUP", id, "CREATED", "on \(Set(nodes).count) node(s)")
    e.info.detail = ""
    e.info.infeasible = false
    e.info.version += 1
    e.warnedWaiting = false
    e.warnedInfeasible = false
    groups[id] = e
    reindex(id, old: old, new: e.info)
    return [.published(id)]
  }

  /// The round did not place it: it waits (`detail` says why). `infeasible`: not with
  /// the nodes there are (warned about once).
  public mutating func placementFailed(_ id: Data, detail: String, infeasible: Bool) -> [Action] {
    guard var e = groups[id] else { return [] }
    e.placing = false
    guard e.info.state != .removed else {
      // Removed while its round was out: the bundles it kept from before go back.
      groups[id] = e
      let held = Array(Set(e.info.bundleNodes.filter { !$0.isEmpty }))
      return held.isEmpty ? [] : [.returnBundles(group: id, nodes: held)]
    }
    var actions: [Action] = []
    if e.info.detail != detail || e.info.infeasible != infeasible {
      e.info.detail = detail
      e.info.infeasible = infeasible
      e.info.version += 1
      actions.append(.published(id))
    }
    if infeasible && !e.warnedInfeasible {
      e.warnedInfeasible = true
      actions.append(.warn("Placement group \(Self.describe(e.info)) cannot be placed on the nodes of this cluster: "
        + "\(detail). It stays pending until nodes that fit it join."))
    } else if !infeasible && !e.warnedWaiting {
      e.warnedWaiting = true
      actions.append(.warn("Placement group \(Self.describe(e.info)) cannot be placed now: \(detail). "
        + "It stays pending until resources free up or nodes join."))
    }
    groups[id] = e
    return actions
  }

  /// `remove_placement_group`. Returns false for an unknown group.
  public mutating func removeRequested(_ id: Data) -> (found: Bool, actions: [Action]) {
    guard let e = groups[id] else { return (false, []) }
    guard e.info.state != .removed else { return (true, []) }
    return (true, remove(id, detail: "removed by remove_placement_group()"))
  }

  /// A node died: the bundles it held are placed again; the group is RESCHEDULING.
  public mutating func nodeDied(_ node: Data) -> [Action] {
    var actions: [Action] = []
    for id in byNode[node] ?? [] {
      guard var e = groups[id], e.info.state != .removed, e.info.bundleNodes.contains(node) else { continue }
      let old = e.info.bundleNodes
      e.info.bundleNodes = e.info.bundleNodes.map { $0 == node ? Data() : $0 }
      e.info.state = .rescheduling
      unsettled.insert(id)
      e.info.detail = "a node holding some of its bundles died; placing them again"
      lifecycle.changed("PLACEMENT_GROUP", id, "RESCHEDULING", e.info.detail)
      e.info.version += 1
      groups[id] = e
      reindex(id, old: old, new: e.info)
      actions.append(.published(id))
    }
    return actions.isEmpty ? [] : actions + [.placeWaiting]
  }

  /// The job that created them ended (its driver exited): its non-detached groups go.
  public mutating func jobFinished(_ job: Data) -> [Action] {
    removeNonDetached(detail: "the job that created it finished") { $0.creatorJobID == job }
  }

  /// The driver that created them died without saying so: as `jobFinished`.
  public mutating func creatorDied(_ creator: Data) -> [Action] {
    creator.isEmpty ? [] : removeNonDetached(detail: "the driver that created it exited") { $0.creatorID == creator }
  }

  private mutating func removeNonDetached(detail: String, where made: (Info) -> Bool) -> [Action] {
    var actions: [Action] = []
    for id in order {
      guard let e = groups[id], e.info.state != .removed, !e.info.detached, made(e.info) else { continue }
      actions += remove(id, detail: detail)
    }
    return actions
  }

  /// Takes up the groups a previous ControlService recorded (a head restart on Redis).
  public mutating func restore(_ infos: [Info]) -> [Action] {
    for i in infos.sorted(by: { $0.createdMs < $1.createdMs }) where groups[i.placementGroupID] == nil {
      append(Entry(info: i))
      reindex(i.placementGroupID, old: [], new: i)
      if !i.name.isEmpty && i.state != .removed { names[i.namespace, default: [:]][i.name] = i.placementGroupID }
    }
    return [.placeWaiting]
  }

  /// Forgets removed groups beyond the newest `keep` (a bounded table). Amortized: it
  /// scans only once twice as many are kept.
  public mutating func trimRemoved(keep: Int) {
    guard removedCount > 2 * keep else { return }
    let removed = order.filter { groups[$0]?.info.state == .removed }
    for id in removed.prefix(removed.count - keep) { groups[id] = nil }
    order.removeAll { groups[$0] == nil }
    removedCount = keep
  }

  // MARK: internals

  private mutating func remove(_ id: Data, detail: String) -> [Action] {
    guard var e = groups[id] else { return [] }
    let held = Array(Set(e.info.bundleNodes.filter { !$0.isEmpty }))
    e.info.state = .removed
    unsettled.remove(id)
    lifecycle.changed("PLACEMENT_GROUP", id, "REMOVED", detail)
    removedCount += 1
    e.info.detail = detail
    e.info.version += 1
    if !e.info.name.isEmpty, names[e.info.namespace]?[e.info.name] == id { names[e.info.namespace]?[e.info.name] = nil }
    groups[id] = e
    reindex(id, old: e.info.bundleNodes, new: nil)
    // A round out for it returns what it reserved when it ends (`placed`).
    let give: [Action] = held.isEmpty || e.placing ? [] : [.returnBundles(group: id, nodes: held)]
    return [.removed(id)] + give + [.published(id), .placeWaiting]
  }

  static func describe(_ i: Info) -> String {
    let hex = PlacementGroupID(binary: i.placementGroupID)?.hex ?? "?"
    return i.name.isEmpty ? hex : "'\(i.name)' (\(hex))"
  }
}
