import CPython
import Runtime

/// The runtime calls exposed to the Python layer. Filled in as the core grows.
enum CoreAPI {
  static let methods: [CoreModule.Method] = []
}
