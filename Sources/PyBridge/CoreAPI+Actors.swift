import CPython
import Foundation
import Runtime
import RuntimeProto

/// The actor calls of `swiftray._core`. Threading: called with the GIL held; every
/// blocking wait releases it.
extension CoreAPI {
  static let actorMethods: [CoreModule.Method] = [
    .init(name: "create_actor", fn: createActor,
          doc: "create_actor(function_id, class_name, args, resources, placement, options: dict) -> actor_id"),
    .init(name: "submit_actor_task", fn: submitActorTask,
          doc: "submit_actor_task(actor_id, method, name, args, num_returns, max_task_retries) -> [id]"),
    .init(name: "actor_handle_added", fn: actorHandleAdded, doc: "actor_handle_added(actor_id, max_pending_calls)"),
    .init(name: "actor_registered", fn: { _, a, n in
      let args = Args(a, n)
      guard args.need(1, "actor_registered"), let s = session(), let actor = actorID(args[0]) else { return nil }
      withoutGIL { s.core.awaitActorRegistered(actor) }
      return Py.none
    }, doc: "actor_registered(actor_id): waits until the head has this process's registration of the actor"),
    .init(name: "kill_actor", fn: killActor, doc: "kill_actor(actor_id, no_restart[, reason]) -> bool"),
    .init(name: "get_named_actor", fn: getNamedActor, doc: "get_named_actor(name, namespace) -> dict | None"),
    .init(name: "list_named_actors", fn: listNamedActors, doc: "list_named_actors(namespace, all_namespaces) -> [dict]"),
  ]

  static func actorID(_ o: PyPtr?) -> ActorID? {
    guard let b = Py.toBytes(o), let id = TaskID(binary: b) else {
      if PyErr_Occurred() == nil { PyErr_SetString(sr_ExcTypeError(), "not an actor id (expected 24 bytes)") }
      return nil
    }
    return id
  }

  static let stateNames: [Swiftray_ActorInfo.State: String] = [.pending: "PENDING_CREATION", .alive: "ALIVE", .restarting: "RESTARTING", .dead: "DEAD"]

  static func actorInfoDict(_ i: Swiftray_ActorInfo) -> PyPtr {
    Py.dict([
      ("actor_id", Py.bytes(i.actorID)), ("state", Py.str(stateNames[i.state] ?? "UNKNOWN")),
      ("name", Py.str(i.name)), ("namespace", Py.str(i.namespace)), ("class_name", Py.str(i.className)),
      ("handle_meta", Py.bytes(i.handleMeta)), ("num_restarts", Py.int(Int(i.numRestarts))),
      ("max_restarts", Py.int(Int(i.maxRestarts))), ("max_task_retries", Py.int(Int(i.maxTaskRetries))),
      ("detached", Py.bool(i.detached)), ("pid", Py.int(Int(i.pid))), ("detail", Py.str(i.detail)),
      ("job_id", Py.str(JobID(binary: i.jobID)?.hex ?? "")),
    ])
  }

  static let createActor: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(6, "create_actor"), let s = session() else { return nil }
    guard let fid = Py.toBytes(args[0]), let className = Py.toString(args[1]), let items = Py.sequence(args[2]),
      let resources = Py.numberDict(args[3]), let placement = Py.numberDict(args[4]), let opts = args[5]
    else { return nil }
    func item(_ k: String) -> PyPtr? { PyDict_GetItemString(opts, k) }
    guard let maxRestarts = Py.toInt(item("max_restarts")), let maxTaskRetries = Py.toInt(item("max_task_retries")),
      let maxConcurrency = Py.toInt(item("max_concurrency")), let maxPending = Py.toInt(item("max_pending_calls")),
      let name = Py.toString(item("name")), let namespace = Py.toString(item("namespace")),
      let meta = Py.toBytes(item("handle_meta"))
    else { return nil }
    let isAsync = PyObject_IsTrue(item("is_async") ?? sr_False()) == 1
    let detached = PyObject_IsTrue(item("detached") ?? sr_False()) == 1
    guard let strategy = schedulingStrategy(item("scheduling_strategy")) else { return nil }
    let runtimeEnv = item("runtime_env").flatMap { Py.isNone($0) ? "" : Py.toString($0) } ?? ""
    if PyErr_Occurred() != nil { return nil }
    var fn = Swiftray_FunctionDescriptor()
    fn.functionID = Data(fid)
    fn.name = className
    let options = CoreWorker.ActorOptions(
      className: className, resources: ResourceSet(units: resources), placement: ResourceSet(units: placement),
      maxRestarts: maxRestarts, maxTaskRetries: maxTaskRetries, maxConcurrency: maxConcurrency, isAsync: isAsync,
      maxPendingCalls: maxPending, name: name, namespace: namespace, detached: detached, handleMeta: Data(meta),
      strategy: strategy, runtimeEnv: runtimeEnv)
    let core = s.core
    return withTaskArguments(core, items) { taskArgs in
      blocking("creating actor \(className)", { try core.createActor(function: fn, args: taskArgs, options: options) },
               then: { Py.bytes($0.binary) })
    }
  }

  static let submitActorTask: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(6, "submit_actor_task"), let s = session() else { return nil }
    guard let actor = actorID(args[0]), let method = Py.toString(args[1]), let name = Py.toString(args[2]),
      let items = Py.sequence(args[3]), let numReturns = Py.toInt(args[4]), let retries = Py.toInt(args[5])
    else { return nil }
    return withTaskArguments(s.core, items) { taskArgs in
      do throws(SwiftrayError) {
        let ids = try s.core.submitActorTask(actor: actor, method: method, name: name, args: taskArgs,
                                             numReturns: numReturns, maxTaskRetries: retries)
        return Py.list(ids.map { Py.bytes($0.binary) })
      } catch {
        return ErrorMapping.raise(error)
      }
    }
  }

  static let actorHandleAdded: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "actor_handle_added"), let s = session(), let actor = actorID(args[0]),
      let maxPending = Py.toInt(args[1])
    else { return nil }
    s.core.actorHandleAdded(actor, maxPendingCalls: maxPending)
    return Py.none
  }

  static let killActor: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "kill_actor"), let s = session(), let actor = actorID(args[0]) else { return nil }
    let noRestart = PyObject_IsTrue(args[1]) == 1
    // An optional third argument says why (exit_actor: an intended exit).
    let reason = args.count > 2 ? Py.toString(args[2]) : nil
    return blocking("KillActor", { try s.core.killActor(actor, noRestart: noRestart, reason: reason) }, then: { Py.bool($0) })
  }

  static let getNamedActor: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "get_named_actor"), let s = session(), let name = Py.toString(args[0]),
      let ns = Py.toString(args[1])
    else { return nil }
    return blocking("GetNamedActor", { try s.core.namedActor(name, namespace: ns) },
                    then: { $0.map(actorInfoDict) ?? Py.none })
  }

  static let listNamedActors: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "list_named_actors"), let s = session(), let ns = Py.toString(args[0]) else { return nil }
    let all = PyObject_IsTrue(args[1]) == 1
    return blocking("ListNamedActors", { try s.core.namedActors(namespace: ns, all: all) },
                    then: { Py.list($0.map(actorInfoDict)) })
  }
}
