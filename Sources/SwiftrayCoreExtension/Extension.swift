import CPython
import PyBridge

/// Entry point CPython calls when the driver runs `import swiftray._core`.
@_cdecl("PyInit__core")
public func PyInit__core() -> UnsafeMutablePointer<PyObject>? {
  CoreModule.create()
}
