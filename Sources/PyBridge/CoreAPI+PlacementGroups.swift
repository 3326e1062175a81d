import CPython
import Foundation
import Runtime
import RuntimeProto

/// The placement group calls of `swiftray._core`. Threading: called with the GIL held;
/// every blocking call releases it.
extension CoreAPI {
  static let placementGroupMethods: [CoreModule.Method] = [
    .init(name: "create_placement_group", fn: createPlacementGroup,
          doc: "create_placement_group(bundles: [dict], strategy, name, namespace, detached) -> id bytes"),
    .init(name: "remove_placement_group", fn: removePlacementGroup, doc: "remove_placement_group(id): returns once the head removed it"),
    .init(name: "placement_group_registered", fn: placementGroupRegistered,
          doc: "placement_group_registered(id): waits until the head has this process's registration of the group"),
    .init(name: "get_placement_group", fn: getPlacementGroup,
          doc: "get_placement_group(id | None, name, namespace) -> dict | None"),
    .init(name: "placement_group_table", fn: placementGroupTable, doc: "placement_group_table() -> [dict]"),
    .init(name: "wait_placement_group", fn: waitPlacementGroup,
          doc: "wait_placement_group(id, timeout_seconds) -> dict | None (its state when created, removed, infeasible or timed out)"),
    .init(name: "placement_group_ready", fn: placementGroupReady,
          doc: "placement_group_ready(id, packed_value) -> object id that resolves to the value once the group is created"),
    .init(name: "current_placement_group", fn: currentPlacementGroup,
          doc: "current_placement_group() -> (id bytes, capture_child_tasks) | None"),
  ]

  static func groupID(_ o: PyPtr?) -> PlacementGroupID? {
    guard let b = Py.toBytes(o), let id = PlacementGroupID(binary: b) else {
      if PyErr_Occurred() == nil { PyErr_SetString(sr_ExcTypeError(), "not a placement group id (expected 16 bytes)") }
      return nil
    }
    return id
  }

  static let groupStates: [Swiftray_PlacementGroupInfo.State: String] = [
    .pending: "PENDING", .created: "CREATED", .removed: "REMOVED", .rescheduling: "RESCHEDULING",
  ]

  static func resourceDict(_ shape: Swiftray_ResourceShape) -> PyPtr {
    let r = ResourceSet(proto: shape)
    return Py.dict(r.quantities.keys.sorted().map { ($0, PyFloat_FromDouble(r.units($0))) })
  }

  /// Ray's `placement_group_table()` entry, plus `detail` and `infeasible`.
  static func groupDict(_ i: Swiftray_PlacementGroupInfo) -> PyPtr {
    let bundles = PyDict_New()!
    let nodes = PyDict_New()!
    for (k, b) in i.bundles.enumerated() {
      let key = Py.int(k)
      let v = resourceDict(b)
      PyDict_SetItem(bundles, key, v)
      sr_DecRef(v)
      if k < i.bundleNodes.count, let node = NodeID(binary: i.bundleNodes[k]) {
        let n = Py.str(node.hex)
        PyDict_SetItem(nodes, key, n)
        sr_DecRef(n)
      }
      sr_DecRef(key)
    }
    let state = groupStates[i.state] ?? "UNKNOWN"
    return Py.dict([
      ("placement_group_id", Py.str(PlacementGroupID(binary: i.placementGroupID)?.hex ?? "")),
      ("name", Py.str(i.name)), ("namespace", Py.str(i.namespace)), ("strategy", Py.str(i.strategy)),
      ("state", Py.str(state)), ("bundles", bundles), ("bundles_to_node_id", nodes),
      ("detached", Py.bool(i.detached)), ("detail", Py.str(i.detail)), ("infeasible", Py.bool(i.infeasible)),
      ("stats", Py.dict([("scheduling_state", Py.str(i.infeasible ? "INFEASIBLE" : state == "CREATED" ? "FINISHED" : state))])),
    ])
  }

  static let createPlacementGroup: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(5, "create_placement_group"), let s = session(), let items = Py.sequence(args[0]),
      let strategy = Py.toString(args[1]), let name = Py.toString(args[2]), let ns = Py.toString(args[3])
    else { return nil }
    var bundles: [ResourceSet] = []
    for it in items {
      guard let d = Py.numberDict(it) else { return nil }
      bundles.append(ResourceSet(units: d))
    }
    let detached = PyObject_IsTrue(args[4]) == 1
    return blocking("CreatePlacementGroup", {
      try s.core.createPlacementGroup(bundles: bundles, strategy: strategy, name: name, namespace: ns, detached: detached)
    }, then: { Py.bytes($0.binary) })
  }

  static let removePlacementGroup: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "remove_placement_group"), let s = session(), let id = groupID(args[0]) else { return nil }
    return blocking("RemovePlacementGroup", { try s.core.removePlacementGroup(id) }, then: { _ in Py.none })
  }

  static let placementGroupRegistered: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "placement_group_registered"), let s = session(), let id = groupID(args[0]) else { return nil }
    withoutGIL { s.core.awaitPlacementGroupRegistered(id) }
    return Py.none
  }

  static let getPlacementGroup: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(3, "get_placement_group"), let s = session(), let name = Py.toString(args[1]),
      let ns = Py.toString(args[2]) else { return nil }
    var id: PlacementGroupID?
    if !Py.isNone(args[0]) { guard let g = groupID(args[0]) else { return nil }; id = g }
    return blocking("GetPlacementGroup", { try s.core.placementGroup(id: id, name: name, namespace: ns) },
                    then: { $0.map(groupDict) ?? Py.none })
  }

  static let placementGroupTable: CoreModule.FastFn = { _, _, _ in
    guard let s = session() else { return nil }
    return blocking("GetAllPlacementGroups", { try s.core.allPlacementGroups() }, then: { Py.list($0.map(groupDict)) })
  }

  static let waitPlacementGroup: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "wait_placement_group"), let s = session(), let id = groupID(args[0]),
      let timeout = timeoutNanos(args[1]) else { return nil }
    return blocking("WaitPlacementGroup", { try s.core.waitPlacementGroup(id, timeoutNanos: timeout ?? UInt64(Int64.max)) },
                    then: { $0.map(groupDict) ?? Py.none })
  }

  static let placementGroupReady: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "placement_group_ready"), let s = session(), let id = groupID(args[0]) else { return nil }
    switch StoredValues.place(s.core, args[1]) {
    case .inline(let v)?: return Py.bytes(s.core.placementGroupReady(id, value: v).binary)
    case .stored(let stored)?:
      s.core.removeLocalRef(stored)
      return Py.raise(sr_ExcValueError(), "the ready() value must be small")
    case nil: return nil
    }
  }

  static let currentPlacementGroup: CoreModule.FastFn = { _, _, _ in
    guard let s = session() else { return nil }
    guard case .placementGroup(let g, _, let capture)? = s.core.currentStrategy else { return Py.none }
    return Py.tuple([Py.bytes(g.binary), Py.bool(capture)])
  }
}
