/// The driver's deduplication of its workers' output, as Ray's: when several worker
/// processes print the same line (the same words, numbers aside) within the window,
/// the first is printed at once and the others are counted, then summed up in one line
/// `… [repeated 12x across cluster]` when the window ends. A process repeating its own
/// line is never held back (a progress loop stays visible), nor is a line of numbers
/// only. Pure: time passed in; at most `maxPatterns` patterns are held (past them lines
/// pass through).
///
/// Threading: a value; the driver keeps it behind a lock.
public struct LogDedup: Sendable {
  public struct Line: Sendable, Equatable {
    public var pid: Int32
    public var text: String
    public var isErr: Bool
    public init(pid: Int32, text: String, isErr: Bool) { self.pid = pid; self.text = text; self.isErr = isErr }
    /// As the driver prints it.
    public var printed: String { "(pid=\(pid)) \(text)" }
  }

  struct Pattern {
    var firstSeen: UInt64
    var origin: Int32
    var repeats = 0
    var last: Line
  }

  public static let maxPatterns = 10_000
  public let windowNs: UInt64
  public let enabled: Bool
  private var patterns: [String: Pattern] = [:]

  public init(windowNs: UInt64 = 5_000_000_000, enabled: Bool = true) { self.windowNs = windowNs; self.enabled = enabled }

  /// The line with every word that holds a digit made the same (empty: nothing but numbers).
  public static func key(_ text: String) -> String {
    var out = "", word = "", hasDigit = false, hasText = false
    func end() {
      if hasDigit { out += "<n>" } else { out += word; if !word.isEmpty { hasText = true } }
      word = ""; hasDigit = false
    }
    for c in text {
      if c == " " || c == "\t" { end(); out.append(c) } else { word.append(c); if c.isNumber { hasDigit = true } }
    }
    end()
    return hasText ? out : ""
  }

  /// Lines arrived from `pid`: those to print now.
  public mutating func arrived(_ lines: [Line], now: UInt64) -> [Line] {
    guard enabled else { return lines }
    var out: [Line] = []
    for line in lines {
      let k = Self.key(line.text)
      if k.isEmpty { out.append(line); continue }
      if var p = patterns[k], now &- p.firstSeen < windowNs {
        if p.origin == line.pid {
          out.append(line)  // its own repeat: shown
        } else {
          p.repeats += 1
          p.last = line
          patterns[k] = p
        }
        continue
      }
      if let ended = patterns.removeValue(forKey: k), ended.repeats > 0 { out.append(Self.summary(ended)) }
      if patterns.count < Self.maxPatterns { patterns[k] = Pattern(firstSeen: now, origin: line.pid, last: line) }
      out.append(line)
    }
    return out
  }

  /// The summaries of the windows that ended by `now` (all of them with `.max`).
  public mutating func windowsEnded(now: UInt64) -> [Line] {
    var out: [Line] = []
    for (k, p) in patterns where now &- p.firstSeen >= windowNs || now == .max {
      patterns[k] = nil
      if p.repeats > 0 { out.append(Self.summary(p)) }
    }
    return out
  }

  static func summary(_ p: Pattern) -> Line {
    Line(pid: p.last.pid, text: "\(p.last.text) [repeated \(p.repeats)x across cluster]", isErr: p.last.isErr)
  }
}
