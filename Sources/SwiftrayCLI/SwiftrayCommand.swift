import ArgumentParser
import NIOCore
import NIOPosix
import CPythonEmbed
import Foundation
import PyBridge
import Runtime

/// `swiftray`: the node daemon and the Python host (DESIGN §1).
@main
struct SwiftrayCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "swiftray",
    abstract: "Ray's programming model for Python, with a Swift core.",
    version: SwiftrayVersion.string,
    subcommands: [Start.self, Stop.self, Status.self, Run.self, Worker.self, Memory.self, GetAuthToken.self,
                  ListState.self, GetState.self, SummaryState.self, Timeline.self, Logs.self, HealthCheck.self]
  )
}

/// The interpreter a hosted Python should use: `--python`, else the one recorded by
/// the pip build next to this binary, else `python3`.
func hostPython(_ explicit: String?) -> String {
  if let e = explicit { return e }
  if let env = ProcessInfo.processInfo.environment["SWIFTRAY_PYTHON"], !env.isEmpty { return env }
  return "python3"
}

struct Run: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run a Python script in the embedded interpreter, with `import ray` resolving to swiftray.")
  @Option(help: "The Python interpreter whose environment (prefix, venv, site-packages) to use.")
  var python: String?
  @Argument(parsing: .captureForPassthrough, help: "The script and its arguments, or -m MODULE and its arguments (as python -m).")
  var script: [String] = []

  func run() throws {
    let usage = "usage: swiftray run SCRIPT [ARGS...] | swiftray run -m MODULE [ARGS...]"
    guard let first = script.first else { throw ValidationError(usage) }
    // Before start-up: os.environ is a snapshot taken then.
    if first == "-m" {
      guard script.count > 1, !script[1].isEmpty else { throw ValidationError(usage) }
      setenv("SWIFTRAY_RUN_MODULE", script[1], 1)
    } else {
      setenv("SWIFTRAY_RUN_SCRIPT", first, 1)
    }
    // With -m, sys.argv[0] becomes the module's file once it is found (as python -m).
    let argv = first == "-m" ? Array(script.dropFirst()) : script
    Interpreter.start(.init(programName: hostPython(python), argv: argv, sysPath: nil))
    let code = Interpreter.runMain(module: "swiftray._run", function: "main")
    let fin = Interpreter.finalize()
    throw ExitCode(code != 0 ? code : fin)
  }
}

struct Worker: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Internal: a worker process, started by a NodeManager (never by hand).")
  @Flag(name: .customLong("fork-server"), help: "Serve the node's fork requests (ForkServer) instead of running tasks.")
  var forkServer = false

  func run() throws {
    // One event-loop thread per worker, not one per CPU: a worker's tasks come by lane
    // to its task thread and objects move between stores, so its loop carries little,
    // and each thread is a cost of every new worker (issue 18). Set before NIO's
    // singleton group exists (the fork server never makes it: `ForkWarmUp`).
    NIOSingletons.groupLoopCountSuggestion = 1
    // The fork server starts no thread (fork needs it alone); it watches the lifeline
    // itself, and each child it forks starts its own watch.
    if !forkServer { Lifeline.exitWhenParentDies() }
    let env = ProcessInfo.processInfo.environment
    var sysPath: [String]? = nil
    if let json = env["SWIFTRAY_SYS_PATH"], let data = json.data(using: .utf8),
      let list = try? JSONDecoder().decode([String].self, from: data)
    {
      sysPath = list
    }
    Interpreter.start(.init(programName: hostPython(nil), argv: ["swiftray-worker"], sysPath: sysPath))
    if forkServer {
      guard Interpreter.importModule("swiftray._worker") else { Foundation.exit(70) }
      ForkWarmUp.run(environment: env)
      ForkServer.serve(hooks: .init(fork: { out, err, environment in
        Interpreter.forkWorker(stdout: out, stderr: err, environment: environment,
                               adopt: ("swiftray._worker", "_adopt_environment")) {
          Lifeline.exitWhenParentDies()
          Foundation.exit(Interpreter.runMain(module: "swiftray._worker", function: "main"))
        }
      }))
      Foundation.exit(0)
    }
    let code = Interpreter.runMain(module: "swiftray._worker", function: "main")
    // Workers exit without finalizing: threads of the core may still hold the GIL's
    // waiters, and the NodeManager only needs the exit code.
    Foundation.exit(code)
  }
}

struct Memory: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Print the object store usage (capacity, used, pinned, spilled) of the running local clusters.")
  @Option(help: "The session directory of the cluster to inspect (default: every running one on this machine).")
  var address: String?
  @Flag(help: "Only the aggregate numbers (the only view for now; accepted for Ray compatibility).")
  var statsOnly = false

  func run() throws {
    let sessions = address.map { [$0] } ?? MemoryReport.liveSessions()
    guard !sessions.isEmpty else {
      print("No running swiftray cluster found on this machine (looked in \(SessionPaths.sessionsRoot())).")
      throw ExitCode(1)
    }
    var failed = false
    for dir in sessions {
      do {
        let auth = try ClusterAuth.required(for: "read the object store of session \(dir)", session: dir)
        let pool = DataPlaneClientPool(group: MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup, auth: auth)
        defer { pool.closeAll() }
        print(MemoryReport.format(try MemoryReport.stats(sessionDir: dir, pool: pool), node: "the node of session \(dir)"))
      } catch {
        failed = true
        print("Cannot reach the object store of session \(dir): \(error.message)")
      }
    }
    if failed { throw ExitCode(1) }
  }
}

/// `swiftray get-auth-token [--generate]`: prints this machine's cluster token (Ray's
/// `ray get-auth-token`), to copy to the other machines of the cluster.
struct GetAuthToken: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "get-auth-token",
    abstract: "Print the cluster token this machine uses (to copy to the cluster's other machines).")
  @Flag(help: "Make a new token in ~/.swiftray/auth_token when there is none.")
  var generate = false

  func run() throws {
    if ClusterAuth.disabledByEnvironment() {
      throw ValidationError("authentication is disabled here (SWIFTRAY_AUTH_MODE=disabled): there is no token")
    }
    if let auth = try ClusterAuth.resolve(), let text = auth.tokenText {
      print(text)
      return
    }
    guard generate else {
      throw ValidationError("no cluster token found. " + ClusterAuth.whereToLook()
        + " Or make one with `swiftray get-auth-token --generate`.")
    }
    let token = ClusterAuth.generate()
    let path = ClusterAuth.defaultPath()
    if try !ClusterAuth.writeTokenFile(token, to: path), let again = try ClusterAuth.resolve(), let text = again.tokenText {
      print(text)  // made meanwhile by another command
      return
    }
    print(token)
  }
}
