import Foundation
import Runtime

// swiftray-sim: seeded simulations of whole clusters on virtual time (DESIGN §8).
//
//   swiftray-sim --seeds N [--first-seed S] [--nodes K] [--tasks T]   N runs, seeds S..S+N-1
//   swiftray-sim --seed S [--nodes K] [--tasks T]                     replay one run, with its trace
//   swiftray-sim ... --no-bundle-reconcile   nodes ignore the head's list of their bundles
//   swiftray-sim ... --partitions P          partitions per run (default 2; 0: none)
//   swiftray-sim --scale [--scale-nodes N] [--scale-tasks T] [--json PATH]   control-plane figures
//
// Ends with `simulated N seeds: F failures`; exits 0 only when F = 0.

@main
struct Simulate {
  static func usage() -> Never {
    print("usage: swiftray-sim (--seeds N [--first-seed S] | --seed S | --scale) [--nodes K] [--tasks T] [--json PATH]")
    exit(2)
  }

  static func main() {

    // Swift seeds its hashing per process, and dictionaries iterate in hash order: a run
    // replays exactly only with deterministic hashing, so the simulator sets it for itself.
    if getenv("SWIFT_DETERMINISTIC_HASHING") == nil {
      setenv("SWIFT_DETERMINISTIC_HASHING", "1", 1)
      let argv = CommandLine.arguments.map { strdup($0) } + [nil]
      execv("/proc/self/exe", argv)
      print("swiftray-sim: could not re-execute itself with deterministic hashing")
      exit(2)
    }

    var args = Array(CommandLine.arguments.dropFirst())
    func take(_ flag: String) -> String? {
      guard let i = args.firstIndex(of: flag) else { return nil }
      guard i + 1 < args.count else { usage() }
      let v = args[i + 1]
      args.removeSubrange(i...(i + 1))
      return v
    }
    func number(_ flag: String, _ range: ClosedRange<UInt64>) -> UInt64? {
      guard let text = take(flag) else { return nil }
      guard let v = UInt64(text), range.contains(v) else {
        print("swiftray-sim: \(flag) must be a whole number in \(range.lowerBound)...\(range.upperBound), not \(text)")
        exit(2)
      }
      return v
    }

    let scale = args.contains("--scale")
    args.removeAll { $0 == "--scale" }
    var settings = SimCluster.Settings()
    // Nodes that never settle their bundles with the head's list (what the NodeManager
    // did before): shows the leaks the settling closes.
    if args.contains("--no-bundle-reconcile") { settings.reconcileBundles = false }
    args.removeAll { $0 == "--no-bundle-reconcile" }
    if let n = number("--nodes", 2...5_000) { settings.nodes = Int(n) }
    if let t = number("--tasks", 1...1_000_000) { settings.tasksPerDriver = Int(t) }
    if let p = number("--partitions", 0...100) { settings.partitions = Int(p) }
    let one = number("--seed", 0...UInt64.max)
    let count = number("--seeds", 1...1_000_000)
    let first = number("--first-seed", 0...UInt64.max) ?? 1
    let scaleNodes = number("--scale-nodes", 1...100_000) ?? 1_000
    let scaleTasks = number("--scale-tasks", 1...10_000_000) ?? 1_000_000
    let json = take("--json")
    guard args.isEmpty else { print("swiftray-sim: unknown arguments \(args)"); usage() }

    if scale {
      ScaleFigures.run(nodes: Int(scaleNodes), tasks: Int(scaleTasks), json: json)
      exit(0)
    }

    let seeds: [UInt64] = one.map { [$0] } ?? (0..<(count ?? 100)).map { first &+ $0 }
    var failed = 0
    let started = Date()
    var faults: [String: Int] = [:]
    var activity: [String: Int] = [:]
    for seed in seeds {
      let cluster = SimCluster(seed: seed, settings: settings)
      let failures = cluster.run()
      for (k, v) in cluster.faultsInjected { faults[k, default: 0] += v }
      for (k, v) in cluster.activity { activity[k, default: 0] += v }
      if !failures.isEmpty || one != nil {
        if !failures.isEmpty { failed += 1 }
        print(failures.isEmpty ? "seed \(seed): ok" : "seed \(seed): FAILED")
        for f in failures { print("  \(f)") }
        if !failures.isEmpty || one != nil {
          print("  last events:")
          for line in cluster.time.lastEvents() { print("    \(line)") }
        }
        print("  replay: ./scripts/simulate.sh --seed \(seed) --nodes \(settings.nodes) --tasks \(settings.tasksPerDriver)"
          + " --partitions \(settings.partitions)" + (settings.reconcileBundles ? "" : " --no-bundle-reconcile"))
      }
    }
    let took = Date().timeIntervalSince(started)
    let injected = faults.keys.sorted().map { "\($0): \(faults[$0]!)" }.joined(separator: ", ")
    let happened = activity.keys.sorted().map { "\($0): \(activity[$0]!)" }.joined(separator: ", ")
    print("activity: \(happened)")
    print(String(format: "faults injected: %@ (%.1f s)", injected.isEmpty ? "none" : injected, took))
    print("simulated \(seeds.count) seeds: \(failed) failures")
    exit(failed == 0 ? 0 : 1)
  }
}
