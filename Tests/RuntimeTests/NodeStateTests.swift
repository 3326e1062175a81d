import Foundation
import Runtime
import Testing

/// A generator that repeats one value: routing that depends on chance is pinned.
private struct Fixed: RandomNumberGenerator, Sendable {
  var value: UInt64
  mutating func next() -> UInt64 { value }
}

private func view(_ i: Int, cpus: Double, free: Double, alive: Bool = true) -> NodePicker.NodeView {
  NodePicker.NodeView(id: Data([UInt8(i)]), address: "n\(i)", total: ResourceSet(units: ["CPU": cpus]),
                      available: ResourceSet(units: ["CPU": free]), alive: alive, startTimeMs: Int64(i))
}

private let cpu1 = ResourceSet(units: ["CPU": 1])
private let anyKey = SchedulingKey(shape: cpu1, proto: .init())

@Suite struct ClusterViewTests {
  @Test func aSpillbackCountsAgainstItsNodeUntilTheNextReport() {
    var c = ClusterView(rng: Fixed(value: 0))
    c.refreshed([view(1, cpus: 4, free: 1)])
    let me = view(0, cpus: 1, free: 0)
    #expect(c.route(anyKey, needs: cpu1, me: me, preferred: nil) == .spillback("n1"))
    #expect(c.nodes[0].available == ResourceSet(units: ["CPU": 0]), "debited until its next report")
    // The burst's next request does not pile onto the same node: it waits here.
    #expect(c.route(anyKey, needs: cpu1, me: me, preferred: nil) != .spillback("n1"))
    c.refreshed([view(1, cpus: 4, free: 1)])
    #expect(c.route(anyKey, needs: cpu1, me: me, preferred: nil) == .spillback("n1"), "a fresh report restores it")
  }

  @Test func aRequestOnlyADeadNodeCouldFitStaysHereWhereTheQueueWarnsAndWaits() {
    var c = ClusterView(rng: Fixed(value: 0))
    c.refreshed([view(1, cpus: 2, free: 2), view(2, cpus: 64, free: 64, alive: false)])
    let eight = ResourceSet(units: ["CPU": 8])
    let route = c.route(SchedulingKey(shape: eight, proto: .init()), needs: eight, me: view(0, cpus: 2, free: 2), preferred: nil)
    #expect(route == .local, "never sent to a dead node")
    c.refreshed([view(1, cpus: 2, free: 2), view(2, cpus: 64, free: 0)])
    let later = c.route(SchedulingKey(shape: eight, proto: .init()), needs: eight, me: view(0, cpus: 2, free: 2), preferred: nil)
    #expect(later == .spillback("n2"), "queued where it will fit once resources free up")
  }

  @Test func queuedRequestsMoveToNodesThatFreedUpFirstAndAreDebited() {
    var c = ClusterView(rng: Fixed(value: 0))
    c.refreshed([view(0, cpus: 1, free: 0), view(1, cpus: 2, free: 2)])
    let moves = c.spill([(id: 7, needs: cpu1), (id: 8, needs: cpu1), (id: 9, needs: cpu1)], free: ResourceSet(), me: Data([0]))
    #expect(moves.map(\.requestID) == [7, 8] && moves.allSatisfy { $0.address == "n1" })
    #expect(c.nodes[1].available == ResourceSet(units: ["CPU": 0]))
    #expect(c.spill([], free: ResourceSet(), me: Data([0])).isEmpty)
  }

  @Test func spreadTakesTurnsAmongTheNodes() {
    var c = ClusterView(rng: Fixed(value: 0))
    c.refreshed([view(1, cpus: 4, free: 4), view(2, cpus: 4, free: 4)])
    let spread = SchedulingKey(cpu1, strategy: .spread)
    let me = view(0, cpus: 4, free: 4)
    let routes = (0..<6).map { _ in c.route(spread, needs: cpu1, me: me, preferred: nil) }
    #expect(Set(routes).count == 3, "each of the three nodes gets a turn: \(routes)")
    #expect(c.spreadTurn == 6)
  }
}

@Suite struct WorkerPoolTests {
  let node = NodeID.random()

  @Test func anExitSaysHowTheWorkerWentAndIsKeptForOwnersAsking() throws {
    var p = WorkerPool()
    let w = WorkerID.random()
    p.spawned(w, pid: 101)
    let known = p.registered(w, endpoint: "unix:/w.sock", localEndpoint: "")
    #expect(known)
    let exited = p.exited(pid: 101, exitCode: 0, signal: 9, node: node, shuttingDown: false)
    let exit = try #require(exited)
    #expect(exit.info.detail.contains("killed by signal 9 (SIGKILL)"))
    #expect(!exit.info.intended && exit.failedStart == nil && !exit.stopStarting)
    #expect(p.exitInfo(w)?.pid == 101 && p.count == 0)
    let again = p.exited(pid: 101, exitCode: 0, signal: 9, node: node, shuttingDown: false)
    #expect(again == nil, "once")
  }

  @Test func aKillByTheNodeIsIntendedAndSaysWhy() throws {
    var p = WorkerPool()
    let w = WorkerID.random()
    p.spawned(w, pid: 5)
    let pid = p.killing(w, reason: "killed by cancel(force=True)")
    #expect(pid == 5)
    let exited = p.exited(pid: 5, exitCode: 0, signal: 9, node: node, shuttingDown: false)
    let exit = try #require(exited)
    #expect(exit.info.intended && exit.info.detail.contains("cancel(force=True)"))
  }

  @Test func workersThatKeepDyingBeforeRegisteringStopBeingStartedWithTheirLastOutput() throws {
    var p = WorkerPool()
    var exits: [WorkerPool.Exit] = []
    for pid in Int32(1)...3 {
      p.spawned(.random(), pid: pid)
      p.output(pid: pid, isErr: true, lines: ["Traceback (most recent call last):", "ImportError: no module named swiftray"])
      let exited = p.exited(pid: pid, exitCode: 1, signal: 0, node: node, shuttingDown: false)
      exits.append(try #require(exited))
    }
    #expect(exits.map(\.stopStarting) == [false, false, true])
    #expect(exits[2].failedStart?.contains("ImportError") == true)
    // One that registers resets the count.
    let ok = WorkerID.random()
    p.spawned(ok, pid: 10)
    p.spawned(.random(), pid: 11)
    _ = p.exited(pid: 11, exitCode: 1, signal: 0, node: node, shuttingDown: false)
    let registered = p.registered(ok, endpoint: "e", localEndpoint: "")
    #expect(registered)
    p.spawned(.random(), pid: 12)
    p.spawned(.random(), pid: 13)
    let twelve = p.exited(pid: 12, exitCode: 1, signal: 0, node: node, shuttingDown: false)
    let thirteen = p.exited(pid: 13, exitCode: 1, signal: 0, node: node, shuttingDown: false)
    let a = try #require(twelve), b = try #require(thirteen)
    #expect(!a.stopStarting && !b.stopStarting)
  }

  @Test func aWorkerThatRegistersBeforeItsLaunchReturnsIsKnownAndLeasable() {
    // The worker registers over the node's socket faster than the launcher hands its
    // pid back: it used to be turned away, and requests waited for it forever.
    var p = WorkerPool()
    var q = LeaseQueue(total: ResourceSet(units: ["CPU": 1]), limits: .init(maxStartingWorkers: 1, maxWorkers: 4))
    let w = WorkerID.random()
    p.launching(w)
    _ = q.workerStarting(w)
    let known = p.registered(w, endpoint: "unix:/w.sock", localEndpoint: "")
    #expect(known)
    #expect(q.workerRegistered(w).isEmpty && q.idleWorkerCount == 1)
    #expect(p.pid(of: w) == nil && p.pids.isEmpty, "no pid 0 is ever signalled")
    #expect(p.spawned(w, pid: 42) == .none)
    #expect(p.pid(of: w) == 42 && p.process(w)?.endpoint == "unix:/w.sock")
  }

  @Test func anExitSeenBeforeTheLaunchReturnsIsReportedWhenThePidComes() throws {
    var p = WorkerPool()
    let w = WorkerID.random()
    p.launching(w)
    let early = p.exited(pid: 77, exitCode: 3, signal: 0, node: node, shuttingDown: false)
    #expect(early == nil, "not known yet")
    #expect(p.spawned(w, pid: 77) == .ended(exitCode: 3, signal: 0))
    let exited = p.exited(pid: 77, exitCode: 3, signal: 0, node: node, shuttingDown: false)
    let exit = try #require(exited)
    #expect(exit.id == w && exit.info.detail.contains("exited with code 3 before it registered"))
    #expect(p.count == 0)
  }

  /// Workers killed from outside before they registered (SIGKILL, SIGTERM) are not a
  /// crash loop; three that crash on their own (a signal such as SIGSEGV) are.
  @Test func onlyWorkersThatEndOnTheirOwnBeforeRegisteringCountAsACrashLoop() {
    var p = WorkerPool()
    var pid: Int32 = 100
    func startAndEnd(signal: Int32) -> WorkerPool.Exit? {
      let w = WorkerID.random()
      pid += 1
      p.launching(w)
      p.spawned(w, pid: pid)
      return p.exited(pid: pid, exitCode: -1, signal: signal, node: node, shuttingDown: false)
    }
    for _ in 0..<(WorkerPool.crashLoopLimit * 2) {
      let e = startAndEnd(signal: SIGKILL)
      #expect(e?.stopStarting == false && e?.failedStart == nil)
    }
    #expect(startAndEnd(signal: SIGTERM)?.stopStarting == false)
    let crashes = (0..<WorkerPool.crashLoopLimit).map { _ in startAndEnd(signal: SIGSEGV)?.stopStarting }
    #expect(crashes == [false, false, true])
  }

  @Test func aKillBeforeThePidIsKnownHappensWhenItIs() {
    var p = WorkerPool()
    let w = WorkerID.random()
    p.launching(w)
    #expect(p.killing(w, reason: "its owner died") == nil)
    #expect(p.spawned(w, pid: 9) == .kill(9))
    var stops: [Bool] = []
    for _ in 0..<WorkerPool.crashLoopLimit {
      let failed = WorkerID.random()
      p.launching(failed)
      stops.append(p.launchFailed(failed))
      #expect(p.process(failed) == nil && p.count == 1)
    }
    #expect(stops == [false, false, true], "launches that keep failing count as a crash loop")
  }

  @Test func earlyExitsKeptAreBounded() {
    var p = WorkerPool()
    for pid in 1...Int32(WorkerPool.maxEarlyExits + 10) {
      _ = p.exited(pid: pid, exitCode: 0, signal: 0, node: node, shuttingDown: false)
    }
    #expect(p.earlyExitCount == WorkerPool.maxEarlyExits)
    #expect(p.spawned(.random(), pid: 5) == .none, "dropped, oldest first")
  }

  @Test func exitsKeptAreBounded() {
    var p = WorkerPool()
    let first = WorkerID.random()
    p.spawned(first, pid: 1)
    _ = p.exited(pid: 1, exitCode: 0, signal: 0, node: node, shuttingDown: true)
    for i in 0..<WorkerPool.maxExitsKept {
      p.spawned(.random(), pid: Int32(2 + i))
      _ = p.exited(pid: Int32(2 + i), exitCode: 0, signal: 0, node: node, shuttingDown: true)
    }
    #expect(p.exitInfo(first) == nil, "the oldest is forgotten")
  }

  @Test func aDriverProcessIsWatchedOnceAndEndsEveryDriverItWas() {
    var p = WorkerPool()
    let a = WorkerID.random(), b = WorkerID.random(), other = WorkerID.random()
    let first = p.driverConnected(a, pid: 40), again = p.driverConnected(b, pid: 40), another = p.driverConnected(other, pid: 41)
    #expect(first, "the first driver of a process: watch it")
    #expect(!again, "init after shutdown in the same process: already watched")
    #expect(another)
    let ended = p.driverProcessEnded(pid: 40), twice = p.driverProcessEnded(pid: 40)
    #expect(ended == [a, b])
    #expect(twice.isEmpty && p.driverCount == 1)
    for _ in 0..<(WorkerPool.driversKeptPerProcess + 10) { _ = p.driverConnected(.random(), pid: 42) }
    #expect(p.driverCount == 1 + WorkerPool.driversKeptPerProcess, "a process connecting again and again is bounded")
    let bogus = p.driverConnected(.random(), pid: -7)
    #expect(!bogus && p.driverCount == 1 + WorkerPool.driversKeptPerProcess, "no process has pid -7: not kept")
  }
}

private final class Calls: @unchecked Sendable {
  let lock = NSLock()
  var n = 0
  func add(_ k: Int) { lock.lock(); n += k; lock.unlock() }
  var count: Int { lock.lock(); defer { lock.unlock() }; return n }
}

/// The monitor's watch of processes that are not its children (drivers): a real process.
@Suite struct ProcessWatchTests {
  @Test func aWatchedProcessEndingIsReportedOnceAtOnce() async throws {
    let monitor = ProcessMonitor(onOutput: { _, _, _ in }, onExit: { _ in })
    defer { monitor.shutdown() }
    let child = Foundation.Process()
    child.executableURL = URL(fileURLWithPath: "/bin/sleep")
    child.arguments = ["0.3"]
    try child.run()
    let calls = Calls()
    monitor.watch(child.processIdentifier) { calls.add(1) }
    monitor.watch(child.processIdentifier) { calls.add(100) }  // the first callback stays
    let start = Date()
    while calls.count == 0 && Date().timeIntervalSince(start) < 10 { try await Task.sleep(for: .milliseconds(20)) }
    child.waitUntilExit()
    try await Task.sleep(for: .milliseconds(200))
    #expect(calls.count == 1)
  }
}
