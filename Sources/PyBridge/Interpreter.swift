import CPython
import Foundation

/// Starts CPython inside a Swift host process (the worker, `swiftray run`), configured
/// to the driver's environment, with `swiftray._core` bound to this process's
/// built-in copy of the core (never the package's `.so`: two runtimes in one process
/// would be a bug).
///
/// Threading: call from the process's main thread, once.
public enum Interpreter {
  public struct Options {
    /// The interpreter whose prefix/venv to use (the driver's `sys.executable`).
    public var programName: String
    /// `sys.argv`.
    public var argv: [String]
    /// Replaces `sys.path` after start-up when set (the driver's `sys.path`).
    public var sysPath: [String]?
    public init(programName: String, argv: [String], sysPath: [String]?) {
      self.programName = programName; self.argv = argv; self.sysPath = sysPath
    }
  }

  /// Initializes the interpreter; on failure prints Python's status and exits.
  public static func start(_ options: Options) {
    let cfg = UnsafeMutablePointer<PyConfig>.allocate(capacity: 1)
    PyConfig_InitPythonConfig(cfg)
    check(PyConfig_SetBytesString(cfg, &cfg.pointee.program_name, options.programName), cfg)
    // Worker output is forwarded line by line; block buffering would delay it.
    cfg.pointee.buffered_stdio = 0
    cfg.pointee.parse_argv = 0
    var cargs = options.argv.map { strdup($0) }
    cargs.withUnsafeMutableBufferPointer { buf in
      let p = UnsafeMutableRawPointer(buf.baseAddress!).assumingMemoryBound(to: UnsafeMutablePointer<CChar>?.self)
      check(PyConfig_SetBytesArgv(cfg, Py_ssize_t(buf.count), p), cfg)
    }
    check(Py_InitializeFromConfig(cfg), cfg)
    PyConfig_Clear(cfg)
    cfg.deallocate()
    for c in cargs { free(c) }

    if let path = options.sysPath {
      let list = Py.list(path.map { Py.str($0) })
      PySys_SetObject("path", list)
      sr_DecRef(list)
    }
    guard let mod = CoreModule.create() else {
      PyErr_Print()
      exit(70)
    }
    PyDict_SetItemString(PyImport_GetModuleDict(), "swiftray._core", mod)
    sr_DecRef(mod)
  }

  /// Runs `module.function()` and returns the process exit code it implies.
  public static func runMain(module: String, function: String) -> Int32 {
    guard let m = PyImport_ImportModule(module) else { return printException() }
    defer { sr_DecRef(m) }
    guard let f = PyObject_GetAttrString(m, function) else { return printException() }
    defer { sr_DecRef(f) }
    guard let r = PyObject_CallNoArgs(f) else { return printException() }
    let code = Py.isNone(r) ? 0 : Int32(truncatingIfNeeded: Py.toInt(r) ?? 0)
    sr_DecRef(r)
    return code
  }

  /// Imports `module` (ahead of a fork: the fork server's children find it loaded);
  /// false after printing why it failed.
  public static func importModule(_ module: String) -> Bool {
    guard let m = PyImport_ImportModule(module) else { _ = printException(); return false }
    sr_DecRef(m)
    return true
  }

  /// Forks a worker for a fork server (`sr_fork_on_fresh_thread`: from a fresh
  /// thread, the interpreter's fork protocol around it). Returns the child's pid or
  /// -errno; the child takes on `environment` (os.environ and the process's, through
  /// `adopt`: `module.function(dict)`) and runs `child`, which must not return.
  /// Threading: the main thread, GIL held.
  public static func forkWorker(stdout: Int32, stderr: Int32, environment: [String: String],
                                adopt: (module: String, function: String), child: @escaping () -> Never) -> Int32 {
    let job = ForkedChild {
      adoptEnvironment(environment, with: adopt)
      child()
    }
    let ctx = Unmanaged.passRetained(job).toOpaque()
    defer { Unmanaged<ForkedChild>.fromOpaque(ctx).release() }
    let pid = sr_fork_on_fresh_thread(stdout, stderr, { ctx in
      Unmanaged<ForkedChild>.fromOpaque(ctx!).takeUnretainedValue().run()
    }, ctx)
    return pid > 0 ? pid : -errno
  }

  private final class ForkedChild {
    let run: () -> Never
    init(_ run: @escaping () -> Never) { self.run = run }
  }

  private static func adoptEnvironment(_ env: [String: String], with adopt: (module: String, function: String)) {
    guard let m = PyImport_ImportModule(adopt.module) else { _ = printException(); exit(70) }
    defer { sr_DecRef(m) }
    let dict = PyDict_New()!
    defer { sr_DecRef(dict) }
    for (k, v) in env {
      let value = Py.str(v)
      PyDict_SetItemString(dict, k, value)
      sr_DecRef(value)
    }
    guard let f = PyObject_GetAttrString(m, adopt.function) else { _ = printException(); exit(70) }
    defer { sr_DecRef(f) }
    guard let r = PyObject_CallOneArg(f, dict) else { _ = printException(); exit(70) }
    sr_DecRef(r)
  }

  /// Prints the pending exception like the `python` command does. For SystemExit,
  /// PyErr_Print exits the process with its code and does not return.
  static func printException() -> Int32 {
    PyErr_Print()
    return 1
  }

  public static func finalize() -> Int32 {
    Py_FinalizeEx() < 0 ? 120 : 0
  }

  private static func check(_ status: PyStatus, _ cfg: UnsafeMutablePointer<PyConfig>) {
    if PyStatus_Exception(status) != 0 {
      PyConfig_Clear(cfg)
      Py_ExitStatusException(status)
    }
  }
}
