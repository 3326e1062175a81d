import GRPCCore
import RuntimeProto

/// A unary control-plane call to a service served in this same process, made without
/// gRPC: the service's method is called and its reply handed back as gRPC would hand it
/// (`ClientResponse`, errors as `RPCError`). A method that may wait (`waits`: a long
/// poll, a queue) runs in a task of its own: as over gRPC, its caller is answered at the
/// call's deadline (`deadlineExceeded`) or when it is cancelled (`cancelled`) whether or
/// not the method has returned, and the method's task is then cancelled. The others
/// answer at once and run in the caller's task (no task, no wake-up).
/// Used through the in-process twin of a socket this process serves
/// (`ControlPlane.Connection.controlService`): a driver calling the head and node it
/// started, a node its head, the head its node.
///
/// Why: even through the twin's memory transport a call took ~180 µs of CPU (its request
/// and reply streams, the server's tasks, their wake-ups). No token is checked: nothing
/// outside the process reaches a service this way.
///
/// Threading: any task.
enum LocalCall {
  static func unary<In: Sendable, Out: Sendable, Result: Sendable>(
    _ request: ClientRequest<In>, _ descriptor: MethodDescriptor, _ options: CallOptions, waits: Bool,
    _ handle: @Sendable @escaping (ClientResponse<Out>) async throws -> Result,
    _ call: @Sendable @escaping (In, ServerContext) async throws -> Out
  ) async throws -> Result {
    let context = ServerContext(descriptor: descriptor, remotePeer: "in-process", localPeer: "in-process",
                                cancellation: ServerContext.RPCCancellationHandle())
    let message = request.message
    let response: ClientResponse<Out>
    do {
      if waits {
        response = ClientResponse(message: try await answer(within: options.timeout, descriptor) { try await call(message, context) })
      } else {
        response = ClientResponse(message: try await call(message, context))
      }
    } catch {
      response = ClientResponse(of: Out.self, error: rpcError(error))
    }
    return try await handle(response)
  }

  /// What a gRPC client gets for a service method's error (as GRPCCore's server sends it).
  static func rpcError(_ error: any Error) -> RPCError {
    if let e = error as? RPCError { return e }
    if let e = error as? any RPCErrorConvertible { return RPCError(e) }
    if error is CancellationError { return RPCError(code: .cancelled, message: "the call was cancelled") }
    return RPCError(code: .unknown, message: "Service method threw an unknown error.")
  }

  /// `body`'s outcome, or `deadlineExceeded` once `timeout` passes, or `cancelled` when
  /// the calling task is: the first of the three.
  static func answer<T: Sendable>(within timeout: Duration?, _ descriptor: MethodDescriptor,
                                  _ body: @Sendable @escaping () async throws -> T) async throws -> T {
    let race = FirstAnswer<T>()
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        race.wait(c)
        let work = Task {
          do { race.answer(.success(try await body())) } catch { race.answer(.failure(error)) }
        }
        let timer = timeout.map { t in
          Task {
            guard (try? await Task.sleep(for: t)) != nil else { return }
            race.answer(.failure(RPCError(code: .deadlineExceeded,
                                          message: "\(descriptor.fullyQualifiedMethod) got no answer within \(t)")))
          }
        }
        race.started(work, timer)
      }
    } onCancel: {
      race.answer(.failure(RPCError(code: .cancelled, message: "\(descriptor.fullyQualifiedMethod) was cancelled")))
    }
  }
}

/// The first of several outcomes, handed to one waiting continuation; the tasks that
/// race for it are cancelled once it is in. Threading: any thread; nothing is called
/// under its lock.
final class FirstAnswer<T: Sendable>: Sendable {
  struct State {
    var waiter: CheckedContinuation<T, any Error>?
    var outcome: Result<T, any Error>?
    var tasks: [Task<Void, Never>] = []
  }
  let state = Locked(State())

  func wait(_ c: CheckedContinuation<T, any Error>) {
    let early: Result<T, any Error>? = state.withLock { s in
      if s.outcome == nil { s.waiter = c }
      return s.outcome
    }
    if let early { c.resume(with: early) }
  }

  func started(_ work: Task<Void, Never>, _ timer: Task<Void, Never>?) {
    let tasks = [work] + (timer.map { [$0] } ?? [])
    let over: Bool = state.withLock { s in
      if s.outcome == nil { s.tasks = tasks }
      return s.outcome != nil
    }
    if over { for t in tasks { t.cancel() } }
  }

  func answer(_ outcome: Result<T, any Error>) {
    let (waiter, tasks): (CheckedContinuation<T, any Error>?, [Task<Void, Never>]) = state.withLock { s in
      guard s.outcome == nil else { return (nil, []) }
      s.outcome = outcome
      defer { s.waiter = nil; s.tasks = [] }
      return (s.waiter, s.tasks)
    }
    waiter?.resume(with: outcome)
    for t in tasks { t.cancel() }
  }
}
