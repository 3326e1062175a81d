/// The one error type of the runtime. `code` picks the Python exception class (mapped
/// in exactly one place, PyBridge's ErrorMapping); `message` says what happened and
/// what to do. Value type, Sendable.
public struct SwiftrayError: Error, Sendable, Equatable, CustomStringConvertible {
  public enum Code: String, Sendable, CaseIterable {
    case taskError = "TASK_ERROR"               // the user's code raised (payload is language-level)
    case workerCrashed = "WORKER_CRASHED"
    case taskCancelled = "TASK_CANCELLED"
    case getTimeout = "GET_TIMEOUT"
    case objectLost = "OBJECT_LOST"
    case ownerDied = "OWNER_DIED"
    case objectFreed = "OBJECT_FREED"
    case reconstructionFailed = "RECONSTRUCTION_FAILED"
    case objectStoreFull = "OBJECT_STORE_FULL"
    case nodeDied = "NODE_DIED"
    case localRayletDied = "LOCAL_RAYLET_DIED"
    case unschedulable = "TASK_UNSCHEDULABLE"
    case actorDied = "ACTOR_DIED"
    /// The actor is alive but this caller could not reach it (a broken connection).
    case actorUnavailable = "ACTOR_UNAVAILABLE"
    case actorUnschedulable = "ACTOR_UNSCHEDULABLE"
    case pendingCallsLimitExceeded = "PENDING_CALLS_LIMIT_EXCEEDED"
    case taskPlacementGroupRemoved = "TASK_PLACEMENT_GROUP_REMOVED"
    case actorPlacementGroupRemoved = "ACTOR_PLACEMENT_GROUP_REMOVED"
    /// A task's runtime environment could not be set up on the node picked for it.
    case runtimeEnvSetupFailed = "RUNTIME_ENV_SETUP_FAILED"
    case invalidArgument = "INVALID_ARGUMENT"
    case notInitialized = "NOT_INITIALIZED"
    /// A peer refused this process's cluster token, or none was found.
    case authentication = "AUTHENTICATION"
    case system = "SYSTEM"
  }
  public var code: Code
  public var message: String
  public var cause: String?

  public init(_ code: Code, _ message: String, cause: String? = nil) {
    self.code = code; self.message = message; self.cause = cause
  }
  public var description: String {
    cause.map { "\(message) (cause: \($0))" } ?? message
  }
}

/// Error objects: a failed task's return slots hold one of these instead of a value.
/// Metadata carries the code so readers can tell errors from values without parsing.
public enum ErrorObject {
  public static let metadataPrefix = "ERR:"
  public static func metadata(_ code: SwiftrayError.Code) -> [UInt8] {
    Array((metadataPrefix + code.rawValue).utf8)
  }
  public static func code(fromMetadata m: some Collection<UInt8>) -> SwiftrayError.Code? {
    guard m.count > metadataPrefix.utf8.count,
      let s = String(bytes: m, encoding: .utf8), s.hasPrefix(metadataPrefix)
    else { return nil }
    return SwiftrayError.Code(rawValue: String(s.dropFirst(metadataPrefix.count)))
  }
}
