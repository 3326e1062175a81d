import DequeModule
import Foundation
import GRPCCore
import RuntimeProto

/// Task events to the head (DESIGN §13): the owner's state changes and the executor's
/// spans leave in batches every `task_events_report_interval_ms`, never on the task path.
/// A batch the head does not take is dropped and counted (the next batch says how many).
///
/// Threading: the reporter is one Task; `flushTaskEvents` blocks its caller (GIL
/// released), bounded.
extension CoreWorker {
  /// Events in one batch (the head's bound on a batch).
  static var eventBatch: Int { ControlService.maxEventsPerBatch }

  /// Arms the periodic report on the worker's clock (virtual in simulations); each round
  /// arms the next, until `stopTaskEventReporter`. It runs with task events off too: it
  /// carries the user metrics.
  func startTaskEventReporter() {
    guard !eventReporter.withLock({ $0.stopped }) else { return }
    // `stopTaskEventReporter` cancels the timer: no round runs after shutdown.
    let timer = clock.schedule(after: .milliseconds(options.config.taskEventsReportIntervalMs)) { [weak self] in
      Task { [weak self] in
        guard let self, !eventReporter.withLock({ $0.stopped }) else { return }
        await sendTaskEvents()
        startTaskEventReporter()
      }
    }
    let stoppedMeanwhile = eventReporter.withLock { r in
      if !r.stopped { r.timer = timer }
      return r.stopped
    }
    if stoppedMeanwhile { timer.cancel() }
  }

  func stopTaskEventReporter() {
    let timer = eventReporter.withLock { r in
      r.stopped = true
      defer { r.timer = nil }
      return r.timer
    }
    timer?.cancel()
  }

  /// Sends what is buffered now, batch by batch, until nothing is left (events recorded
  /// meanwhile go with the next round). User metrics ride with the first batch.
  func sendTaskEvents() async {
    var metrics = userMetrics.withLock { $0.isEmpty ? nil : $0.take() }
    defer {
      // Not delivered (the head was away): back under what was recorded since.
      if let m = metrics { userMetrics.withLock { $0.putBack(m.samples, dropped: m.dropped) } }
    }
    let head = localHead.withLock { $0 }
    for _ in 0..<1000 {
      // Records move out under the owner's lock; the batch is built after it. A head in
      // this process takes the records as they are (no message built or parsed), all at
      // once: a batch's bound is for messages, and the ring is bounded already.
      let max = head == nil ? Self.eventBatch : Int.max
      var taken = state.withLock { $0.taskEvents.take(max: max) }
      let takenCount = taken.batch.count
      var records = TaskEventBatch()
      if head != nil { swap(&records, &taken.batch) }
      let built: (events: [Swiftray_TaskEvent], infos: [Swiftray_TaskEventInfo]) =
        head == nil ? TaskEventBuffer.messages(taken.batch) : ([], [])
      let own = (events: built.events, infos: built.infos, dropped: taken.dropped, taken: takenCount)
      let spans = executor.drainTaskEvents(max: Swift.max(Self.eventBatch - own.events.count, 0))
      let unsent = eventsUnsent.withLock { n in defer { n = 0 }; return n }
      // One table of descriptions: the executor's indices move past the owner's.
      let shift = Int32(own.infos.count)
      let events = own.events + spans.events.map { e in
        var e = e
        if e.infoIndex > 0 { e.infoIndex += shift }
        return e
      }
      let dropped = own.dropped &+ spans.dropped &+ unsent
      if events.isEmpty && records.isEmpty && dropped == 0 && metrics == nil { return }
      var req = Swiftray_ReportTaskEventsRequest()
      if let m = metrics {
        req.metrics = m.samples
        req.metricsDropped = m.dropped
      }
      req.workerID = address.workerID
      req.nodeID = address.nodeID
      req.pid = address.pid
      req.isDriver = options.isDriver
      req.events = events
      req.infos = own.infos + spans.infos
      req.dropped = dropped
      req.monotonicNowNs = now()
      req.wallNowNs = Self.wallNanos()
      do {
        if let head {
          try await head(req, records)
          // Emptied here (not under the lock), the ring goes back for the next take:
          // its memory is mapped and warm.
          records.records.removeAll(keepingCapacity: true)
          state.withLock { $0.taskEvents.recycle(&records.records) }
        } else {
          _ = try await control.controlService
            .reportTaskEvents(req, options: ControlPlane.deadline(milliseconds: 10_000))
        }
      } catch {
        // The head is away (restarting, a partition): these are lost, and counted.
        eventsUnsent.withLock { $0 &+= UInt64(events.count) &+ UInt64(records.count) &+ dropped }
        return
      }
      metrics = nil
      // A full take may have left more behind (folding makes a batch smaller than its take).
      if own.taken < Self.eventBatch && spans.taken < Self.eventBatch - own.events.count { return }
    }
  }

  /// Sends this process's buffered task events now (before a state query, at exit).
  /// Blocks (GIL released), at most `timeout`.
  public func flushTaskEvents(timeout: Duration = .seconds(5)) {
    _ = try? blockingAwait(timeout: timeout) { [self] in await sendTaskEvents() }
  }

  /// Defines a user metric of this process (the same definition gets the same handle).
  /// Any thread.
  public func defineMetric(_ d: MetricDefinition) throws -> Int {
    switch userMetrics.withLock({ $0.define(d) }) {
    case .success(let h): return h
    case .failure(.invalid(let why)): throw SwiftrayError(.invalidArgument, why)
    case .failure(.tooMany):
      throw SwiftrayError(.invalidArgument, "this process defined more than \(UserMetricsBuffer.maxDefinitions) metrics")
    }
  }

  /// One record of a user metric (the caller checked its tags); dropped and counted when
  /// this process's bounds are full. Any thread; never blocks.
  public func recordMetric(handle: Int, tags: [String], value: Double) {
    userMetrics.withLock { _ = $0.record(handle: handle, tags: tags, value: value) }
  }

  static func wallNanos() -> UInt64 {
    WallClock.nanos()
  }

  /// A state-API query of the head (`list`, `get`, `summary`, `timeline`), answered as
  /// JSON. Blocks (GIL released), bounded.
  public func queryState(_ req: Swiftray_ListStateRequest, timeout: Duration = .seconds(60)) throws -> Swiftray_ListStateReply {
    try callControl("ListState", timeout: timeout) { [req] c in
      do { return try await ControlService.fetchState(c, req) } catch let e as RPCError where e.code == .invalidArgument {
        throw SwiftrayError(.invalidArgument, e.message)  // the query's own mistake: say it as is
      }
    }
  }
}
