import CPython
import Foundation
import NIOPosix
import Runtime
import RuntimeProto

/// The runtime calls exposed to the Python layer as `swiftray._core.<name>`.
/// Threading: called with the GIL held; every blocking wait releases it.
enum CoreAPI {
  static let methods: [CoreModule.Method] = [
    .init(name: "init", fn: initCluster, doc: "init(options: dict) -> dict: start a local cluster and connect as its driver."),
    .init(name: "connect_driver", fn: connectDriver, doc: "connect_driver(session_dir, log_to_driver) -> dict: join a running cluster on this machine as a driver."),
    .init(name: "newest_session", fn: { _, a, n in
      guard let root = Py.toString(Args(a, n)[0]) else { return nil }
      return LocalCluster.newestLiveSession(root: root).map { Py.str($0) } ?? Py.none
    }, doc: "newest_session(root) -> str | None: the newest running cluster's session directory."),
    .init(name: "usable_memory", fn: { _, _, _ in Py.int(Int(clamping: MachineMemory.current)) },
          doc: "usable_memory() -> int: bytes of memory this process may use (its container's limit, else the machine's)."),
    .init(name: "local_node_session", fn: { _, a, n in
      guard let text = Py.toString(Args(a, n)[0]), let ep = Endpoint(text) else { return nil }
      return blocking("asking the cluster at \(text) for its nodes", {
        let auth = try ClusterAuth.required(for: "join the cluster at \(text)")
        return try LocalCluster.localNodeSession(control: ep, group: .singletonMultiThreadedEventLoopGroup, auth: auth)
      }, then: { $0.map { Py.str($0) } ?? Py.none })
    }, doc: "local_node_session(control_endpoint) -> str | None: a node of that cluster on this machine."),
    .init(name: "connect_worker", fn: connectWorker, doc: "Connect this worker process to its NodeManager (from the environment)."),
    .init(name: "shutdown", fn: { _, _, _ in shutdown() }, doc: "Stop this process's core (and the local cluster it started)."),
    .init(name: "is_initialized", fn: { _, _, _ in Py.bool(Session.active != nil) }, doc: "True when connected."),
    .init(name: "submit_task", fn: submitTask, doc: "submit_task(function_id, name, args, num_returns, resources, max_retries, retry_exceptions, retry_filter) -> [id]; args: (0, value) | (1, id)"),
    .init(name: "put", fn: put, doc: "put(data: bytes) -> id"),
    .init(name: "get", fn: get, doc: "get(ids, timeout) -> [data | (data, metadata) | exception]"),
    .init(name: "wait", fn: wait, doc: "wait(ids, num_returns, timeout) -> [bool]"),
    .init(name: "wait_refs", fn: waitRefs, doc: "wait_refs(refs, num_returns, timeout) -> (ready, not_ready) | None"),
    .init(name: "add_local_ref", fn: addLocalRef, doc: "add_local_ref(id, owner: bytes | None)"),
    .init(name: "set_ref_type", fn: setRefType, doc: "set_ref_type(ObjectRef): the class rebuild_ref makes"),
    .init(name: "rebuild_ref", fn: rebuildRef, doc: "rebuild_ref(id, owner: bytes | None) -> ObjectRef (unpickling)"),
    .init(name: "remove_local_ref", fn: removeLocalRef, doc: "remove_local_ref(id)"),
    .init(name: "ref_escaped", fn: refEscaped, doc: "ref_escaped(id): the ref was serialized into a value."),
    .init(name: "owner_address", fn: ownerAddress, doc: "owner_address(id) -> bytes"),
    .init(name: "cancel", fn: cancel, doc: "cancel(id, force) -> bool"),
    .init(name: "kv_put", fn: kvPut, doc: "kv_put(namespace, key, value, overwrite) -> bool"),
    .init(name: "kv_get", fn: kvGet, doc: "kv_get(namespace, key) -> bytes | None"),
    .init(name: "package_exists", fn: packageExists, doc: "package_exists(uri) -> bool: the head's package store holds it"),
    .init(name: "package_upload", fn: packageUpload, doc: "package_upload(uri, data): put a runtime_env package (checked against its SHA-256)"),
    .init(name: "prepare_runtime_env", fn: prepareRuntimeEnv, doc: "prepare_runtime_env(json): have this node set the environment up now (eager_install)"),
    .init(name: "nodes", fn: nodes, doc: "nodes() -> [dict]"),
    .init(name: "query_state", fn: queryState,
          doc: "query_state(kind, filters: [(key, op, value)], limit, detail) -> (json: bytes, total, returned, dropped, warnings)"),
    .init(name: "flush_task_events", fn: { _, _, _ in
      guard let s = session() else { return nil }
      withoutGIL { s.core.flushTaskEvents() }
      return Py.none
    }, doc: "flush_task_events(): send this process's task events to the head now"),
    .init(name: "metric_define", fn: metricDefine,
          doc: "metric_define(kind: 0 counter | 1 gauge | 2 histogram, name, description, tag_keys, boundaries) -> handle"),
    .init(name: "metric_record", fn: { _, a, n in
      let args = Args(a, n)
      guard args.need(3, "metric_record"), let s = session(), let handle = Py.toInt(args[0]),
        let value = Py.toDouble(args[1]), let tags = Py.sequence(args[2])?.compactMap({ Py.toString($0) })
      else { return nil }
      s.core.recordMetric(handle: handle, tags: tags, value: value)
      return Py.none
    }, doc: "metric_record(handle, value, tag_values): one record of a user metric (sent with the next report)"),
    .init(name: "node_stats", fn: nodeStats, doc: "node_stats() -> dict (this node's workers and resources)"),
    .init(name: "context", fn: context, doc: "context() -> dict of job, node, worker and task ids"),
    .init(name: "memory_summary", fn: memorySummary, doc: "memory_summary() -> str: the text of `swiftray memory` for this node"),
    .init(name: "store_stats", fn: storeStats, doc: "store_stats() -> dict: this node's object store (capacity, used, pinned, spilled)"),
    .init(name: "core_stats", fn: coreStats, doc: "core_stats() -> dict: sizes of this process's ownership tables"),
    .init(name: "worker_loop", fn: workerLoop, doc: "worker_loop(execute): run pushed tasks on this (main) thread until shutdown; execute returning None defers the reply."),
    .init(name: "release_held_replies", fn: { _, _, _ in
      session().map { s in withoutGIL { s.core.releaseHeldReplies() }; return Py.none }
    }, doc: "release_held_replies(): sends now the replies of finished tasks held to go with a later one (before this process ends on purpose)."),
    .init(name: "take_interrupt", fn: { _, _, _ in
      guard let s = session() else { return nil }
      return Py.bool(s.core.takeInterrupt())
    }, doc: "take_interrupt(): True when a cancel aimed at the running task sent the SIGINT being handled."),
    .init(name: "take_executions", fn: takeExecutions, doc: "take_executions(max): up to max tasks pushed here, without waiting, as worker_loop hands them to execute (each replies with finish_task)."),
    .init(name: "spin_until_readable", fn: spinUntilReadable, doc: "spin_until_readable(fd, timeout): looks at fd without sleeping for a moment (GIL released), as the core does for its next task; True when fd became readable. For an async actor's event loop about to sleep (timeout: its wait in seconds, or None)."),
    .init(name: "executions_fd", fn: { _, _, _ in session().map { Py.int(Int($0.core.executionsFD)) } }, doc: "executions_fd(): readable when take_executions may find a task (for an event loop to watch)."),
    .init(name: "notify_when_available", fn: { _, a, n in
      let args = Args(a, n)
      guard args.need(2, "notify_when_available"), let s = session(), let id = objectID(args[0]), let t = Py.toInt(args[1]) else { return nil }
      guard t >= 0 else { return Py.raise(sr_ExcValueError(), "a token is a non-negative int") }
      s.core.notifyWhenAvailable(id, token: UInt64(t))
      return Py.none
    }, doc: "notify_when_available(id, token): token is in take_available() once the object is available here (readable: available_fd())."),
    .init(name: "available_fd", fn: { _, _, _ in session().map { Py.int(Int($0.core.availability.fd)) } },
          doc: "available_fd(): readable while take_available() has tokens."),
    .init(name: "take_available", fn: { _, _, _ in
      guard let s = session() else { return nil }
      return Py.list(s.core.availability.take().map { Py.int(Int(truncatingIfNeeded: $0)) })
    }, doc: "take_available() -> [token]: the tokens whose objects became available since the last call."),
    .init(name: "leave_worker_loop", fn: { _, _, _ in leaveLoop = true; return Py.none }, doc: "leave_worker_loop(): worker_loop returns True after the task running now."),
    .init(name: "finish_task", fn: finishTask, doc: "finish_task(token, result[, more]): reply for a deferred execution (threaded/async actors); more: the calling thread runs another call next, so the reply may wait for that one's."),
  ] + actorMethods + placementGroupMethods + generatorMethods

  static func session() -> Session? {
    if let s = Session.active { return s }
    _ = ErrorMapping.raise(SwiftrayError(.notInitialized, "swiftray is not initialized: call swiftray.init() first."))
    return nil
  }

  /// Reads an id straight out of a `bytes` object's buffer (hot: `wait` on 1k refs).
  static func objectID(_ o: PyPtr?) -> ObjectID? {
    guard let o, sr_IsBytes(o) != 0, sr_BytesSize(o) == 28 else {
      PyErr_SetString(sr_ExcTypeError(), "not an object id (expected 28 bytes)"); return nil
    }
    let p = UnsafeRawPointer(sr_BytesData(o)!)
    let task = TaskID(prefix: UInt64(bigEndian: p.loadUnaligned(as: UInt64.self)),
                      counter: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                      job: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self)))
    return ObjectID(task: task, index: UInt32(bigEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
  }

  static func objectIDs(_ o: PyPtr?) -> [ObjectID]? {
    guard let items = Py.sequence(o) else { return nil }
    var out: [ObjectID] = []
    out.reserveCapacity(items.count)
    for it in items { guard let id = objectID(it) else { return nil }; out.append(id) }
    return out
  }

  /// The last owner address parsed: refs arrive in runs from one owner (a list of 10k
  /// refs unpickled at once), so parsing each would dominate. Guarded by the GIL;
  /// forgotten when a session starts or ends.
  nonisolated(unsafe) static var lastAddress: AddressMemo?

  /// A parsed owner address. A class, not a tuple: reading a tuple copied the bytes and
  /// every field of the address. Threading: the GIL.
  final class AddressMemo {
    let bytes: [UInt8]
    let address: Swiftray_Address
    private var selfFor: ObjectIdentifier?
    private var isSelfFor = false
    init(_ bytes: [UInt8], _ address: Swiftray_Address) { self.bytes = bytes; self.address = address }
    /// Whether this is the address of `core`'s own process (compared once per core).
    func isSelf(_ core: CoreWorker) -> Bool {
      let k = ObjectIdentifier(core)
      if selfFor != k { selfFor = k; isSelfFor = address.workerID == core.address.workerID }
      return isSelfFor
    }
  }

  static func addressMemo(_ o: PyPtr?) -> AddressMemo? {
    guard let o, !Py.isNone(o), sr_IsBytes(o) != 0 else { PyErr_Clear(); return nil }
    let n = sr_BytesSize(o)
    let raw = UnsafeRawBufferPointer(start: sr_BytesData(o), count: n)
    // memcmp: a generic elementwise compare cost more than the rest of add_local_ref
    // when a value holding thousands of refs from one owner is unpickled.
    if let last = lastAddress, last.bytes.count == n,
       n == 0 || last.bytes.withUnsafeBytes({ memcmp($0.baseAddress!, raw.baseAddress!, n) }) == 0 {
      return last
    }
    let bytes = [UInt8](raw)
    guard let a = try? Swiftray_Address(serializedBytes: bytes) else { return nil }
    let memo = AddressMemo(bytes, a)
    lastAddress = memo
    return memo
  }

  static func address(_ o: PyPtr?) -> Swiftray_Address? { addressMemo(o)?.address }

  /// A Python ObjectRef of `id` was made; `o`: its owner's address (bytes), or None for
  /// this process. A borrowed ref's address is copied only when its owner is new here.
  static func addLocalRef(_ core: CoreWorker, _ id: ObjectID, owner o: PyPtr?) {
    if let memo = addressMemo(o), !memo.isSelf(core) {
      core.addBorrowedRef(id) { memo.address }
    } else {
      core.addLocalRef(id, owner: nil)
    }
  }

  /// Seconds (None = forever) to nanoseconds.
  static func timeoutNanos(_ o: PyPtr?) -> UInt64?? {
    if Py.isNone(o) { return .some(nil) }
    guard let t = Py.toDouble(o) else { return nil }
    return .some(UInt64(max(0, t) * 1e9))
  }

  /// Runs `body` with the GIL released (it blocks on the runtime), then builds the
  /// Python result from its value with the GIL held; a thrown error becomes the mapped
  /// Python exception.
  static func blocking<T>(_ what: String, _ body: () throws -> T, then build: (T) -> PyPtr?) -> PyPtr? {
    let r: Result<T, SwiftrayError> = withoutGIL {
      do { return .success(try body()) }
      catch let e as SwiftrayError { return .failure(e) }
      catch { return .failure(SwiftrayError(.system, "\(what) failed: \(error)")) }
    }
    switch r {
    case .success(let v): return build(v)
    case .failure(let e): return ErrorMapping.raise(e)
    }
  }

  // MARK: lifecycle

  static let initCluster: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "init"), let opts = args[0] else { return nil }
    if Session.active != nil { return ErrorMapping.raise(SwiftrayError(.system, "already initialized")) }
    func item(_ k: String) -> PyPtr? { PyDict_GetItemString(opts, k) }
    guard let resources = Py.numberDict(item("resources")),
      let exe = Py.toString(item("worker_executable")),
      let python = Py.toString(item("python")),
      let sysPath = Py.sequence(item("sys_path"))?.compactMap({ Py.toString($0) }),
      let prestart = Py.toInt(item("prestart")),
      let systemConfig = Py.numberDict(item("system_config"))
    else { return nil }
    let logToDriver = PyObject_IsTrue(item("log_to_driver") ?? sr_True()) == 1
    let storeMemory = Py.isNone(item("object_store_memory")) ? nil : Py.toInt(item("object_store_memory"))
    let spillDir = Py.isNone(item("object_spilling_directory")) ? nil : Py.toString(item("object_spilling_directory"))
    // Checked in Python (0 ... 65535); a plain init() opens no TCP port.
    let metricsPort = Py.isNone(item("metrics_export_port")) ? nil : Py.toInt(item("metrics_export_port"))
    // Checked in Python too: only with include_dashboard=True.
    let dashboardHost = Py.isNone(item("dashboard_host")) ? nil : Py.toString(item("dashboard_host"))
    let dashboardPort = Py.isNone(item("dashboard_port")) ? nil : Py.toInt(item("dashboard_port"))
    if PyErr_Occurred() != nil { return nil }
    var env = ProcessInfo.processInfo.environment
    env["SWIFTRAY_PYTHON"] = python
    env["SWIFTRAY_SYS_PATH"] = (try? String(data: JSONEncoder().encode(sysPath), encoding: .utf8)) ?? "[]"
    return blocking("starting the local cluster", {
      let config = try Config.resolve(overrides: systemConfig.mapValues { Int(exactly: $0.rounded(.towardZero)) ?? (($0 < 0) ? Int.min : Int.max) })
      let group = MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup
      // A cluster of its own: the token the environment names, else one of its own (kept
      // in the session, for other drivers of this user on this machine; never the
      // machine's ~/.swiftray token, which belongs to its daemons).
      let auth = try ClusterAuth.fromEnvironment()
        ?? ClusterAuth(token: ClusterAuth.generate(), source: "this local cluster's session")
      let cluster = try LocalCluster.start(
        resources: ResourceSet(units: resources), config: config, workerExecutable: exe,
        workerEnvironment: env, prestartWorkers: prestart, objectStoreMemory: storeMemory,
        spillDirectory: spillDir, group: group, auth: auth, metricsExportPort: metricsPort,
        dashboard: dashboardHost.map { Dashboard.Options(host: $0, port: dashboardPort ?? 8265,
                                                         assets: Dashboard.Options.assets(besideExecutable: exe),
                                                         fallBack: dashboardPort == nil) })
      let core: CoreWorker
      do {
        core = try CoreWorker(
          options: .init(isDriver: true, workerID: .random(), nodeID: cluster.nodeID,
                         nodeManager: cluster.nodeManagerEndpoint, control: cluster.controlEndpoint,
                         sessionDir: cluster.sessionDir, config: config, auth: auth),
          group: group, jobID: nil)
      } catch {
        cluster.shutdown()  // a half-started cluster must not leave workers behind
        throw error
      }
      if logToDriver { core.forwardWorkerLogs() }
      if let head = cluster.control {
        core.localHead.withLock { $0 = { [weak head] r, records in try await head?.takeTaskEvents(r, records: records) } }
      }
      return Session(core: core, cluster: cluster)
    }, then: activate)
  }

  static func activate(_ s: Session) -> PyPtr? {
    Session.current.withLock { $0 = s }
    lastAddress = nil
    return contextDict(s)
  }

  static let connectDriver: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "connect_driver"), let session = Py.toString(args[0]) else { return nil }
    if Session.active != nil { return ErrorMapping.raise(SwiftrayError(.system, "already initialized")) }
    let logToDriver = PyObject_IsTrue(args[1]) == 1
    return blocking("connecting to the cluster at \(session)", {
      let config = try Config.resolve()
      let group = MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup
      let nm = Endpoint.unix(SessionPaths.socket(session, "raylet.sock"))
      let control = LocalCluster.controlEndpoint(session: session)
      let auth = try ClusterAuth.required(for: "join the cluster of session \(session)", session: session)
      let node = try LocalCluster.nodeInfo(nodeManager: nm, group: group, auth: auth)
      guard let nodeID = NodeID(binary: node.nodeID) else { throw SwiftrayError(.system, "the node at \(nm) sent no node id") }
      let core = try CoreWorker(
        options: .init(isDriver: true, workerID: .random(), nodeID: nodeID, nodeManager: nm, control: control,
                       sessionDir: session, config: config,
                       nodeIP: node.ipAddress.isEmpty ? nil : node.ipAddress, auth: auth),
        group: group, jobID: nil)
      if logToDriver { core.forwardWorkerLogs() }
      return Session(core: core, cluster: nil)
    }, then: activate)
  }

  static let connectWorker: CoreModule.FastFn = { _, _, _ in
    let env = ProcessInfo.processInfo.environment
    return blocking("connecting the worker to its node", {
      // Its NodeManager put the ids, endpoints and the cluster's token in its environment.
      let options = try CoreWorker.Options.worker(environment: env, config: try Config.resolve())
      // The node's lease-grant key: kept by the core, gone from the environment.
      unsetenv(LeaseGrants.environmentKey)
      let core = try CoreWorker(options: options, group: MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup,
                                jobID: nil)
      return Session(core: core, cluster: nil)
    }, then: activate)
  }

  static func shutdown() -> PyPtr? {
    lastAddress = nil
    guard let s = Session.current.withLock({ cur -> Session? in let s = cur; cur = nil; return s }) else { return Py.none }
    withoutGIL { s.shutdown() }
    return Py.none
  }

  static func contextDict(_ s: Session) -> PyPtr {
    let core = s.core
    return Py.dict([
      ("job_id", Py.str(core.currentJobID.hex)),
      ("node_id", Py.str(core.options.nodeID.hex)),
      ("worker_id", Py.str(core.options.workerID.hex)),
      ("task_id", core.currentTaskID.map { Py.str($0.hex) } ?? Py.none),
      ("is_driver", Py.bool(core.options.isDriver)),
      ("session_dir", Py.str(core.options.sessionDir)),
      ("node_manager", Py.str(core.options.nodeManager.description)),
      ("control", Py.str(core.options.control.description)),
      // The node's address as the cluster lists it (a node without networking: loopback).
      ("node_ip", Py.str(core.options.nodeIP ?? "127.0.0.1")),
      // The login link of the dashboard this process serves (init(include_dashboard=True)).
      ("dashboard_login_url", s.cluster?.dashboardServer.map { Py.str(Dashboard.loginURL(host: $0.host, port: $0.port, auth: s.core.options.auth)) } ?? Py.none),
      ("dashboard_url", s.cluster?.dashboardServer.map { Py.str("\(NodeAddress.hostForURL($0.host)):\($0.port)") } ?? Py.none),
    ])
  }

  static let coreStats: CoreModule.FastFn = { _, _, _ in
    guard let s = session() else { return nil }
    let st = s.core.stats()
    return Py.dict([
      ("objects", Py.int(st.objects)), ("object_bytes", Py.int(st.objectBytes)),
      ("references", Py.int(st.references)), ("tasks", Py.int(st.tasks)),
      ("pending_tasks", Py.int(st.pendingTasks)), ("leases", Py.int(st.leases)),
      ("stored_objects", Py.int(st.storedObjects)), ("stored_bytes", Py.int(st.storedBytes)),
      ("live_store_views", Py.int(StoredValues.liveViews)), ("waited_objects", Py.int(st.waitedObjects)),
    ])
  }

  static func storeStatsDict(_ st: Swiftray_StoreStats) -> PyPtr {
    Py.dict([
      ("capacity", Py.int(Int(st.capacity))), ("used", Py.int(Int(st.used))),
      ("pinned_bytes", Py.int(Int(st.pinnedBytes))), ("spilled_bytes", Py.int(Int(st.spilledBytes))),
      ("num_objects", Py.int(Int(st.numObjects))), ("num_pinned", Py.int(Int(st.numPinned))),
      ("num_spilled", Py.int(Int(st.numSpilled))), ("num_readers", Py.int(Int(st.numReaders))),
      ("bytes_spilled_total", Py.int(Int(st.bytesSpilledTotal))),
      ("bytes_restored_total", Py.int(Int(st.bytesRestoredTotal))),
      ("num_secondary", Py.int(Int(st.numSecondary))), ("bytes_pulled_total", Py.int(Int(st.bytesPulledTotal))),
      ("bytes_evicted_total", Py.int(Int(st.bytesEvictedTotal))),
      ("arena_path", Py.str(st.arenaPath)), ("spill_dir", Py.str(st.spillDir)),
      ("remote_address", Py.str(st.remoteAddress)),
    ])
  }

  static let storeStats: CoreModule.FastFn = { _, _, _ in
    guard let s = session() else { return nil }
    return blocking("StoreStats", { try s.core.objectStore.stats() }, then: storeStatsDict)
  }

  static let memorySummary: CoreModule.FastFn = { _, _, _ in
    guard let s = session() else { return nil }
    let node = "node \(s.core.options.nodeID.hex.prefix(12))"
    return blocking("StoreStats", { try s.core.objectStore.stats() }, then: { Py.str(MemoryReport.format($0, node: node)) })
  }

  static let context: CoreModule.FastFn = { _, _, _ in
    guard let s = session() else { return nil }
    return contextDict(s)
  }

  // MARK: tasks and objects

  static let submitTask: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(8, "submit_task"), let s = session(), let items = Py.sequence(args[2]) else { return nil }
    guard let template = TaskTemplates.template(args) else { return nil }
    return withTaskArguments(s.core, items) { taskArgs in
      Py.list(s.core.submitTask(template, args: taskArgs).map { Py.bytes($0.binary) })
    }
  }

  /// Python's `[(0, packed value) | (1, id, owner)]` as task arguments. Large values go
  /// to the store first and travel as refs (`stored`: the caller drops its temporary
  /// local references once the task holds them). Nil with a Python error set.
  /// Runs `body` with `items` as task arguments, then drops the temporary local refs of
  /// values it placed in the store (the submitted task holds them by then).
  static func withTaskArguments(_ core: CoreWorker, _ items: [PyPtr], _ body: ([CoreWorker.TaskArgument]) -> PyPtr?) -> PyPtr? {
    var stored: [ObjectID] = []
    defer { stored.forEach { core.removeLocalRef($0) } }
    guard let args = taskArguments(core, items, stored: &stored) else { return nil }
    return body(args)
  }

  static func taskArguments(_ core: CoreWorker, _ items: [PyPtr], stored: inout [ObjectID]) -> [CoreWorker.TaskArgument]? {
    var taskArgs: [CoreWorker.TaskArgument] = []
    taskArgs.reserveCapacity(items.count)
    for it in items {
      guard let parts = Py.sequence(it), parts.count >= 2, let kind = Py.toInt(parts[0]) else { return nil }
      if kind == 0 {
        switch StoredValues.place(core, parts[1]) {
        case nil: return nil
        case .inline(let v)?:
          taskArgs.append(.init(.value(v)))
        case .stored(let id)?:
          stored.append(id)
          taskArgs.append(.init(.ref(id, owner: nil)))
        }
      } else {
        guard let id = objectID(parts[1]) else { return nil }
        let owner = parts.count > 2 ? address(parts[2]) : nil
        taskArgs.append(.init(.ref(id, owner: owner)))
      }
    }
    return taskArgs
  }

  /// None | "SPREAD" | (node_id_hex, soft) | ("PG", group_id_bytes, bundle_index,
  /// capture_child_tasks) as a strategy; nil with a Python error set.
  static func schedulingStrategy(_ o: PyPtr?) -> SchedulingKey.Strategy? {
    guard let o, !Py.isNone(o) else { return .default }
    if let text = Py.toString(o) {
      if text == "SPREAD" { return .spread }
      if text == "DEFAULT" { return .default }
    }
    PyErr_Clear()
    if let parts = Py.sequence(o), parts.count == 2, let hex = Py.toString(parts[0]), let node = NodeID(hex: hex) {
      return .nodeAffinity(node, soft: PyObject_IsTrue(parts[1]) == 1)
    }
    PyErr_Clear()
    if let parts = Py.sequence(o), parts.count == 4, Py.toString(parts[0]) == "PG", let raw = Py.toBytes(parts[1]),
       let group = PlacementGroupID(binary: raw), let index = Py.toInt(parts[2]) {
      return .placementGroup(group, index: index, captureChildTasks: PyObject_IsTrue(parts[3]) == 1)
    }
    PyErr_Clear()
    PyErr_SetString(sr_ExcValueError(), "unknown scheduling strategy")
    return nil
  }

  static let put: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "put"), let s = session() else { return nil }
    switch StoredValues.place(s.core, args[0]) {
    case nil: return nil
    case .stored(let id)?: return Py.bytes(id.binary)
    case .inline(let o)?:
      return Py.bytes(s.core.put(o).binary)
    }
  }

  /// Waits for `needed` of `ids` in 100 ms slices with the GIL released, checking for
  /// Ctrl-C between slices. The wait is registered once for all slices (a slice costs
  /// nothing per id). Returns false on timeout, nil with an exception set.
  static func blockingWait(_ core: CoreWorker, _ ids: [ObjectID], needed: Int, timeout: UInt64?) -> Bool? {
    let slice: UInt64 = 100_000_000
    let start = DispatchTime.now().uptimeNanoseconds
    // A ready get registers nothing and never notifies the NodeManager.
    let pending = core.startWait(ids, needed: needed)
    if pending.isReady { return true }
    let blocked = core.currentTaskID != nil
    if blocked { core.setBlocked(true) }
    defer { if blocked { core.setBlocked(false) } }
    while true {
      let elapsed = DispatchTime.now().uptimeNanoseconds - start
      let left = timeout.map { $0 > elapsed ? $0 - elapsed : 0 }
      let wait = min(left ?? slice, slice)
      if withoutGIL({ core.wait(pending, nanos: wait) }) { return core.endWait(pending) }
      if PyErr_CheckSignals() != 0 { _ = core.endWait(pending); return nil }
      if let lost = core.localNodeLost.withLock({ $0 }) {
        if core.endWait(pending) { return true }
        _ = ErrorMapping.raise(lost)
        return nil
      }
      if let left, left <= wait { return core.endWait(pending) }
    }
  }

  static let get: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "get"), let s = session(), let ids = objectIDs(args[0]), let timeout = timeoutNanos(args[1]) else { return nil }
    guard let ok = blockingWait(s.core, ids, needed: ids.count, timeout: timeout) else { return nil }
    if !ok {
      return ErrorMapping.raise(SwiftrayError(.getTimeout,
        "Get timed out: some object(s) not ready after \(Double(timeout ?? 0) / 1e9) s."))
    }
    var out: [PyPtr] = []
    out.reserveCapacity(ids.count)
    // In slices: a get over N refs never holds a second copy of all N values at once.
    var start = 0
    while start < ids.count {
      let slice = Array(ids[start..<min(start + 1024, ids.count)])
      start += slice.count
      let objs = s.core.objects(slice)
      let pins = StoredValues.pinAll(s.core, zip(slice, objs).map { id, o in o.map { (id, $0) } })
      for (i, o) in objs.enumerated() {
        guard let value = pythonValue(s.core, o, pins[i]) else { out.forEach { sr_DecRef($0) }; return nil }
        out.append(value)
      }
    }
    return Py.list(out)
  }

  /// One value of a `get`: `(data, metadata)` (the data alone when there is no
  /// metadata: no tuple per value), or the exception it is; nil with a Python error set.
  static func pythonValue(_ core: CoreWorker, _ o: Swiftray_RayObject?, _ pin: Result<StoredValues.Pinned, SwiftrayError>?) -> PyPtr? {
    guard let o else { return Py.none }
    if let code = ErrorObject.code(fromMetadata: o.metadata), code != .taskError {
      return ErrorMapping.instance(code, String(decoding: o.data, as: UTF8.self))
    }
    if case .failure(let e)? = pin { return ErrorMapping.instance(e.code, e.message) }
    guard let data = StoredValues.data(core, o, pin) else { return nil }
    return o.metadata.isEmpty ? data : Py.tuple([data, Py.bytes(o.metadata)])
  }

  /// wait(ids, k, timeout) -> indices of the first (at most k) ready ids, input order.
  /// Stops parsing at the k-th ready id when enough are ready already.
  static let wait: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(3, "wait"), let s = session(), let items = Py.sequence(args[0]), let k = Py.toInt(args[1]),
      let timeout = timeoutNanos(args[2])
    else { return nil }
    var ids: [ObjectID] = []
    ids.reserveCapacity(items.count)
    for it in items { guard let id = objectID(it) else { return nil }; ids.append(id) }
    var ready = s.core.firstAvailable(ids, limit: k)
    if ready.count < k {
      guard blockingWait(s.core, ids, needed: k, timeout: timeout) != nil else { return nil }
      ready = s.core.firstAvailable(ids, limit: k)
    }
    return Py.list(ready.map { Py.int($0) })
  }

  /// `wait()` over a list of plain refs, all of it here: types, ids and uniqueness
  /// checked, and both result lists built, without a Python-level pass (a loop of waits
  /// over a shrinking list is O(len) per call either way; here each item costs a few
  /// nanoseconds). None, with no error set, when an item is not exactly an ObjectRef (a
  /// generator, a subclass, a mistake): the caller takes the general path, which also
  /// says what is wrong. The items are held in a tuple while the GIL is released.
  static let waitRefs: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(3, "wait_refs"), let s = session(), let seq = args[0], let k = Py.toInt(args[1]),
      let timeout = timeoutNanos(args[2])
    else { return nil }
    guard let (refType, offset) = refClass else { return Py.none }  // not imported yet: the general path
    guard let items = PySequence_Tuple(seq) else { return nil }
    defer { sr_DecRef(items) }
    let count = PyTuple_Size(items)
    guard k >= 1, k <= count else {
      PyErr_SetString(sr_ExcValueError(), "num_returns must be 1...\(count), got \(k)"); return nil
    }
    var ids: [ObjectID] = []
    ids.reserveCapacity(count)
    for i in 0..<count {
      let it = PyTuple_GetItem(items, i)!
      guard sr_Type(it) == refType, let raw = sr_SlotGet(it, offset), let id = objectID(raw) else {
        PyErr_Clear(); return Py.none
      }
      ids.append(id)
    }
    if ObjectID.firstDuplicate(in: ids) != nil {
      PyErr_SetString(sr_ExcValueError(), "Wait requires a list of unique object refs."); return nil
    }
    var ready = s.core.firstAvailable(ids, limit: k)
    if ready.count < k {
      guard blockingWait(s.core, ids, needed: k, timeout: timeout) != nil else { return nil }
      ready = s.core.firstAvailable(ids, limit: k)
    }
    let readyList = PyList_New(ready.count)!, rest = PyList_New(count - ready.count)!
    var (r, o) = (0, 0)
    for i in 0..<count {
      let it = PyTuple_GetItem(items, i)!
      sr_IncRef(it)
      if r < ready.count && ready[r] == i { PyList_SetItem(readyList, r, it); r += 1 } else { PyList_SetItem(rest, o, it); o += 1 }
    }
    return Py.tuple([readyList, rest])
  }

  /// The ObjectRef class (set once, at import of `swiftray.object_ref`) and the offset
  /// of its `_id` slot: `rebuild_ref` makes instances of it, `wait_refs` reads their ids
  /// in place. Guarded by the GIL.
  nonisolated(unsafe) static var refClass: (type: PyPtr, idOffset: Int)?

  static let setRefType: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "set_ref_type"), let type = args[0] else { return nil }
    let off = sr_SlotOffset(type, "_id")
    guard off >= 0 else {
      PyErr_SetString(sr_ExcTypeError(), "set_ref_type() needs a class with an `_id` slot"); return nil
    }
    sr_IncRef(type)  // kept for the process's life: instances are made of it
    refClass = (type, off)
    sr_SetFinalize(type, refFinalize)
    return Py.none
  }

  /// The ObjectRef class's finalizer, in place of its Python `__del__` (a Python frame
  /// for every ref dropped): the local reference goes, as `remove_local_ref` does.
  /// Runs with the GIL held, possibly after shutdown (then it does nothing); never
  /// raises (it leaves the error indicator as it found it).
  static let refFinalize: @convention(c) (PyPtr?) -> Void = { o in
    guard let o, let cls = refClass, let raw = sr_SlotGet(o, cls.idOffset), sr_IsBytes(raw) != 0,
          sr_BytesSize(raw) == 28, let core = Session.active?.core, let id = objectID(raw) else { return }
    core.removeLocalRef(id)
  }

  /// Unpickles an ObjectRef in one call (the reconstructor its `__reduce__` names): a
  /// bare instance with its id slot set, and a local reference added. A value holding
  /// thousands of refs paid a Python frame and `object.__new__` for each before.
  static let rebuildRef: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "rebuild_ref"), let raw = args[0] else { return nil }
    guard let cls = refClass else {
      PyErr_SetString(sr_ExcRuntimeError(), "swiftray.object_ref is not imported"); return nil
    }
    guard let id = objectID(raw), let r = sr_AllocUntracked(cls.type) else { return nil }
    sr_IncRef(raw)
    sr_SlotInit(r, cls.idOffset, raw)
    if let core = Session.active?.core { addLocalRef(core, id, owner: args[1]) }
    return r
  }

  static let addLocalRef: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard let s = Session.active else { return Py.none }
    guard let id = objectID(args[0]) else { return nil }
    addLocalRef(s.core, id, owner: args[1])
    return Py.none
  }

  static let removeLocalRef: CoreModule.FastFn = { _, a, n in
    // Called from ObjectRef.__del__, possibly after shutdown: never raise.
    guard let s = Session.active, let id = objectID(Args(a, n)[0]) else { PyErr_Clear(); return Py.none }
    s.core.removeLocalRef(id)
    return Py.none
  }

  static let refEscaped: CoreModule.FastFn = { _, a, n in
    guard let s = Session.active, let id = objectID(Args(a, n)[0]) else { PyErr_Clear(); return Py.none }
    s.core.refEscaped(id)
    return Py.none
  }

  static let ownerAddress: CoreModule.FastFn = { _, a, n in
    guard let s = session(), let id = objectID(Args(a, n)[0]) else { return nil }
    guard let b: [UInt8] = try? s.core.ownerAddress(id).serializedBytes() else { return Py.bytes([UInt8]()) }
    return Py.bytes(b)
  }

  static let cancel: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "cancel"), let s = session(), let id = objectID(args[0]) else { return nil }
    return Py.bool(s.core.cancel(id, force: PyObject_IsTrue(args[1]) == 1))
  }

  // MARK: control plane

  static let kvPut: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(4, "kv_put"), let s = session(), let ns = Py.toString(args[0]), let k = Py.toBytes(args[1]),
      let v = Py.toBytes(args[2])
    else { return nil }
    let overwrite = PyObject_IsTrue(args[3]) == 1
    return blocking("KVPut", { try s.core.kvPut(namespace: ns, key: Data(k), value: Data(v), overwrite: overwrite) },
                    then: { Py.bool($0) })
  }

  static let kvGet: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "kv_get"), let s = session(), let ns = Py.toString(args[0]), let k = Py.toBytes(args[1]) else { return nil }
    return blocking("KVGet", { try s.core.kvGet(namespace: ns, key: Data(k)) },
                    then: { v in v.map { Py.bytes($0) } ?? Py.none })
  }

  static let packageExists: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "package_exists"), let s = session(), let uri = Py.toString(args[0]) else { return nil }
    return blocking("checking the package store", { try s.core.packageExists(uri) }, then: { Py.bool($0) })
  }

  static let packageUpload: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "package_upload"), let s = session(), let uri = Py.toString(args[0]), let data = Py.toBytes(args[1]) else { return nil }
    let bytes = Data(data)
    return blocking("uploading \(uri)", { try s.core.uploadPackage(uri, bytes) }, then: { _ in Py.none })
  }

  static let prepareRuntimeEnv: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "prepare_runtime_env"), let s = session(), let json = Py.toString(args[0]) else { return nil }
    s.core.prepareRuntimeEnv(json)
    return Py.none
  }

  static func resourcesDict(_ r: Swiftray_ResourceShape) -> PyPtr {
    Py.dict(ResourceSet(proto: r).asUnits.sorted { $0.key < $1.key }.map { ($0.key, PyFloat_FromDouble($0.value)) })
  }

  static let nodes: CoreModule.FastFn = { _, _, _ in
    guard let s = session() else { return nil }
    return blocking("GetAllNodes", { try s.core.allNodes() }, then: { nodes in
      Py.list(nodes.map { node in
        Py.dict([
          ("NodeID", Py.str(NodeID(binary: node.nodeID)?.hex ?? "")),
          ("Alive", Py.bool(node.alive)),
          ("NodeManagerAddress", Py.str(node.ipAddress)),
          ("NodeManagerEndpoint", Py.str(node.nodeManagerEndpoint)),
          ("NodeManagerTCPAddress", Py.str(node.nodeManagerAddress)),
          ("NodeManagerPort", Py.int({ if case .tcp(_, let p)? = Endpoint(node.nodeManagerAddress) { return p } else { return 0 } }())),
          ("SessionDir", Py.str(node.sessionDir)),
          ("MetricsExportPort", Py.int(Int(node.metricsExportPort))),
          ("DeathDetail", Py.str(node.deathDetail)),
          ("Resources", resourcesDict(node.total)),
          ("Available", resourcesDict(node.available)),
          ("Labels", Py.dict(node.labels.sorted { $0.key < $1.key }.map { ($0.key, Py.str($0.value)) })),
        ])
      })
    })
  }

  static let metricDefine: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(5, "metric_define"), let s = session(), let kind = Py.toInt(args[0]),
      let name = Py.toString(args[1]), let description = Py.toString(args[2]),
      let keys = Py.sequence(args[3])?.compactMap({ Py.toString($0) }),
      let boundaries = Py.sequence(args[4])?.compactMap({ Py.toDouble($0) })
    else { return nil }
    guard let k = MetricDefinition.Kind(rawValue: kind) else {
      return ErrorMapping.raise(SwiftrayError(.invalidArgument, "unknown metric kind \(kind)"))
    }
    do {
      return Py.int(try s.core.defineMetric(MetricDefinition(kind: k, name: name, description: description,
                                                             tagKeys: keys, boundaries: boundaries)))
    } catch let e as SwiftrayError {
      return ErrorMapping.raise(e)
    } catch {
      return ErrorMapping.raise(SwiftrayError(.system, "\(error)"))
    }
  }

  static let queryState: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(4, "query_state"), let s = session(), let kind = Py.toString(args[0]), let items = Py.sequence(args[1]),
      let limit = Py.toInt(args[2])
    else { return nil }
    var req = Swiftray_ListStateRequest()
    req.kind = kind
    req.limit = Int32(clamping: limit)
    req.detail = PyObject_IsTrue(args[3]) == 1
    for item in items {
      guard let t = Py.sequence(item), t.count == 3, let k = Py.toString(t[0]), let op = Py.toString(t[1]), let v = Py.toString(t[2]) else {
        PyErr_Clear()
        return ErrorMapping.raise(SwiftrayError(.invalidArgument, "each filter is a (key, predicate, value) tuple of strings"))
      }
      var f = Swiftray_StateFilter()
      f.key = k; f.op = op; f.value = v
      req.filters.append(f)
    }
    return blocking("ListState", {
      if kind == "tasks" || kind == "summary-tasks" || kind == "timeline" { s.core.flushTaskEvents() }
      return try s.core.queryState(req)
    }, then: { r in
      Py.tuple([Py.bytes(r.json), Py.int(Int(r.total)), Py.int(Int(r.returned)), Py.int(Int(clamping: r.droppedEvents)),
                Py.list(r.warnings.map(Py.str))])
    })
  }

  static let nodeStats: CoreModule.FastFn = { _, _, _ in
    guard let s = session() else { return nil }
    return blocking("GetNodeStats", { try s.core.nodeStats() }, then: { st in
      Py.dict([
        ("total", resourcesDict(st.node.total)),
        ("available", resourcesDict(st.node.available)),
        ("num_workers", Py.int(Int(st.numWorkers))),
        ("num_idle_workers", Py.int(Int(st.numIdleWorkers))),
        ("worker_pids", Py.list(st.workerPids.map { Py.int(Int($0)) })),
        ("object_store", storeStatsDict(st.store)),
      ])
    })
  }

  // MARK: executor

  static func argTuple(_ core: CoreWorker, _ arg: Swiftray_TaskArg, _ pin: Result<StoredValues.Pinned, SwiftrayError>?) -> PyPtr {
    switch arg.kind {
    case .value(let v)?:
      if let code = ErrorObject.code(fromMetadata: v.metadata), code != .taskError {
        return Py.tuple([Py.int(2), ErrorMapping.instance(code, String(decoding: v.data, as: UTF8.self)) ?? Py.none])
      }
      if case .failure(let e)? = pin { return Py.tuple([Py.int(2), ErrorMapping.instance(e.code, e.message) ?? Py.none]) }
      guard let data = StoredValues.data(core, v, pin)
      else {
        PyErr_Clear()
        return Py.tuple([Py.int(2), ErrorMapping.instance(.system, "argument value could not be read") ?? Py.none])
      }
      return Py.tuple([Py.int(0), data, Py.bytes(v.metadata)])
    case .ref(let r)?:
      let owner: [UInt8] = (try? r.owner.serializedBytes()) ?? []
      return Py.tuple([Py.int(1), Py.bytes(r.objectID), Py.bytes(owner)])
    case nil:
      return Py.tuple([Py.int(0), Py.bytes([UInt8]()), Py.bytes([UInt8]())])
    }
  }

  /// Executions handed to Python that reply later (threaded and async actors), by
  /// token. Guarded by the GIL.
  nonisolated(unsafe) static var deferred: [Int: CoreWorker.Execution] = [:]
  nonisolated(unsafe) static var nextToken = 1

  static let workerLoop: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "worker_loop"), let s = session(), let execute = args[0] else { return nil }
    let core = s.core
    // A real SIGINT aimed at this (main) thread: unlike PyErr_SetInterrupt it also
    // breaks a blocking call such as time.sleep, which then raises KeyboardInterrupt.
    let mainThread = pthread_self()
    core.setInterruptHandler { pthread_kill(mainThread, SIGINT) }
    // The last task went to the actor's thread pool: the next one already queued is
    // taken without letting go of the GIL (a threaded actor's calls that one read
    // brought are handed over in one hold of it, not one GIL hand-off each).
    var handedOver = false
    while true {
      let queued = handedOver ? core.queuedExecution() : nil
      guard let e = queued ?? withoutGIL({ core.nextExecution(timeoutNanos: 1_000_000_000) }) else {
        if PyErr_CheckSignals() != 0 {
          // A cancel that arrived after its task finished: not for us.
          if PyErr_ExceptionMatches(sr_ExcKeyboardInterrupt()) != 0 { PyErr_Clear(); continue }
          return nil
        }
        if Session.active == nil { return Py.none }
        continue
      }
      guard let (task, token) = taskTuple(core, e) else { continue }
      let result = PyObject_CallOneArg(execute, task)
      sr_DecRef(task)
      if let result, Py.isNone(result) {
        // Runs on the actor's thread pool; it replies with finish_task.
        sr_DecRef(result)
        handedOver = true
        continue
      }
      handedOver = false
      deferred[token] = nil
      let reply = buildReply(core, e.spec, result)
      withoutGIL { core.finish(e, reply: reply) }
      if leaveLoop {
        leaveLoop = false
        return Py.bool(true)
      }
    }
  }

  /// Set by `leave_worker_loop`: `worker_loop` returns True after the task running now
  /// (an async actor's creation: its calls then run on the main thread's event loop).
  /// Guarded by the GIL.
  nonisolated(unsafe) static var leaveLoop = false

  /// The tuple `execute` takes for `e`, and its token, registered in `deferred` (a pool
  /// thread may finish it before `execute` returns); nil when an argument was lost (the
  /// reply that says so is sent: not the task's failure, its owner rebuilds the
  /// argument and sends it again). Holds the GIL.
  static func taskTuple(_ core: CoreWorker, _ e: CoreWorker.Execution) -> (task: PyPtr, token: Int)? {
    let spec = e.spec
    let pins = StoredValues.pinAll(core, spec.args.map { a in
      if case .value(let v)? = a.kind, let id = ObjectID(binary: a.objectID) { return (id, v) }
      return nil
    })
    if let lost = StoredValues.lostArguments(spec, pins) {
      core.objectStore.unpin(zip(spec.args, pins).compactMap { a, p in
        if case .success? = p { return ObjectID(binary: a.objectID) } else { return nil }
      })
      withoutGIL { core.finish(e, reply: lost) }
      return nil
    }
    let token = nextToken
    nextToken += 1
    deferred[token] = e
    return (Py.tuple([
      Py.bytes(spec.taskID), Py.bytes(spec.function.functionID), Py.str(spec.name),
      Py.list(zip(spec.args, pins).map { argTuple(core, $0, $1) }), Py.int(spec.dynamicReturns ? -2 : spec.streaming ? -1 : Int(spec.numReturns)), Py.bytes(spec.retryExceptionFilter),
      Py.int(Int(spec.attempt)), Py.bytes(spec.actorID), Py.str(spec.methodName), actorCreationDict(spec), Py.int(token),
      Py.list(e.gpuIDs.map { Py.int(Int($0)) }), resourcesDict(spec),
    ]), token)
  }

  static let takeExecutions: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(1, "take_executions"), let s = session(), let max = Py.toInt(args[0]) else { return nil }
    let core = s.core
    let taken = withoutGIL { core.takeExecutions(max: Swift.max(0, Swift.min(max, 1 << 16))) }
    return Py.list(taken.compactMap { taskTuple(core, $0)?.task })
  }

  static let spinUntilReadable: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "spin_until_readable"), let s = session(), let fd = Py.toInt(args[0]) else { return nil }
    guard let descriptor = Int32(exactly: fd), descriptor >= 0 else {
      PyErr_SetString(sr_ExcValueError(), "spin_until_readable(): \(fd) is not a file descriptor")
      return nil
    }
    var nanos = UInt64.max
    if !Py.isNone(args[1]) {
      guard let seconds = Py.toDouble(args[1]) else { return nil }
      // Range-checked before converting: a NaN or a huge timeout must not trap.
      nanos = seconds.isFinite && seconds > 0 ? UInt64(Swift.min(seconds, 1e9) * 1e9) : 0
    }
    let core = s.core
    return Py.bool(withoutGIL { core.spinUntilReadable(descriptor, nanos: nanos) })
  }

  static let finishTask: CoreModule.FastFn = { _, a, n in
    let args = Args(a, n)
    guard args.need(2, "finish_task"), let s = session(), let token = Py.toInt(args[0]) else { return nil }
    // A third argument: this thread runs another call next (its reply may wait for it).
    var more: Bool?
    if args.count > 2, let m = args[2] {
      let truth = PyObject_IsTrue(m)
      guard truth >= 0 else { return nil }
      more = truth == 1
    }
    guard let e = deferred.removeValue(forKey: token) else { return Py.none }
    if let r = args[1] { sr_IncRef(r) }
    let reply = buildReply(s.core, e.spec, args[1])
    withoutGIL { s.core.finish(e, reply: reply, moreQueued: more) }
    return Py.none
  }

  /// What the task (or actor) holds while it runs, in the user's names (a placement
  /// group's renamed resources under their plain names), as
  /// `get_runtime_context().get_assigned_resources()` reports it.
  /// A task of the same shape as the last one shares its dict (Python only copies it).
  static func resourcesDict(_ spec: Swiftray_TaskSpec) -> PyPtr {
    if let last = lastHeld, last.shape == spec.resources {
      sr_IncRef(last.dict)
      return last.dict
    }
    let held = BundleResources.plain(ResourceSet(proto: spec.resources))
    let dict = Py.dict(held.asUnits.sorted { $0.key < $1.key }.map { ($0.key, Py.float($0.value)) })
    if let last = lastHeld { sr_DecRef(last.dict) }
    sr_IncRef(dict)
    lastHeld = (spec.resources, dict)
    return dict
  }

  /// The last task's resource shape and its dict (one reference of ours): consecutive
  /// tasks of a function hold the same, and building the dict (placement-group names
  /// searched, floats made) was a tenth of a worker's time per task. Guarded by the GIL.
  nonisolated(unsafe) static var lastHeld: (shape: Swiftray_ResourceShape, dict: PyPtr)?

  static func actorCreationDict(_ spec: Swiftray_TaskSpec) -> PyPtr {
    guard spec.hasActorCreation else { return Py.none }
    let c = spec.actorCreation
    return Py.dict([
      ("max_concurrency", Py.int(Int(c.maxConcurrency))), ("is_async", Py.bool(c.isAsync)),
      ("num_restarts", Py.int(Int(c.numRestarts))), ("name", Py.str(c.name)),
      ("namespace", Py.str(c.namespace)), ("class_name", Py.str(c.className)),
    ])
  }

  /// The reply for an execution from Python's `(returns, is_application_error,
  /// is_retryable, was_cancelled[, actor_creation_error])` (consumed; nil when the
  /// executor itself raised). Writes large returns into the store.
  static func buildReply(_ core: CoreWorker, _ spec: Swiftray_TaskSpec, _ result: PyPtr?) -> Swiftray_PushTaskReply {
    var reply = Swiftray_PushTaskReply()
    if let result, let parts = Py.sequence(result), parts.count >= 4, let rets = Py.sequence(parts[0]) {
      reply.isApplicationError = PyObject_IsTrue(parts[1]) == 1
      reply.isRetryableError = PyObject_IsTrue(parts[2]) == 1
      reply.wasCancelled = PyObject_IsTrue(parts[3]) == 1
      if parts.count >= 5, let creationError = Py.toString(parts[4]) { reply.actorCreationError = creationError }
      PyErr_Clear()
      for (i, r) in rets.enumerated() {
        guard let tid = TaskID(binary: spec.taskID), let pair = Py.sequence(r), pair.count == 2,
          let meta = Py.toData(pair[1])
        else { PyErr_Clear(); continue }
        let rid = ObjectID.forReturn(of: tid, index: i)
        guard var obj = StoredValues.placeReturn(core, rid, owner: spec.owner, pair[0]) else { PyErr_Clear(); continue }
        if ErrorObject.code(fromMetadata: obj.metadata) == nil { obj.metadata = meta }
        var ro = Swiftray_ReturnObject()
        ro.objectID = Data(rid.binary)
        ro.object = obj
        reply.returns.append(ro)
      }
      // While the returned values still hold their refs: register the owner as their
      // borrower, so none is freed before the owner counts it.
      let nested = reply.returns.flatMap { $0.object.nestedRefs }
      if !nested.isEmpty, let owner = WorkerID(binary: spec.owner.workerID) {
        withoutGIL { core.registerReceiver(owner, node: spec.owner.nodeID, of: nested) }
      }
      sr_DecRef(result)
      return reply
    }
    // The executor itself failed (a bug, or KeyboardInterrupt outside the task).
    let cancelled = PyErr_ExceptionMatches(sr_ExcKeyboardInterrupt()) != 0
    PyErr_Print()
    reply.wasCancelled = cancelled
    if !cancelled, let tid = TaskID(binary: spec.taskID) {
      reply.isApplicationError = true
      for i in 0..<Int(spec.numReturns) {
        var ro = Swiftray_ReturnObject()
        ro.objectID = Data(ObjectID.forReturn(of: tid, index: i).binary)
        ro.object.metadata = Data(ErrorObject.metadata(.system))
        ro.object.data = Data("the worker could not run task \(spec.name); see its stderr above".utf8)
        reply.returns.append(ro)
      }
      if spec.hasActorCreation { reply.actorCreationError = "the worker could not run the constructor; see its stderr" }
    }
    if let result { sr_DecRef(result) }
    return reply
  }
}
