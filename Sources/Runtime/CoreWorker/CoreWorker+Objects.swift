import Foundation
import RuntimeProto

/// Values: `put`, the node's shared-memory store (writes, pins, pulls), and freeing
/// stored copies where they live.
///
/// Threading: as the rest of CoreWorker; the blocking calls say so.
extension CoreWorker {
  public func put(_ object: Swiftray_RayObject) -> ObjectID {
    put(object, id: nextPutID())
  }

  func nextPutID() -> ObjectID {
    let running = runningTask
    return state.withLock { $0.nextPutID(running: running) }
  }

  /// Puts a value of `size` bytes into the node's shared-memory store: `write` fills
  /// the object's memory in place (one copy, by this process). Returns its ID with one
  /// local reference. Blocks while the store makes room; call with the GIL released.
  public func putStored(size: Int, nested: [ObjectID] = [], write: (UnsafeMutableRawBufferPointer) -> Void) throws(SwiftrayError) -> ObjectID {
    let id = nextPutID()
    var object = try writeStored(id, size: size, ownerPid: getpid(), write: write)
    object.nestedRefs = nested.map { n in Swiftray_ObjectReference.with { $0.objectID = Data(n.binary) } }
    return put(object, id: id)
  }

  /// Writes a task's return value into the node's store for its owner; returns what
  /// the owner keeps (a descriptor, not the bytes). Blocks like `putStored`.
  public func storeReturn(_ id: ObjectID, size: Int, owner: Swiftray_Address,
                          write: (UnsafeMutableRawBufferPointer) -> Void) throws(SwiftrayError) -> Swiftray_RayObject {
    // The store frees an object with its owner's process only when that process is on
    // this node: a pid from another machine means nothing here.
    let local = owner.nodeID.isEmpty || owner.nodeID == Data(options.nodeID.binary)
    return try writeStored(id, size: size, ownerPid: local ? owner.pid : 0, write: write)
  }

  func writeStored(_ id: ObjectID, size: Int, ownerPid: Int32,
                   write: (UnsafeMutableRawBufferPointer) -> Void) throws(SwiftrayError) -> Swiftray_RayObject {
    if let buf = try objectStore.create(id, size: size, ownerPid: ownerPid) {
      write(buf)
      try objectStore.seal(id)
    }  // else: a previous attempt of the same task stored it already
    var o = Swiftray_RayObject()
    o.storeSize = UInt64(size)
    o.storeNode = Data(options.nodeID.binary)
    o.storeAddress = objectStore.remoteAddress
    return o
  }

  func pinOnce(_ id: ObjectID, _ o: Swiftray_RayObject) throws(SwiftrayError) -> UnsafeRawBufferPointer {
    let remote = !o.storeNode.isEmpty && o.storeNode != Data(options.nodeID.binary)
    if remote, let why = state.withLock({ $0.deadNodes[o.storeNode] }) {
      throw SwiftrayError(.objectLost, "Object \(id.hex) was lost with its node (\(why)); its only copy was in that node's object store.")
    }
    if remote && o.storeAddress.isEmpty {
      throw SwiftrayError(.objectLost, "Object \(id.hex) lives on node \(NodeID(binary: o.storeNode)?.hex.prefix(12) ?? "?"), whose object store "
        + "other nodes cannot reach (it was started without networking).")
    }
    let buf = try objectStore.pin(id, pullFrom: remote ? o.storeAddress : "", size: Int(o.storeSize))
    guard let buf else {
      throw SwiftrayError(.objectFreed, "Object \(id.hex) is no longer in the object store of node "
        + "\(options.nodeID.hex.prefix(12)): it was freed after its last reference was dropped.")
    }
    if remote { state.withLock { $0.copyPinned(id) } }
    return buf
  }

  /// Frees owned stored objects where they live: the primary copy in its node's store
  /// (this node's, or another's through that node's NodeManager: a store's TCP port
  /// serves only chunk reads) and the copy this node may have pulled.
  func deleteStored(_ objects: [(ObjectID, Swiftray_RayObject)]) {
    guard !objects.isEmpty else { return }
    let me = Data(options.nodeID.binary)
    var elsewhere: [Data: [ObjectID]] = [:]
    for (id, o) in objects where !o.storeNode.isEmpty && o.storeNode != me && !o.storeAddress.isEmpty {
      elsewhere[o.storeNode, default: []].append(id)
    }
    objectStore.delete(objects.map(\.0))
    if !elsewhere.isEmpty { Task { await freeElsewhere(elsewhere) } }
  }

  /// Asks each node's NodeManager to free the objects in its store; a node not in the
  /// cached node table is looked up (once) at the ControlService. A node that is gone
  /// took its store with it, so errors are dropped.
  func freeElsewhere(_ byNode: [Data: [ObjectID]]) async {
    // A node that stopped answering holds nothing up.
    let options = ControlPlane.deadline(milliseconds: Self.freeDeadlineMs)
    var known = registrations.withLock { $0.nodeManagers }
    if byNode.keys.contains(where: { known[$0] == nil }),
      let nodes = try? await control.controlService.getAllNodes(Swiftray_GetAllNodesRequest(), options: options).nodes {
      known = [:]
      for n in nodes where !NodeTable.isDead(n) { known[n.nodeID] = n.nodeManagerAddress.isEmpty ? n.nodeManagerEndpoint : n.nodeManagerAddress }
      let table = known
      registrations.withLock { $0.nodeManagers = table }
    }
    await withTaskGroup(of: Void.self) { g in
      for (node, ids) in byNode {
        guard let address = known[node], let nm = nodeClient(address) else { continue }
        g.addTask {
          _ = try? await nm.nodeManagerService
            .freeObjects(Swiftray_FreeObjectsRequest.with { $0.objectIds = ids.map { Data($0.binary) } }, options: options)
        }
      }
    }
  }

  func put(_ object: Swiftray_RayObject, id: ObjectID) -> ObjectID {
    owner { $0.objectPut(object, id: id) }
    return id
  }

  /// How long freeing objects on another node may take before it is given up.
  static let freeDeadlineMs = 10_000
}
