import Foundation
import RuntimeProto

/// The references one process holds, as the state API lists them (`swiftray list
/// objects`): Ray's reference types from the counts the ReferenceTable keeps. Pure.
public enum ObjectListing {
  /// Most rows one process returns.
  public static let maxRows = 100_000

  /// Ray's name for why a reference is alive here, most telling first.
  public static func referenceType(_ r: ReferenceTable.Reference) -> String {
    if r.localRefs > 0 { return "LOCAL_REFERENCE" }
    if r.submittedTaskRefs > 0 { return "USED_BY_PENDING_TASK" }
    if r.contained > 0 { return "CAPTURED_IN_OBJECT" }
    // Kept for borrowers elsewhere or because it escaped into a pickled value.
    return "PINNED_IN_MEMORY"
  }

  /// At most `limit` rows (in id order, so a cut is stable) from a snapshot of a
  /// process's references and values, and how many references there are.
  public static func rows(refs: [ObjectID: ReferenceTable.Reference], values: ObjectTable, limit: Int) -> (rows: [Swiftray_ObjectRefRow], total: Int) {
    let n = max(0, min(limit, maxRows))
    let chosen = refs.count <= n ? Array(refs.keys) : Array(refs.keys.sorted { $0.binary.lexicographicallyPrecedes($1.binary) }.prefix(n))
    let rows = chosen.map { id -> Swiftray_ObjectRefRow in
      let r = refs[id]!
      let value = values[id]
      return .with { row in
        row.objectID = Data(id.binary)
        row.size = value.map { $0.storeSize > 0 ? Int64(clamping: $0.storeSize) : Int64($0.data.count) } ?? -1
        row.referenceType = referenceType(r)
        row.taskStatus = value != nil ? "FINISHED" : r.owned ? "PENDING" : "NIL"
        row.owned = r.owned
        row.borrowers = Int32(clamping: r.borrowers.count)
        row.inStore = (value?.storeSize ?? 0) > 0
      }
    }
    return (rows, refs.count)
  }
}
