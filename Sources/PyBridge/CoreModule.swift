import CPython
import Runtime

/// The `swiftray._core` module table. Threading: every function here is called by
/// Python with the GIL held; blocking waits release it (see `withoutGIL`).
public enum CoreModule {
  typealias FastFn = @convention(c) (PyPtr?, UnsafePointer<PyPtr?>?, Py_ssize_t) -> PyPtr?

  struct Method {
    let name: String
    let fn: FastFn
    let doc: String
  }

  static let methods: [Method] = [
    Method(name: "version", fn: { _, _, _ in Py.str(SwiftrayVersion.string) }, doc: "The core's version."),
  ] + CoreAPI.methods

  /// Creates the module object. Called once per process: by `PyInit__core` in the
  /// extension, or by the worker host before it imports the package.
  public static func create() -> PyPtr? {
    TasksOnEventLoops.install()
    let defs = UnsafeMutablePointer<PyMethodDef>.allocate(capacity: methods.count + 1)
    for (i, m) in methods.enumerated() {
      defs[i] = PyMethodDef(
        ml_name: UnsafePointer(strdup(m.name)),
        ml_meth: unsafeBitCast(m.fn, to: PyCFunction.self),
        ml_flags: sr_METH_FASTCALL(),
        ml_doc: UnsafePointer(strdup(m.doc)))
    }
    defs[methods.count] = PyMethodDef(ml_name: nil, ml_meth: nil, ml_flags: 0, ml_doc: nil)
    let def = UnsafeMutablePointer<PyModuleDef>.allocate(capacity: 1)
    def.initialize(to: sr_ModuleDefInit())
    def.pointee.m_name = UnsafePointer(strdup("swiftray._core"))
    def.pointee.m_doc = UnsafePointer(strdup("The Swift core of swiftray."))
    def.pointee.m_size = -1
    def.pointee.m_methods = defs
    return PyModule_Create2(def, PYTHON_API_VERSION)
  }
}

/// Arguments of a FASTCALL function. Threading: GIL held.
struct Args {
  let base: UnsafePointer<PyPtr?>?
  let count: Int
  init(_ b: UnsafePointer<PyPtr?>?, _ n: Py_ssize_t) { base = b; count = n }
  subscript(i: Int) -> PyPtr? { i < count ? base?[i] : nil }
  func need(_ n: Int, _ fn: String) -> Bool {
    if count < n {
      PyErr_SetString(sr_ExcTypeError(), "\(fn)() takes \(n) arguments (\(count) given)")
      return false
    }
    return true
  }
}
