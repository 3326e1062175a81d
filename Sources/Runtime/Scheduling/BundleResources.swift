import Foundation
import RuntimeProto

/// How a placement group's reserved bundles appear to the lease scheduler, as Ray does
/// it: a committed bundle `{"CPU": 2}` (index 1 of group G) takes 2 CPU from its node and
/// adds `CPU_group_1_G: 2` and `CPU_group_G: 2` (the group's wildcard, summed over its
/// bundles on the node), plus 1000 units of the markers `bundle_group_1_G` and
/// `bundle_group_G`. A task inside the group asks for the renamed resources (and 0.001
/// of a marker, so that a task asking for nothing still lands in a bundle), so routing,
/// queueing and capacity limits need nothing new. Pure functions.
public enum BundleResources {
  public static let markerCapacity: Int64 = 1000 * ResourceSet.unit
  /// What one task takes of a bundle's marker (Ray: 0.001).
  public static let markerPerTask: Int64 = ResourceSet.unit / 1000

  /// The resources a bundle adds to its node once committed.
  public static func committed(_ bundle: ResourceSet, group: String, index: Int) -> ResourceSet {
    var q: [String: Int64] = [:]
    for (k, v) in bundle.quantities {
      q["\(k)_group_\(index)_\(group)"] = v
      q["\(k)_group_\(group)"] = v
    }
    q["bundle_group_\(index)_\(group)"] = markerCapacity
    q["bundle_group_\(group)"] = markerCapacity
    return ResourceSet(fixedPoint: q)
  }

  /// What a task or actor of `shape` asks for inside bundle `index` of `group` (-1: any
  /// of its bundles). A given bundle's resources are asked for under both names, so
  /// that the group's wildcard counts what its bundles' tasks hold.
  public static func inside(_ shape: ResourceSet, group: String, index: Int) -> ResourceSet {
    var q: [String: Int64] = [:]
    for (k, v) in shape.quantities {
      q["\(k)_group_\(group)"] = v
      if index >= 0 { q["\(k)_group_\(index)_\(group)"] = v }
    }
    q["bundle_group_\(group)"] = markerPerTask
    if index >= 0 { q["bundle_group_\(index)_\(group)"] = markerPerTask }
    return ResourceSet(fixedPoint: q)
  }

  /// The group a renamed resource belongs to (its hex id), or nil for a plain resource.
  public static func group(of name: String) -> String? {
    guard name.contains("_group_"), name.count > 33 else { return nil }
    let hex = name.suffix(32)
    guard hex.allSatisfy(\.isHexDigit), name.dropLast(32).hasSuffix("_") else { return nil }
    return String(hex)
  }

  /// The groups a shape asks for (at most one in practice).
  public static func groups(in shape: ResourceSet) -> Set<String> {
    Set(shape.quantities.keys.compactMap(group(of:)))
  }

  /// Why a request for `needs` (renamed) can never run in the group whose bundles are
  /// `bundles`: the bundle it names, or every bundle, is too small. nil when it fits.
  public static func neverFits(_ needs: ResourceSet, bundles: [ResourceSet]) -> String? {
    let want = plain(needs)
    let index = needs.quantities.keys.lazy.compactMap(bundleIndex(of:)).first
    if let index {
      guard index < bundles.count else { return "the placement group has no bundle \(index) (it has \(bundles.count))" }
      return bundles[index].contains(want) ? nil
        : "it asks for \(want), more than bundle \(index) of its placement group holds (\(bundles[index]))"
    }
    return bundles.contains { $0.contains(want) } ? nil
      : "it asks for \(want), more than any bundle of its placement group holds (\(bundles.map(\.description).joined(separator: ", ")))"
  }

  /// The bundle index in a renamed resource (`CPU_group_2_<hex>` → 2), nil for the
  /// group's wildcard or a plain name.
  static func bundleIndex(of name: String) -> Int? {
    guard group(of: name) != nil, let r = name.range(of: "_group_") else { return nil }
    let middle = name[r.upperBound...].dropLast(33)
    return Int(middle)
  }

  /// The shape without its bundle markers, in the user's names (for messages).
  public static func plain(_ shape: ResourceSet) -> ResourceSet {
    var q: [String: Int64] = [:]
    for (k, v) in shape.quantities where !k.hasPrefix("bundle_group_") {
      guard let r = k.range(of: "_group_") else { q[k] = v; continue }
      // Each amount appears under the wildcard (and the bundle's name): count it once.
      if group(of: k) != nil && bundleIndex(of: k) == nil { q[String(k[..<r.lowerBound])] = v }
    }
    return ResourceSet(fixedPoint: q)
  }
}

extension BundleResources {
  /// The answer to a lease request inside placement group `group` that the receiving
  /// node cannot fit, from the head's record of the group (nil: the head does not know
  /// it): removed; not registered or not placed yet (ask again shortly: its creator
  /// registers it in the background, and a process it was passed to may ask first);
  /// too small for the request. Nil when the group is placed and could hold it (the
  /// request is routed to its bundles' node).
  public static func leaseAnswer(group: String, needs: ResourceSet,
                                 info: Swiftray_PlacementGroupInfo?) -> Swiftray_RequestWorkerLeaseReply? {
    var r = Swiftray_RequestWorkerLeaseReply()
    guard let info else {
      r.status = .placementGroupPending
      r.detail = "its placement group \(group) is not registered yet"
      return r
    }
    switch info.state {
    case .removed:
      r.status = .placementGroupRemoved
      r.detail = "its placement group \(group) was removed"
      return r
    case .created:
      guard let why = neverFits(needs, bundles: info.bundles.map { ResourceSet(proto: $0) }) else { return nil }
      r.status = .infeasible
      r.detail = why
      return r
    default:
      r.status = .placementGroupPending
      r.detail = "its placement group \(group) is not placed yet"
      return r
    }
  }
}
