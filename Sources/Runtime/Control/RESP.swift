import Foundation

/// The Redis protocol (RESP2) as pure functions: commands out as arrays of bulk
/// strings, replies in through an incremental parser (nil until a whole value is there).
public enum RESPValue: Sendable, Equatable {
  case simple(String)
  case error(String)
  case integer(Int64)
  case bulk(Data?)
  case array([RESPValue]?)
}

public enum RESP {
  public struct ParseError: Error, Equatable { public var message: String }

  /// Bounds on what a reply may claim (a corrupt or hostile server must not make this
  /// process trap or allocate without limit): Redis's own proto-max-bulk-len, and far
  /// more elements and nesting than any reply swiftray asks for.
  public static let maxBulk = 512 << 20
  public static let maxArray = 1 << 20
  public static let maxDepth = 8
  public static let maxLine = 64 << 10

  /// `parts` as a command: `*N\r\n` then `$len\r\n<bytes>\r\n` each.
  public static func command(_ parts: [Data]) -> [UInt8] {
    var out = Array("*\(parts.count)\r\n".utf8)
    for p in parts {
      out += Array("$\(p.count)\r\n".utf8)
      out += p
      out += [13, 10]
    }
    return out
  }

  public static func command(_ parts: String...) -> [UInt8] { command(parts.map { Data($0.utf8) }) }

  /// One value from the front of `bytes` and how many bytes it took; nil when the
  /// value is not complete yet. Throws on bytes that are not RESP.
  public static func parse(_ bytes: some RandomAccessCollection<UInt8>) throws(ParseError) -> (RESPValue, Int)? {
    var i = bytes.startIndex
    guard let v = try value(bytes, &i, depth: 0) else { return nil }
    return (v, bytes.distance(from: bytes.startIndex, to: i))
  }

  private static func line<C: RandomAccessCollection<UInt8>>(_ b: C, _ i: inout C.Index) throws(ParseError) -> String? {
    var j = i
    var n = 0
    while j != b.endIndex {
      n += 1
      if n > maxLine { throw ParseError(message: "a reply line longer than \(maxLine) bytes") }
      let n = b.index(after: j)
      if b[j] == 13, n != b.endIndex, b[n] == 10 {
        let s = String(decoding: b[i..<j], as: UTF8.self)
        i = b.index(after: n)
        return s
      }
      j = n
    }
    return nil
  }

  private static func value<C: RandomAccessCollection<UInt8>>(_ b: C, _ i: inout C.Index, depth: Int) throws(ParseError) -> RESPValue? {
    guard depth <= maxDepth else { throw ParseError(message: "a reply nested deeper than \(maxDepth)") }
    guard i != b.endIndex else { return nil }
    let type = b[i]
    var j = b.index(after: i)
    guard let head = try line(b, &j) else { return nil }
    switch type {
    case UInt8(ascii: "+"): i = j; return .simple(head)
    case UInt8(ascii: "-"): i = j; return .error(head)
    case UInt8(ascii: ":"):
      guard let n = Int64(head) else { throw ParseError(message: "bad integer \(head)") }
      i = j
      return .integer(n)
    case UInt8(ascii: "$"):
      guard let n = Int(head), n >= -1, n <= maxBulk else { throw ParseError(message: "bad bulk length \(head.prefix(40))") }
      if n < 0 { i = j; return .bulk(nil) }
      guard b.distance(from: j, to: b.endIndex) >= n + 2 else { return nil }
      let end = b.index(j, offsetBy: n)
      let data = Data(b[j..<end])
      i = b.index(end, offsetBy: 2)
      return .bulk(data)
    case UInt8(ascii: "*"):
      guard let n = Int(head), n >= -1, n <= maxArray else { throw ParseError(message: "bad array length \(head.prefix(40))") }
      if n < 0 { i = j; return .array(nil) }
      var items: [RESPValue] = []
      items.reserveCapacity(min(n, 1024))
      for _ in 0..<n {
        guard let v = try value(b, &j, depth: depth + 1) else { return nil }
        items.append(v)
      }
      i = j
      return .array(items)
    default:
      throw ParseError(message: "unexpected type byte \(type)")
    }
  }
}
