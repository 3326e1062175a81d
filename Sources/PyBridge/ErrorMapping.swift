import CPython
import Runtime

/// The one place that maps runtime errors to `swiftray.exceptions` classes.
/// Threading: GIL held.
enum ErrorMapping {
  static func className(_ code: SwiftrayError.Code) -> String {
    switch code {
    case .taskError: return "RayTaskError"
    case .workerCrashed: return "WorkerCrashedError"
    case .taskCancelled: return "TaskCancelledError"
    case .getTimeout: return "GetTimeoutError"
    case .objectLost: return "ObjectLostError"
    case .ownerDied: return "OwnerDiedError"
    case .objectFreed: return "ObjectFreedError"
    case .reconstructionFailed: return "ObjectReconstructionFailedError"
    case .objectStoreFull: return "ObjectStoreFullError"
    case .nodeDied: return "NodeDiedError"
    case .localRayletDied: return "LocalRayletDiedError"
    case .unschedulable: return "TaskUnschedulableError"
    case .actorDied: return "ActorDiedError"
    case .actorUnavailable: return "ActorUnavailableError"
    case .actorUnschedulable: return "ActorUnschedulableError"
    case .pendingCallsLimitExceeded: return "PendingCallsLimitExceeded"
    case .taskPlacementGroupRemoved: return "TaskPlacementGroupRemoved"
    case .actorPlacementGroupRemoved: return "ActorPlacementGroupRemoved"
    case .runtimeEnvSetupFailed: return "RuntimeEnvSetupError"
    case .authentication: return "AuthenticationError"
    case .invalidArgument, .notInitialized, .system: return "RaySystemError"
    }
  }

  /// The exception class for `code` (new reference), falling back to RuntimeError.
  static func exceptionClass(_ code: SwiftrayError.Code) -> PyPtr {
    if code == .invalidArgument { let v = sr_ExcValueError()!; sr_IncRef(v); return v }
    if let mod = PyImport_ImportModule("swiftray.exceptions") {
      defer { sr_DecRef(mod) }
      if let cls = PyObject_GetAttrString(mod, className(code)) { return cls }
    }
    PyErr_Clear()
    let r = sr_ExcRuntimeError()!
    sr_IncRef(r)
    return r
  }

  /// A new exception instance carrying `message`.
  static func instance(_ code: SwiftrayError.Code, _ message: String) -> PyPtr? {
    let cls = exceptionClass(code)
    defer { sr_DecRef(cls) }
    let msg = Py.str(message)
    defer { sr_DecRef(msg) }
    return PyObject_CallOneArg(cls, msg)
  }

  /// Sets the Python error for `error` and returns nil, for `return raise(e)`.
  static func raise(_ error: SwiftrayError) -> PyPtr? {
    let cls = exceptionClass(error.code)
    defer { sr_DecRef(cls) }
    PyErr_SetString(cls, error.description)
    return nil
  }
}
