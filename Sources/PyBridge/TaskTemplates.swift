import CPython
import Foundation
import Runtime
import RuntimeProto

/// Task templates (`CoreWorker.TaskTemplate`) of recent `submit_task` calls, keyed by the
/// identity of the Python objects passed for the function and its options.
///
/// Threading: called only with the GIL held, which is the lock of `entries`.
/// Why identity: the language layer derives these objects once per function and options
/// (`RemoteFunction._submission`) and passes the same ones on every call, and never
/// mutates them. Each entry holds a reference to its objects, so an address cannot be
/// reused by another object while its entry lives. A hit parses nothing and allocates
/// nothing, and every task of the burst shares the template's buffers.
enum TaskTemplates {
  /// Bounded: a program with more distinct (function, options) pairs than this rebuilds
  /// the cache from empty, which costs one parse per pair.
  static let limit = 256

  /// Plain fields, no arrays: building a key allocates nothing.
  struct Key: Hashable {
    let function: UInt, name: UInt, resources: UInt, retryFilter: UInt, strategy: UInt, runtimeEnv: UInt
    let numReturns: Int, maxRetries: Int, retryExceptions: Bool
  }

  struct Entry {
    let held: [PyBox]
    let template: CoreWorker.TaskTemplate
  }

  nonisolated(unsafe) static var entries: [Key: Entry] = [:]

  /// `submit_task`'s arguments 0, 1, 3…9 as a template; nil with a Python error set.
  /// Argument 9, the runtime environment's canonical JSON, may be left out ("").
  static func template(_ args: Args) -> CoreWorker.TaskTemplate? {
    let strategyArg = args.count > 8 ? args[8] : nil
    let envArg = args.count > 9 ? args[9] : nil
    guard let numReturns = Py.toInt(args[3]), let maxRetries = Py.toInt(args[5]) else { return nil }
    let retryExceptions = PyObject_IsTrue(args[6]) == 1
    let key = Key(function: UInt(bitPattern: args[0]), name: UInt(bitPattern: args[1]), resources: UInt(bitPattern: args[4]),
                  retryFilter: UInt(bitPattern: args[7]), strategy: UInt(bitPattern: strategyArg), runtimeEnv: UInt(bitPattern: envArg),
                  numReturns: numReturns, maxRetries: maxRetries, retryExceptions: retryExceptions)
    if let hit = entries[key] { return hit.template }
    guard let fid = Py.toBytes(args[0]), let name = Py.toString(args[1]), let resources = Py.numberDict(args[4]),
      let filter = Py.toBytes(args[7]), let strategy = CoreAPI.schedulingStrategy(strategyArg),
      let runtimeEnv = envArg.map({ Py.isNone($0) ? "" : Py.toString($0) }) ?? ""
    else { return nil }
    var fn = Swiftray_FunctionDescriptor()
    fn.functionID = Data(fid)
    fn.name = name
    let template = CoreWorker.TaskTemplate(
      function: fn, name: name, numReturns: numReturns, resources: ResourceSet(units: resources),
      maxRetries: maxRetries, retryExceptions: retryExceptions, retryExceptionFilter: Data(filter), strategy: strategy,
      runtimeEnv: runtimeEnv)
    if entries.count >= limit {
      for e in entries.values { e.held.forEach { $0.release() } }
      entries.removeAll()
    }
    let held = [args[0], args[1], args[4], args[7], strategyArg, envArg].compactMap { $0 }.map(PyBox.init)
    entries[key] = Entry(held: held, template: template)
    return template
  }
}
