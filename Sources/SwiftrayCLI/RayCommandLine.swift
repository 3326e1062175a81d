import ArgumentParser
import Foundation
import GRPCCore
import NIOPosix
import Runtime
import RuntimeProto

/// swiftray run as `ray` (the name KubeRay's pods and Ray users' scripts call): the
/// Python entry point sets `SWIFTRAY_CLI_NAME=ray` when its executable is named `ray`.
/// Then Ray's `ray start` options that swiftray has no use for are accepted with a note
/// (a pod must not fail on a `rayStartParams` entry), never silently.
///
/// Threading: pure functions of the environment and the words.
enum RayCommandLine {
  static var invokedAsRay: Bool { ProcessInfo.processInfo.environment["SWIFTRAY_CLI_NAME"] == "ray" }

  /// One line per ignored option (`--key=value`, `--key value` or a bare `--flag`).
  static func ignoredNotes(_ words: [String]) -> [String] {
    var notes: [String] = []
    for w in words {
      if w.hasPrefix("-") || notes.isEmpty {
        notes.append(w)
      } else {
        notes[notes.count - 1] += " " + w  // the value of the option before it
      }
    }
    return notes.map { "(swiftray) ray start: ignoring \($0.prefix(200)): a Ray option swiftray does not use." }
  }
}

/// `ray health-check` / `swiftray health-check`: exits 0 once the head's ControlService
/// at ADDRESS answers (KubeRay's worker init container loops on it before the worker
/// starts), else 1 saying why. An answer refusing this process's token (or the lack of
/// one) still proves the head is up, so it counts: the node started next says clearly
/// when its token is wrong.
struct HealthCheck: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "health-check", abstract: "Exit 0 when the cluster's head answers, else 1.")
  @Option(help: "HOST:PORT of the head (default: $RAY_ADDRESS when it is HOST:PORT, else the newest cluster on this machine).")
  var address: String?
  @Option(help: .hidden) var component: String?
  @Flag(name: .customLong("skip-version-check"), help: .hidden) var skipVersionCheck = false
  @Option(help: "Seconds to wait for the answer.")
  var timeout: Double = 10

  func validate() throws {
    if !(timeout > 0 && timeout <= 3600) { throw ValidationError("--timeout must be in (0, 3600] seconds") }
  }

  func run() throws {
    let env = ProcessInfo.processInfo.environment
    let given = address ?? env["RAY_ADDRESS"].flatMap { Start.endpoint($0) != nil ? $0 : nil }
    let target = try ClusterTarget(given)
    let auth = (try? ClusterAuth.resolve(session: target.session)) ?? .disabled
    let control = target.control
    let c = try ControlPlane.connect(control, group: .singletonMultiThreadedEventLoopGroup, auth: auth)
    defer { c.shutdown() }
    let ms = Int(timeout * 1000)
    do {
      try blockingAwait(timeout: .milliseconds(ms + 1000)) {
        do {
          _ = try await Swiftray_ControlService.Client(wrapping: c.client)
            .getAllNodes(Swiftray_GetAllNodesRequest(), options: ControlPlane.deadline(milliseconds: ms))
        } catch let e as RPCError where e.code == .unauthenticated || e.code == .permissionDenied {
          return  // answered: it is up
        }
      }
    } catch {
      print("The head at \(control) does not answer: \(ControlPlane.error(error, calling: "GetAllNodes", at: control).message)")
      throw ExitCode(1)
    }
  }
}
