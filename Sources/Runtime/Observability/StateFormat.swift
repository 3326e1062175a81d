import Foundation

/// How `swiftray list|get|summary` print rows: Ray's table, YAML or JSON.
public enum StateFormat: String, CaseIterable, Sendable {
  case table, json, yaml

  /// Rows as this format. A table has a column per key of the first row (keys in
  /// order), values printed flat (nested ones as JSON).
  public func render(_ rows: [StateValue]) -> String {
    switch self {
    case .json: return StateValue.array(rows).json + "\n"
    case .yaml: return rows.map { "-" + Self.yaml($0, indent: 2, inList: true) }.joined()
    case .table: return Self.table(rows)
    }
  }

  public static func cell(_ v: StateValue) -> String {
    switch v {
    case .null: ""
    case .string(let s): s
    default: v.filterText
    }
  }

  static func table(_ rows: [StateValue]) -> String {
    guard case .object(let first)? = rows.first else { return "" }
    let keys = first.map(\.0)
    let cells: [[String]] = rows.map { r in
      guard case .object(let kv) = r else { return keys.map { _ in "" } }
      return keys.map { k in
        let c = cell(kv.first { $0.0 == k }?.1 ?? .null)
        return c.count > 60 ? String(c.prefix(57)) + "..." : c
      }
    }
    var widths = keys.map { $0.count }
    for row in cells { for (i, c) in row.enumerated() { widths[i] = max(widths[i], c.count) } }
    func line(_ cs: [String]) -> String {
      cs.enumerated().map { i, c in c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        .replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
    }
    var out = line(keys.map { $0.uppercased() }) + "\n"
    for row in cells { out += line(row) + "\n" }
    return out
  }

  /// YAML for a value; `inList`: it follows a "- " on the same line.
  public static func yaml(_ v: StateValue, indent: Int, inList: Bool = false) -> String {
    let pad = String(repeating: " ", count: indent)
    switch v {
    case .object(let kv) where !kv.isEmpty:
      var out = ""
      for (i, (k, x)) in kv.enumerated() {
        let lead = inList && i == 0 ? " " : pad
        out += lead + yamlKey(k) + ":" + nested(x, indent: indent + 2)
      }
      return out
    case .array(let a) where !a.isEmpty:
      return a.map { pad + "-" + yaml($0, indent: indent + 2, inList: true) }.joined()
    default:
      return (inList ? " " : pad) + scalar(v) + "\n"
    }
  }

  static func nested(_ v: StateValue, indent: Int) -> String {
    switch v {
    case .object(let kv) where !kv.isEmpty: "\n" + yaml(v, indent: indent)
    case .array(let a) where !a.isEmpty: "\n" + yaml(v, indent: indent)
    default: " " + scalar(v) + "\n"
    }
  }

  static func scalar(_ v: StateValue) -> String {
    switch v {
    case .null: "null"
    case .object: "{}"
    case .array: "[]"
    case .string(let s):
      s.isEmpty || s.contains(where: { ":#{}[],&*?|<>=!%@`'\"\n\t\\".contains($0) }) || s.first == " " || s.last == " "
        || ["true", "false", "null", "yes", "no", "~"].contains(s.lowercased()) || Double(s) != nil ? v.json : s
    default: v.filterText
    }
  }

  static func yamlKey(_ k: String) -> String { scalar(.string(k)) }
}
