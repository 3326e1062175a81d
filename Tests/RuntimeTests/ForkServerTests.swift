import Foundation
import Runtime
import Testing

/// The fork server's wire (what its monitor sends it and what it says back), and the
/// monitor's launcher thread. The server itself forks Python workers: the Python tests
/// (tests/test_fork_server.py) run it end to end.
@Suite struct ForkServerWireTests {
  @Test func anEnvironmentRoundTripsWhateverItsValuesHold() {
    let env = ["A": "1", "EMPTY": "", "WITH_EQUALS": "x=y=z", "UNICODE": "héllo ✓", "PATH": "/bin:/usr/bin"]
    let bytes = ForkServer.encodeRequest(environment: env)
    #expect(ForkServer.decodeRequest(bytes[...]) == env)
    #expect(ForkServer.decodeRequest([][...]) == [:])
  }

  @Test func aMalformedRequestIsRefusedWhole() {
    func decode(_ s: String) -> [String: String]? { ForkServer.decodeRequest(Array(s.utf8)[...]) }
    #expect(decode("A=1\0") == ["A": "1"])
    #expect(decode("A=1") == nil)            // no terminating NUL: cut short
    #expect(decode("A1\0") == nil)           // no '='
    #expect(decode("=1\0") == nil)           // empty key
    #expect(decode("A=1\0A=2\0") == nil)     // the same key twice
    #expect(decode("A=1\0\0") == nil)        // an empty entry
    let huge = [UInt8](repeating: UInt8(ascii: "a"), count: ForkServer.maxRequestBytes) + [UInt8(ascii: "="), 0]
    #expect(ForkServer.decodeRequest(huge[...]) == nil)
  }

  @Test func noticesRoundTripAndAnythingElseIsIgnored() {
    for n in [ForkServer.Notice.ready(pid: 42), .exited(pid: 7, status: 0x0900), .exited(pid: Int32.max, status: -1)] {
      #expect(ForkServer.decodeNotice(ForkServer.encode(n)[...]) == n)
    }
    var wrongKind = ForkServer.encode(.ready(pid: 1))
    wrongKind[0] = 9
    #expect(ForkServer.decodeNotice(wrongKind[...]) == nil)
    #expect(ForkServer.decodeNotice(ForkServer.encode(.exited(pid: 0, status: 0))[...]) == nil)
    #expect(ForkServer.decodeNotice(ForkServer.encode(.exited(pid: -5, status: 0))[...]) == nil)
    #expect(ForkServer.decodeNotice(Array(ForkServer.encode(.ready(pid: 3)).dropLast())[...]) == nil)
  }

  @Test func anAnswerIsAPidOrANegativeErrno() {
    for v: Int32 in [1, 123_456, -11, Int32.min] {
      #expect(ForkServer.decodeReply(ForkServer.encodeReply(v)[...]) == v)
    }
    #expect(ForkServer.decodeReply([1, 2, 3][...]) == nil)
  }
}

@Suite struct LauncherTests {
  private final class Seen: @unchecked Sendable {
    let lock = NSLock()
    var pids: [Int32] = []
    var lines: [String] = []
    var exits: [ProcessMonitor.ExitStatus] = []
    func with<T>(_ f: (Seen) -> T) -> T { lock.lock(); defer { lock.unlock() }; return f(self) }
  }

  /// `launch` returns at once; the process starts on the monitor's launcher thread, and
  /// its output and exit code come back as a spawned worker's do.
  @Test func aLaunchedProcessIsStartedAndSeenEnding() async throws {
    let seen = Seen()
    let monitor = ProcessMonitor(onOutput: { _, _, lines in seen.with { $0.lines += lines } },
                                 onExit: { st in seen.with { $0.exits.append(st) } })
    defer { monitor.shutdown() }
    for code in [5, 6] {
      monitor.launch(executable: "/bin/sh", arguments: ["-c", "echo launched \(code); exit \(code)"], environment: [:]) { r in
        if case .success(let pid) = r { seen.with { $0.pids.append(pid) } }
      }
    }
    let start = Date()
    while seen.with({ $0.exits.count }) < 2 && Date().timeIntervalSince(start) < 20 { try await Task.sleep(for: .milliseconds(20)) }
    try await Task.sleep(for: .milliseconds(100))
    let (pids, lines, exits) = seen.with { ($0.pids, $0.lines, $0.exits) }
    #expect(pids.count == 2 && Set(pids).count == 2)
    #expect(Set(exits.map(\.pid)) == Set(pids))
    #expect(Set(exits.map(\.exitCode)) == [5, 6])
    #expect(Set(lines) == ["launched 5", "launched 6"])
  }

  /// `stopAndWait` returns with every child it still listed killed and reaped: not
  /// even a zombie is left for the caller to find (`shutdown` alone leaves that to the
  /// monitor thread, after it returns).
  @Test func stopAndWaitReturnsWithItsChildrenReaped() async throws {
    let monitor = ProcessMonitor(onOutput: { _, _, _ in }, onExit: { _ in })
    let result = await withCheckedContinuation { (c: CheckedContinuation<Result<Int32, SwiftrayError>, Never>) in
      monitor.launch(executable: "/bin/sh", arguments: ["-c", "exec sleep 30"], environment: [:]) { c.resume(returning: $0) }
    }
    guard case .success(let pid) = result else { Issue.record("sleep did not start: \(result)"); return }
    #expect(kill(pid, 0) == 0)
    let gone = try await onOwnThread { () -> Bool in
      monitor.stopAndWait()
      let gone = kill(pid, 0) == -1 && errno == ESRCH
      monitor.stopAndWait()  // again: returns at once
      return gone
    }
    #expect(gone)
  }

  @Test func aLaunchThatCannotStartSaysWhy() async throws {
    let monitor = ProcessMonitor(onOutput: { _, _, _ in }, onExit: { _ in })
    defer { monitor.shutdown() }
    let result = await withCheckedContinuation { (c: CheckedContinuation<Result<Int32, SwiftrayError>, Never>) in
      monitor.launch(executable: "/nonexistent/swiftray-worker", arguments: [], environment: [:]) { c.resume(returning: $0) }
    }
    guard case .failure(let error) = result else { Issue.record("a missing executable started"); return }
    #expect("\(error)".contains("/nonexistent/swiftray-worker"))
  }
}
