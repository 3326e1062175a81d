import DequeModule
import Foundation
import RuntimeProto

/// The head's table of nodes: who registered, what each last reported free, who is
/// dead and why, and which need to register again after a head restart. A node
/// declared dead stays dead (it must register anew); dead entries beyond
/// `deadNodesKept` leave the table, oldest first, so nodes that come and go (or a peer
/// registering made-up ones) cannot grow it. Health checks (`NodeHealth`) decide deaths.
///
/// Threading: a value type, owned by the ControlService under its lock.
public struct NodeTable: Sendable {
  /// Dead nodes kept (Ray keeps `maximum_gcs_dead_node_cached_count` = 1000).
  public static let deadNodesKept = 1000
  /// Why a node the head knew before its restart counts as dead until it registers again.
  public static let awaitingRegistration = "it has not registered again since the head restarted"
  /// Pending demand kept per node report.
  public static let demandKept = 100

  public private(set) var nodes: [Data: Swiftray_NodeInfo] = [:]
  var deadOrder: Deque<Data> = []
  /// Per node, how the head's view of its bundles relates to its reports (`BundleSync`).
  var bundleSync: [Data: BundleSync] = [:]

  /// While the head changes bundles on a node (prepare, commit, return) its view of
  /// that node runs ahead of the node's reports: a report taken before the node applied
  /// the change would put back what the head already moved (a removed group's resources
  /// seen as still held, a committed bundle's resources as missing) until the next
  /// report. So, per node: the changes in flight (no report's resources are taken
  /// meanwhile), and the node's bundle epoch in the last answer the head had (a report
  /// of an older epoch is stale).
  struct BundleSync: Sendable, Equatable {
    var inFlight = 0
    var epochSeen: UInt64 = 0
  }
  public var health: NodeHealth
  /// Nodes joining and dying (bounded), for `list cluster-events`.
  public private(set) var lifecycle = LifecycleLog()

  public init(health: NodeHealth) { self.health = health }

  public subscript(_ id: Data) -> Swiftray_NodeInfo? { nodes[id] }

  /// Every node, in the order they started.
  public var all: [Swiftray_NodeInfo] { nodes.values.sorted { $0.startTimeMs < $1.startTimeMs } }

  /// How the head reaches a node's NodeManager: TCP when it has it.
  public static func address(of node: Swiftray_NodeInfo) -> String {
    node.nodeManagerAddress.isEmpty ? node.nodeManagerEndpoint : node.nodeManagerAddress
  }

  /// The node as storage keeps it: its resources are soft state, reported anew.
  public static func durable(_ node: Swiftray_NodeInfo) -> Swiftray_NodeInfo {
    var d = node
    d.available = d.total
    d.pendingDemand = []
    return d
  }

  /// A node registered (again); returns it as it is now (to persist).
  public mutating func registered(_ node: Swiftray_NodeInfo) -> Swiftray_NodeInfo {
    var node = node
    node.alive = true
    lifecycle.changed("NODE", node.nodeID, "ALIVE", "registered at \(node.ipAddress)")
    nodes[node.nodeID] = node
    // Registering (again) starts its bundle epochs anew; changes still in flight stay
    // counted until they end.
    bundleSync[node.nodeID]?.epochSeen = 0
    health.nodeRegistered(node.nodeID)
    return node
  }

  /// Whether drivers and nodes should count `node` (as the head lists it) dead: a node
  /// only waiting to register again after a head restart is not dead yet — treating it
  /// so would rebuild its objects and fail its actors while it is alive and well.
  public static func isDead(_ node: Swiftray_NodeInfo) -> Bool {
    !node.alive && node.deathDetail != awaitingRegistration
  }

  /// The object stores a node may pull from, given the head's list: those of nodes not
  /// dead (`isDead`). A node only waiting to register again after a head restart keeps
  /// its store in the list — dropping it would refuse pulls from a live node while the
  /// head recovers, once the pulls' patience ran out (found by a CI run of the
  /// head-restart test).
  public static func pullableStores(_ nodes: [Swiftray_NodeInfo]) -> Set<String> {
    Set(nodes.lazy.filter { !isDead($0) && !$0.storeAddress.isEmpty }.map(\.storeAddress))
  }


  /// A node the head knew before it restarted (from storage): not alive until it
  /// registers again, but not dead either (`isDead`); health checks start at once, so
  /// one that died meanwhile is declared dead as any other (its actors restart, its
  /// bundles move, owners rebuild its objects), while a live one still reconnecting is
  /// left alone.
  public mutating func restored(_ node: Swiftray_NodeInfo) {
    guard nodes[node.nodeID] == nil else { return }
    guard node.alive else {
      // Dead before the restart: still listed as dead, so a node that had not yet seen
      // the death in the old head's list learns it from the new one's.
      nodes[node.nodeID] = node
      deadOrder.append(node.nodeID)
      while deadOrder.count > Self.deadNodesKept, let oldest = deadOrder.popFirst() {
        if nodes[oldest]?.alive == false { nodes[oldest] = nil }
      }
      return
    }
    var n = node
    n.alive = false
    n.deathDetail = Self.awaitingRegistration
    nodes[n.nodeID] = n
    health.nodeRegistered(n.nodeID)
  }

  /// What the head answers a node's report.
  public enum ReportVerdict: Equatable, Sendable {
    /// Taken: the node is alive in the table.
    case taken
    /// The head does not know the node (or knew it only before a restart): register.
    case register
    /// The node was declared dead (`detail` says why): it is fenced — it must stop its
    /// workers and exit, not act on the state it had (its actors run elsewhere now,
    /// its objects were rebuilt elsewhere, its bundles moved).
    case fenced(detail: String)
  }

  /// A node's report of its resources; a node declared dead stays dead.
  /// Its resources are not taken while the head changes bundles there or when the
  /// report predates a change the head saw answered (`BundleSync`); its demand is.
  public mutating func reported(_ id: Data, available: Swiftray_ResourceShape, total: Swiftray_ResourceShape?,
                                demand: [Swiftray_ResourceShape], bundleEpoch: UInt64 = 0,
                                store: (used: UInt64, capacity: UInt64) = (0, 0)) -> ReportVerdict {
    guard let n = nodes[id] else { return .register }
    guard n.alive else { return n.deathDetail == Self.awaitingRegistration ? .register : .fenced(detail: n.deathDetail) }
    let sync = bundleSync[id] ?? BundleSync()
    if sync.inFlight == 0 && bundleEpoch >= sync.epochSeen {
      nodes[id]?.available = available
      if let total { nodes[id]?.total = total }
      if bundleEpoch > sync.epochSeen { bundleSync[id, default: BundleSync()].epochSeen = bundleEpoch }
    }
    nodes[id]?.pendingDemand = Array(demand.prefix(Self.demandKept))
    nodes[id]?.objectStoreUsed = store.used
    nodes[id]?.objectStoreCapacity = store.capacity
    return .taken
  }

  /// The head starts changing bundles on `id` (a call to its NodeManager follows); each
  /// start is ended once by `bundleChangeEnded`.
  public mutating func bundleChangeStarted(_ id: Data) {
    guard nodes[id] != nil else { return }
    bundleSync[id, default: BundleSync()].inFlight += 1
  }

  /// A change started with `bundleChangeStarted` ended: answered with the node's bundle
  /// epoch after it, or 0 when it failed or was never sent (the node's next report is
  /// then taken as it is).
  public mutating func bundleChangeEnded(_ id: Data, epoch: UInt64) {
    guard var sync = bundleSync[id] else { return }
    sync.inFlight = max(0, sync.inFlight - 1)
    sync.epochSeen = max(sync.epochSeen, epoch)
    bundleSync[id] = sync
  }

  /// Changes in flight on `id` (for tests and `swiftray status`).
  public func bundleChangesInFlight(_ id: Data) -> Int { bundleSync[id]?.inFlight ?? 0 }

  /// The cluster declares a node dead: returns it as it is now (to persist), nil when
  /// unknown. Its health checks stop; the oldest dead beyond the bound are forgotten.
  public mutating func died(_ id: Data, detail: String) -> Swiftray_NodeInfo? {
    guard var n = nodes[id] else { return nil }
    n.alive = false
    n.deathDetail = detail
    lifecycle.changed("NODE", id, "DEAD", detail)
    nodes[id] = n
    health.nodeRemoved(id)
    deadOrder.append(id)
    while deadOrder.count > Self.deadNodesKept, let oldest = deadOrder.popFirst() {
      if nodes[oldest]?.alive == false { nodes[oldest] = nil; bundleSync[oldest] = nil }
    }
    return n
  }

  /// Changes `id`'s resources in place: each shape is taken out of its node while it
  /// changes, so a change costs what it touches, not a copy of every name the node has
  /// (a copy left in the table would make the first change copy the whole map).
  mutating func changeResources(_ id: Data, _ change: (_ total: inout Swiftray_ResourceShape,
                                                       _ available: inout Swiftray_ResourceShape) -> Void) {
    guard var n = nodes.removeValue(forKey: id) else { return }
    var total = n.total, available = n.available
    n.clearTotal()
    n.clearAvailable()
    change(&total, &available)
    n.total = total
    n.available = available
    nodes[id] = n
  }

  /// The head's view of a node's resources changed before its next report (bundles
  /// committed or given back there).
  public mutating func resourcesChanged(_ id: Data, total: Swiftray_ResourceShape, available: Swiftray_ResourceShape) {
    nodes[id]?.total = total
    nodes[id]?.available = available
  }

  /// Every node as `NodePicker` sees it.
  public var views: [NodePicker.NodeView] {
    nodes.values.map { n in
      NodePicker.NodeView(id: n.nodeID, address: Self.address(of: n), total: ResourceSet(proto: n.total),
                          available: ResourceSet(proto: n.available), alive: n.alive, startTimeMs: n.startTimeMs)
    }
  }
}
