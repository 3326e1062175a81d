/// A node's labels from `--labels k=v,k2=v2` (Ray's node labels, as KubeRay passes them
/// from a group's `rayStartParams`): checked as Ray checks them, bounded in count and size.
///
/// Threading: a pure function.
public enum NodeLabels {
  public static let maxLabels = 64
  public static let maxLength = 63

  /// The labels of `text` (empty text: none), or an error that says which one is wrong.
  public static func parse(_ text: String) throws(SwiftrayError) -> [String: String] {
    var out: [String: String] = [:]
    for item in text.split(separator: ",", omittingEmptySubsequences: true) {
      let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
      guard pair.count == 2 else { throw bad("'\(item)' is not KEY=VALUE") }
      let key = pair[0].trimmingSpaces, value = pair[1].trimmingSpaces
      guard validKey(key) else {
        throw bad("'\(key)' is not a label key: an optional DNS prefix and '/', then 1-\(maxLength) letters, digits, '-', '_' or '.', "
          + "starting and ending with a letter or digit")
      }
      guard value.isEmpty || validName(value) else {
        throw bad("the value '\(value)' of '\(key)' must be 0-\(maxLength) letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
      }
      guard key.hasPrefix("ray.io/") == false else { throw bad("keys under ray.io/ are set by the system, not by --labels ('\(key)')") }
      guard out[key] == nil else { throw bad("'\(key)' is given twice") }
      out[key] = value
      guard out.count <= maxLabels else { throw bad("at most \(maxLabels) labels") }
    }
    return out
  }

  /// True when `labels` (a peer's) are within the bounds `parse` keeps.
  public static func valid(_ labels: [String: String]) -> Bool {
    labels.count <= maxLabels && labels.allSatisfy { validKey($0.key) && ($0.value.isEmpty || validName($0.value)) }
  }

  static func bad(_ why: String) -> SwiftrayError {
    SwiftrayError(.invalidArgument, "--labels must be KEY=VALUE pairs separated by commas, e.g. 'zone=us-east-1a,tier=gpu': \(why)")
  }

  static func validKey(_ key: String) -> Bool {
    let parts = key.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
    if parts.count == 2 {
      let prefix = parts[0]
      guard !prefix.isEmpty, prefix.utf8.count <= 253,
        prefix.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ validName(String($0)) && !$0.contains("_") })
      else { return false }
      return validName(String(parts[1]))
    }
    return validName(key)
  }

  /// 1-63 of [A-Za-z0-9_.-], alphanumeric at both ends (Kubernetes' label names).
  static func validName(_ s: String) -> Bool {
    let u = Array(s.utf8)
    func alnum(_ c: UInt8) -> Bool { (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) }
    guard (1...maxLength).contains(u.count), alnum(u[0]), alnum(u[u.count - 1]) else { return false }
    return u.allSatisfy { alnum($0) || $0 == 45 || $0 == 95 || $0 == 46 }
  }
}

extension Substring {
  fileprivate var trimmingSpaces: String { String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed()) }
}
