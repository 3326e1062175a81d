import CPython
import Dispatch
import Foundation
import Runtime
import RuntimeProto

/// Streaming generators in `swiftray._core`: the worker's reports, the reader's next
/// item. Threading: called with the GIL held; every blocking wait releases it.
extension CoreAPI {
  static let generatorMethods: [CoreModule.Method] = [
    .init(name: "report_generator_item", fn: reportGeneratorItem,
          doc: "report_generator_item(token, index, (data, metadata)) -> 0 go on | 1 stop (reader gone) | 2 paused (call wait_generator_consumed)"),
    .init(name: "wait_generator_consumed", fn: waitGeneratorConsumed,
          doc: "wait_generator_consumed(token, index) -> bool: blocks while the reader is too far behind; True: stop"),
    .init(name: "generator_owner", fn: { _, a, n in
      let args = Args(a, n)
      guard args.need(1, "generator_owner"), let e = streamingExecution(args[0]) else { return nil }
      return Py.bytes((try? e.spec.owner.serializedBytes()) ?? [UInt8]())
    }, doc: "generator_owner(token) -> bytes: the owner's address of the generator running under token"),
    .init(name: "generator_next", fn: generatorNext,
          doc: "generator_next(task_id, timeout) -> (0, id) item | (1, id) error | (2, None) end | (3, None) timed out"),
    .init(name: "generator_close", fn: { _, a, n in
      let args = Args(a, n)
      guard args.need(1, "generator_close"), let tid = taskID(args[0]) else { return nil }
      // A generator dropped at interpreter exit, after shutdown: nothing to release.
      guard let s = Session.active else { return Py.none }
      withoutGIL { s.core.generatorClosed(tid) }
      return Py.none
    }, doc: "generator_close(task_id): the reader dropped the generator; its unread items are released"),
    .init(name: "generator_awaited", fn: { _, a, n in
      let args = Args(a, n)
      guard args.need(1, "generator_awaited"), let s = session(), let tid = taskID(args[0]) else { return nil }
      return Py.list(s.core.generatorAwaited(tid).map { Py.bytes($0.binary) })
    }, doc: "generator_awaited(task_id) -> [id]: what a wait on the generator waits for (its next item, its end)"),
    .init(name: "notify_when_generator_ready", fn: { _, a, n in
      let args = Args(a, n)
      guard args.need(2, "notify_when_generator_ready"), let s = session(), let tid = taskID(args[0]),
        let t = Py.toInt(args[1])
      else { return nil }
      guard t >= 0 else { return Py.raise(sr_ExcValueError(), "a token is a non-negative int") }
      s.core.notifyWhenGeneratorReady(tid, token: UInt64(t))
      return Py.none
    }, doc: "notify_when_generator_ready(task_id, token): token is in take_available() once generator_next would not wait"),
  ]

  static func taskID(_ o: PyPtr?) -> TaskID? {
    guard let b = Py.toBytes(o), let id = TaskID(binary: b) else {
      if PyErr_Occurred() == nil { PyErr_SetString(sr_ExcTypeError(), "not a task id (expected 24 bytes)") }
      return nil
    }
    return id
  }

  /// The running execution of `token` (registered by `taskTuple` until its reply).
  static func streamingExecution(_ o: PyPtr?) -> CoreWorker.Execution? {
    guard let token = Py.toInt(o) else { return nil }
    guard let e = deferred[token], e.spec.streaming else {
      _ = ErrorMapping.raise(SwiftrayError(.invalidArgument, "no streaming generator runs under token \(token)"))
      return nil
    }
    return e
  }

  static let reportGeneratorItem: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(3, "report_generator_item"), let s = session(), let e = streamingExecution(args[0]),
      let index = Py.toInt(args[1]), let pair = Py.sequence(args[2]), pair.count == 2, let meta = Py.toData(pair[1])
    else { return nil }
    guard let tid = TaskID(binary: e.spec.taskID), index >= 0, index <= GeneratorStreams<Int>.maxIndex else {
      return ErrorMapping.raise(SwiftrayError(.invalidArgument, "item index \(index) is out of range"))
    }
    let core = s.core
    let id = ObjectID.forReturn(of: tid, index: index + 1)
    guard var obj = StoredValues.placeReturn(core, id, owner: e.spec.owner, pair[0]) else { return nil }
    if ErrorObject.code(fromMetadata: obj.metadata) == nil { obj.metadata = meta }
    let spec = e.spec
    return blocking("ReportGeneratorItem", {
      // Refs inside the item: the owner counts itself their borrower before it holds them.
      if !obj.nestedRefs.isEmpty, let owner = WorkerID(binary: spec.owner.workerID) {
        core.registerReceiver(owner, node: spec.owner.nodeID, of: obj.nestedRefs)
      }
      return try core.reportGeneratorItem(spec, index: index, object: obj)
    }, then: { Py.int($0.rawValue) })
  }

  static let waitGeneratorConsumed: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "wait_generator_consumed"), let s = session(), let e = streamingExecution(args[0]),
      let index = Py.toInt(args[1])
    else { return nil }
    let spec = e.spec
    return blocking("WaitGeneratorConsumed", { try s.core.waitGeneratorConsumed(spec, index: index) }, then: Py.bool)
  }

  /// Waits in 100 ms slices with the GIL released, checking for Ctrl-C between them.
  static let generatorNext: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "generator_next"), let s = session(), let tid = taskID(args[0]),
      let timeout = timeoutNanos(args[1])
    else { return nil }
    let core = s.core
    let slice: UInt64 = 100_000_000
    let start = DispatchTime.now().uptimeNanoseconds
    let blocked = core.currentTaskID != nil
    var marked = false
    defer { if marked { core.setBlocked(false) } }
    while true {
      let elapsed = DispatchTime.now().uptimeNanoseconds &- start
      let left = timeout.map { $0 > elapsed ? $0 - elapsed : 0 }
      let wait = min(left ?? slice, slice)
      switch withoutGIL({ core.generatorNext(tid, timeoutNanos: wait) }) {
      case .item(let id): return Py.tuple([Py.int(0), Py.bytes(id.binary)])
      case .error(let id): return Py.tuple([Py.int(1), Py.bytes(id.binary)])
      case .end: return Py.tuple([Py.int(2), Py.none])
      case .timedOut:
        if let left, left <= wait { return Py.tuple([Py.int(3), Py.none]) }
        // A task that reads a generator gives its CPU back while it waits, as in `get`.
        if blocked && !marked { core.setBlocked(true); marked = true }
        if PyErr_CheckSignals() != 0 { return nil }
        if let lost = core.localNodeLost.withLock({ $0 }) { return ErrorMapping.raise(lost) }
      }
    }
  }
}
