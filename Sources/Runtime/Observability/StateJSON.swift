import Foundation

/// A value of a state-API row: what `swiftray list` prints and `util.state` returns.
public indirect enum StateValue: Sendable, Equatable {
  case null
  case bool(Bool)
  case int(Int64)
  case double(Double)
  case string(String)
  case array([StateValue])
  /// Keys in the order given (rows keep Ray's column order).
  case object([(String, StateValue)])

  public static func == (a: StateValue, b: StateValue) -> Bool { a.json == b.json }

  /// How a filter compares it: Ray compares the printed value, case-insensitively for
  /// strings (`state=running` finds RUNNING).
  public var filterText: String {
    switch self {
    case .null: ""
    case .bool(let b): b ? "true" : "false"
    case .int(let i): String(i)
    case .double(let d): d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
    case .string(let s): s
    case .array, .object: json
    }
  }

  public var json: String {
    var out = ""
    StateJSON.write(self, to: &out)
    return out
  }

  public static func hex(_ d: Data) -> StateValue { d.isEmpty ? .null : .string(Hex.encode(d)) }
}

/// JSON out of `StateValue`s, written by hand into bytes: the head answers `list
/// tasks` for 100,000 rows, and Foundation's serializer boxes every value.
public enum StateJSON {
  public static func write(_ v: StateValue, to out: inout String) {
    var bytes: [UInt8] = []
    write(v, to: &bytes)
    out += String(decoding: bytes, as: UTF8.self)
  }

  public static func write(_ v: StateValue, to out: inout [UInt8]) {
    switch v {
    case .null: out += "null".utf8
    case .bool(let b): out += (b ? "true" : "false").utf8
    case .int(let i): out += String(i).utf8
    case .double(let d): out += (d.isFinite ? (d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)) : "null").utf8
    case .string(let s): string(s, to: &out)
    case .array(let a):
      out.append(UInt8(ascii: "["))
      for (i, x) in a.enumerated() {
        if i > 0 { out.append(UInt8(ascii: ",")); out.append(UInt8(ascii: " ")) }
        write(x, to: &out)
      }
      out.append(UInt8(ascii: "]"))
    case .object(let kv):
      out.append(UInt8(ascii: "{"))
      for (i, (k, x)) in kv.enumerated() {
        if i > 0 { out.append(UInt8(ascii: ",")); out.append(UInt8(ascii: " ")) }
        string(k, to: &out)
        out.append(UInt8(ascii: ":")); out.append(UInt8(ascii: " "))
        write(x, to: &out)
      }
      out.append(UInt8(ascii: "}"))
    }
  }

  public static func array(_ rows: [StateValue]) -> Data {
    var out: [UInt8] = []
    write(.array(rows), to: &out)
    return Data(out)
  }

  static func string(_ s: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    var s = s
    s.withUTF8 { buf in
      guard buf.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5c }) else { out.append(contentsOf: buf); return }
      for b in buf {
        switch b {
        case 0x22: out += "\\\"".utf8
        case 0x5c: out += "\\\\".utf8
        case 0x0a: out += "\\n".utf8
        case 0x0d: out += "\\r".utf8
        case 0x09: out += "\\t".utf8
        case ..<0x20: out += "\\u00".utf8; out.append(Hex.digit(b >> 4)); out.append(Hex.digit(b & 0xf))
        default: out.append(b)
        }
      }
    }
    out.append(UInt8(ascii: "\""))
  }
}

/// A state-API filter (`--filter KEY=VALUE`, `("state", "=", "RUNNING")`): checked at
/// the edge, so a query with an unknown key or operator is refused with the known ones.
public struct StateFilter: Sendable, Equatable {
  public enum Op: String, Sendable { case equal = "=", notEqual = "!=" }
  public var key: String
  public var op: Op
  public var value: String

  public init(key: String, op: Op, value: String) { self.key = key; self.op = op; self.value = value }

  public func matches(_ v: StateValue) -> Bool {
    let same = v.filterText.caseInsensitiveCompare(value) == .orderedSame
    return op == .equal ? same : !same
  }

  /// Every filter holds for the row's values (`field` reads one by key).
  public static func all(_ filters: [StateFilter], _ field: (String) -> StateValue) -> Bool {
    filters.allSatisfy { $0.matches(field($0.key)) }
  }
}

extension StateJSON {
  /// Reads JSON as the head writes it, keeping each object's key order (the columns').
  /// Nil for anything that is not JSON.
  public static func parse(_ data: Data) -> StateValue? {
    var p = Parser(bytes: Array(data))
    guard let v = p.value() else { return nil }
    p.skipSpace()
    return p.i == p.bytes.count ? v : nil
  }

  struct Parser {
    let bytes: [UInt8]
    var i = 0
    var depth = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    mutating func skipSpace() {
      while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0a || bytes[i] == 0x0d || bytes[i] == 0x09 { i += 1 }
    }

    mutating func literal(_ s: String, _ v: StateValue) -> StateValue? {
      let u = Array(s.utf8)
      guard i + u.count <= bytes.count, Array(bytes[i..<i + u.count]) == u else { return nil }
      i += u.count
      return v
    }

    mutating func value() -> StateValue? {
      skipSpace()
      guard i < bytes.count, depth < 64 else { return nil }
      switch bytes[i] {
      case UInt8(ascii: "n"): return literal("null", .null)
      case UInt8(ascii: "t"): return literal("true", .bool(true))
      case UInt8(ascii: "f"): return literal("false", .bool(false))
      case UInt8(ascii: "\""): return string().map(StateValue.string)
      case UInt8(ascii: "["):
        i += 1; depth += 1; defer { depth -= 1 }
        var out: [StateValue] = []
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
        while true {
          guard let v = value() else { return nil }
          out.append(v)
          skipSpace()
          guard i < bytes.count else { return nil }
          if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
          if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
          return nil
        }
      case UInt8(ascii: "{"):
        i += 1; depth += 1; defer { depth -= 1 }
        var out: [(String, StateValue)] = []
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
        while true {
          skipSpace()
          guard i < bytes.count, bytes[i] == UInt8(ascii: "\""), let k = string() else { return nil }
          skipSpace()
          guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return nil }
          i += 1
          guard let v = value() else { return nil }
          out.append((k, v))
          skipSpace()
          guard i < bytes.count else { return nil }
          if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
          if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
          return nil
        }
      default: return number()
      }
    }

    mutating func number() -> StateValue? {
      let start = i
      var isDouble = false
      while i < bytes.count, let c = Optional(bytes[i]),
        (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: "-") || c == UInt8(ascii: "+") || c == UInt8(ascii: ".")
          || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
        if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") { isDouble = true }
        i += 1
      }
      let text = String(decoding: bytes[start..<i], as: UTF8.self)
      if !isDouble, let n = Int64(text) { return .int(n) }
      return Double(text).map(StateValue.double)
    }

    mutating func string() -> String? {
      i += 1  // the opening quote
      var out = [UInt8]()
      while i < bytes.count {
        let c = bytes[i]
        i += 1
        if c == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
        guard c == UInt8(ascii: "\\") else { out.append(c); continue }
        guard i < bytes.count else { return nil }
        let e = bytes[i]
        i += 1
        switch e {
        case UInt8(ascii: "n"): out.append(0x0a)
        case UInt8(ascii: "r"): out.append(0x0d)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0c)
        case UInt8(ascii: "u"):
          guard i + 4 <= bytes.count, let code = UInt32(String(decoding: bytes[i..<i + 4], as: UTF8.self), radix: 16) else { return nil }
          i += 4
          out += Array(String(Unicode.Scalar(code).map(Character.init) ?? "\u{FFFD}").utf8)
        default: out.append(e)
        }
      }
      return nil
    }
  }
}
