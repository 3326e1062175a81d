import Foundation
import Runtime
import RuntimeProto

/// The drivers' work, and the checks at the end of a run.
extension SimCluster {
  static let cpu1 = ResourceSet(units: ["CPU": 1])

  /// Each driver submits a DAG over time: tasks take earlier results as arguments (by
  /// ref, or inside a value), some return objects stored in their node's store, and
  /// the driver drops refs it no longer needs as it goes.
  func startWorkload() {
    for d in drivers.indices {
      for _ in 0..<Int(rng.between(1, 2)) {
        time.at(rng.between(0, settings.faultWindow / 4), "d\(d) creates an actor") { [self] in createActor(d) }
      }
      // Small clusters cannot hold every group beside the actors once nodes die.
      for _ in 0..<min(settings.groupsPerDriver, settings.nodes / 8) {
        time.at(rng.between(0, settings.faultWindow * 3 / 4), "d\(d) creates a placement group") { [self] in createGroup(d) }
      }
      for _ in 0..<settings.tasksPerDriver / 3 {
        time.at(rng.between(settings.faultWindow / 4, settings.faultWindow * 3 / 4), "d\(d) calls an actor") { [self] in callActor(d) }
      }
      for _ in 0..<settings.tasksPerDriver {
        time.at(rng.between(0, settings.faultWindow * 3 / 4), "d\(d) submits") { [self] in submitOne(d) }
      }
    }
  }

  func submitOne(_ d: Int) {
    let drv = drivers[d]
    let i = drv.submitted
    drv.submitted += 1
    var spec = Swiftray_TaskSpec()
    spec.name = (rng.chance(0.3) ? "big-" : "t-") + String(i)
    spec.numReturns = 1
    spec.maxRetries = [0, 1, 3, -1].randomElement(using: &rng)!
    spec.resources = Self.cpu1.proto
    var args: [TaskArgument] = []
    var expected = UInt64(i)
    for _ in 0..<Int(rng.between(0, 3)) {
      guard let id = drv.heldOrder.randomElement(using: &rng), let v = drv.held[id] else { break }
      args.append(TaskArgument(.ref(id, owner: nil)))
      expected &+= v
    }
    if rng.chance(0.2), let inner = drv.heldOrder.randomElement(using: &rng) {
      var box = Swiftray_RayObject()
      box.data = Data("box".utf8)
      box.nestedRefs = [.with { $0.objectID = Data(inner.binary) }]
      args.append(TaskArgument(.value(box)))
    }
    let now = time.now
    var returns: [ObjectID] = []
    driverEvent(d) { s in
      switch s.taskSubmitted(spec, args: args, kind: .normal, parent: nil, now: now) {
      case .success(let r):
        returns = r.returns
        return r.effects
      case .failure(let e):
        fail("a normal task was refused: \(e.message)")
        return .init()
      }
    }
    guard let ret = returns.first else { return }
    drv.held[ret] = expected
    drv.heldOrder.append(ret)
    // Drop an older result now and then: what its dependents hold keeps it alive.
    if drv.heldOrder.count > 4 && rng.chance(0.3) {
      let k = Int(rng.between(0, UInt64(drv.heldOrder.count - 2)))
      let id = drv.heldOrder.remove(at: k)
      drv.held[id] = nil
      driverEvent(d) { $0.localRefRemoved(id, now: now) }
    }
  }

  /// As `CoreWorker.createActor`: submitted (its constructor takes no arguments, so it
  /// is registered with the head at once), then its handle counted.
  func createActor(_ d: Int) {
    var spec = Swiftray_TaskSpec()
    spec.name = "A.__init__"
    spec.numReturns = 0
    // Ray's default actor: a CPU to be placed, none while it lives.
    var c = Swiftray_ActorCreationSpec()
    c.placementResources = Self.cpu1.proto
    c.maxRestarts = [0, 1, -1].randomElement(using: &rng)!
    c.maxTaskRetries = [0, 1, -1].randomElement(using: &rng)!
    c.className = "A"
    spec.actorCreation = c
    let now = time.now
    var created: TaskID?
    driverEvent(d) { s in
      guard case .success(let r) = s.taskSubmitted(spec, args: [], kind: .actorCreation(sync: true), parent: nil, now: now)
      else { return .init() }
      created = r.task
      return r.effects
    }
    guard let tid = created else { return fail("an actor creation was refused") }
    if drivers[d].state.syncCreationSubmitted(tid) { registerActor(d, tid) } else { fail("a constructor without arguments waits") }
    driverEvent(d) { $0.actorHandleAdded(tid, maxPendingCalls: -1) }
    drivers[d].actors.append(tid)
    actorRetries[tid] = Int(c.maxTaskRetries)
  }

  /// A call to one of the driver's actors: its result is its sequence number.
  func callActor(_ d: Int) {
    let drv = drivers[d]
    guard let actor = drv.actors.randomElement(using: &rng) else { return }
    var spec = Swiftray_TaskSpec()
    spec.actorID = Data(actor.binary)
    spec.methodName = "f"
    spec.name = "A.f"
    spec.numReturns = 1
    spec.callerID = drv.address.workerID
    let now = time.now
    var ret: ObjectID?
    driverEvent(d) { s in
      switch s.taskSubmitted(spec, args: [], kind: .actorCall(actor, maxTaskRetries: actorRetries[actor] ?? 0), parent: nil, now: now) {
      case .success(let r):
        ret = r.returns.first
        return r.effects
      case .failure(let e):
        fail("an actor call was refused: \(e.message)")
        return .init()
      }
    }
    guard let ret, let seq = drv.state.tasks.spec(ret.task)?.actorSeq else { return }
    drv.held[ret] = seq
    drv.heldOrder.append(ret)
  }

  /// Runs events until none is left (or the step budget is spent: a livelock).
  func settle(_ what: String) -> Bool {
    while let e = time.next() {
      e.run()
      if time.steps > settings.maxSteps || time.now > settings.faultWindow * 100 {
        let queued = nodes.filter { $0.alive && !$0.queue.pending.isEmpty }.map { n in
          "n\(n.index): \(n.queue.pending.count) requests queued (first needs \(n.queue.pending.first!.needsFree)), "
            + "\(n.queue.available) of \(n.queue.total) free, \(n.queue.workers.count) workers"
        }
        fail("\(what): still busy after \(time.steps) events and \(time.now / 1_000_000_000) s (\(time.pending) queued): a livelock"
          + (queued.isEmpty ? "" : "; " + queued.joined(separator: "; ")))
        return false
      }
    }
    return true
  }

  /// Errors a result may end with when faults exhausted its retries.
  static let allowedErrors: Set<SwiftrayError.Code> = [.workerCrashed, .objectLost, .reconstructionFailed, .actorDied,
                                                        .actorUnavailable, .actorUnschedulable]

  /// Every held result is there: its value right, or an error faults explain; a stored
  /// one readable where its descriptor says. Then every ref is dropped and nothing
  /// may be left: no object, reference, task or lease at a driver; no lease, queued
  /// request or stored copy at a node.
  func checkEnd() {
    for drv in drivers {
      for id in drv.heldOrder {
        guard let o = drv.state.store[id] else {
          let spec = drv.state.tasks.spec(id.task)
          var about = ""
          if let a = spec.flatMap({ TaskID(binary: $0.actorID) }) {
            let info = actorDirectory.info(a)
            let watching = (actorWatches[a] ?? []).filter { $0.driver == drv.index }.map(\.after)
            about = " — actor \(a.counter) at the head: \(info.map { "\($0.state) v\($0.version) \($0.detail)" } ?? "unknown"),"
              + " watches waiting after \(watching), call #\(spec?.actorSeq ?? 0)"
          }
          fail("driver \(drv.index): \(spec?.name ?? id.hex) never finished (pending=\(drv.state.tasks.isPending(id.task))): a hang\(about)")
          continue
        }
        if let code = ErrorObject.code(fromMetadata: o.metadata) {
          if !Self.allowedErrors.contains(code) {
            fail("driver \(drv.index): \(id.hex.suffix(8)) ended with \(code): \(String(decoding: o.data, as: UTF8.self))")
          }
          continue
        }
        var data = o.data
        if o.storeSize > 0 {
          guard let node = nodes.first(where: { Data($0.id.binary) == o.storeNode }) else { fail("unknown store node"); continue }
          guard node.alive else {
            fail("driver \(drv.index): \(id.hex.suffix(8)) points at dead node \(node.index): lost, yet neither rebuilt nor reported")
            continue
          }
          guard let stored = node.objects[id] else {
            fail("driver \(drv.index): \(id.hex.suffix(8)) was freed from node \(node.index) while referenced")
            continue
          }
          data = stored
        }
        let got = UInt64(String(decoding: data, as: UTF8.self))
        if got != drv.held[id] { fail("driver \(drv.index): \(id.hex.suffix(8)) is \(got.map(String.init) ?? "?"), must be \(drv.held[id]!)") }
      }
    }
    checkGroups()
    removeAllGroups()
    for drv in drivers {
      let now = time.now
      for id in drv.heldOrder { driverEvent(drv.index) { $0.localRefRemoved(id, now: now) } }
      for actor in drv.actors { driverEvent(drv.index) { $0.localRefRemoved(actor.actorHandleObject, now: now) } }
      drv.actors = []
      drv.heldOrder = []
      drv.held = [:]
    }
    guard settle("after every ref was dropped") else { return }
    for drv in drivers {
      let s = drv.state.stats
      if s.objects + s.references + s.tasks + s.pendingTasks + s.leases != 0 {
        let left = drv.state.refs.refs.sorted { $0.key.hex < $1.key.hex }.prefix(3).map { id, r in
          "\(id.task.counter)#\(id.hex.suffix(2)) (local \(r.localRefs), tasks \(r.submittedTaskRefs), contained \(r.contained), "
            + "borrowers \(r.borrowers.keys.map { "w\($0.hex.prefix(6))" }.sorted()))"
        }
        fail("driver \(drv.index) keeps state after its work: \(s); refs \(left.joined(separator: ", "))")
      }
    }
    var stored = 0
    for n in nodes where n.alive {
      if !n.queue.leases.isEmpty || !n.queue.pending.isEmpty || n.queue.available != n.queue.total || !n.queue.bundles.isEmpty {
        let owners = n.queue.leases.values.map { l -> String in
          if l.owner == headID { return "the head" }
          if let d = drivers.firstIndex(where: { WorkerID(binary: $0.address.workerID) == l.owner }) { return "d\(d)" }
          return "a head before a restart (lease \(l.id & 0xffff) of w\(l.worker.hex.prefix(6)))"
        }
        fail("node \(n.index) keeps \(n.queue.leases.count) leases (held by \(owners.joined(separator: ", "))), \(n.queue.pending.count) requests, "
          + "\(n.queue.bundles.count) groups' bundles, \(n.queue.available) of \(n.queue.total) free")
      }
      stored += n.objects.count
    }
    if stored > orphanedCopies {
      fail("\(stored) stored copies left in node stores, \(orphanedCopies) of them explained by replies that never arrived")
    }
  }

  /// One whole run: work, faults, settling, checks. Returns the failures.
  func run() -> [String] {
    reportCycle()
    injectFaults()
    startWorkload()
    if settle("running the workload") { checkEnd() }
    return failures
  }
}
