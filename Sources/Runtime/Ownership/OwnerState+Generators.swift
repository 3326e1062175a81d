import Foundation
import RuntimeProto

/// Streaming generators at their owner (`GeneratorStreams` decides; this keeps the
/// items' objects and references in step with it). Each kept item is owned here and
/// holds one local reference for the stream until the reader takes it (the reference
/// then passes to the reader's ObjectRef) or drops the generator.
extension OwnerState {
  public enum GeneratorNext: Sendable, Equatable {
    /// The reader's next item (its reference is the reader's now).
    case item(ObjectID)
    /// The stream failed: return 0 holds the error (a reference was added for the reader).
    case error(ObjectID)
    case end
    /// Nothing yet: wait on these two (the next item, the stream's end).
    case notYet(item: ObjectID, end: ObjectID)
  }

  /// The worker running streaming task `tid` reported item `index` (range-checked here
  /// first: a peer's number). Kept unless reported before or no longer read; a copy not
  /// kept is freed from the store it was written to. The reader's progress is the reply.
  public mutating func generatorItemReported(_ tid: TaskID, index: UInt64, object: Swiftray_RayObject,
                                             now: UInt64) -> (Result<(consumed: Int, closed: Bool), SwiftrayError>, Effects) {
    var e = Effects()
    guard index <= UInt64(GeneratorStreams<Requester>.maxIndex) else {
      return (.failure(SwiftrayError(.invalidArgument, "item index \(index) is out of range")), e)
    }
    let i = Int(index)
    let id = ObjectID.forReturn(of: tid, index: i + 1)
    switch streams.itemReported(tid, index: i) {
    case .refused(let why):
      if object.storeSize > 0 { e.freeStored.append((id, object)) }
      return (.failure(SwiftrayError(.invalidArgument, why)), e)
    case .notKept:
      // A retried attempt that wrote the item to the same store found it there and
      // reported that very copy: it must stay.
      if object.storeSize > 0, store[id]?.storeNode != object.storeNode || !store.contains(id) {
        e.freeStored.append((id, object))
      }
    case .new:
      refs.ownedObjectCreated(id)
      _ = refs.localRefAdded(id)
      objectsArrived([(id, object)], now: now, &e)
    }
    let p = streams.progress(tid)
    return (.success(p), e)
  }

  /// The reader asks for its next item.
  public mutating func generatorNext(_ tid: TaskID, now: UInt64) -> (GeneratorNext, Effects) {
    var e = Effects()
    let (next, due) = streams.next(tid)
    answerPolls(tid, due, &e)
    switch next {
    case .item(let i):
      return (.item(ObjectID.forReturn(of: tid, index: i + 1)), e)
    case .error:
      let id = ObjectID.forReturn(of: tid, index: 0)
      refActionsDecided(refs.localRefAdded(id), now: now, &e)
      return (.error(id), e)
    case .end:
      return (.end, e)
    case .notYet:
      let i = streams.awaited(tid) ?? 0
      return (.notYet(item: ObjectID.forReturn(of: tid, index: i + 1), end: ObjectID.forReturn(of: tid, index: 0)), e)
    }
  }

  /// Registers `waiter` on the reader's next item and the stream's end, unless one of
  /// them is here already (or the stream ended): false then, look again.
  public mutating func generatorWaitStarted(_ tid: TaskID, waiter: Waiter) -> Bool {
    guard let i = streams.awaited(tid) else { return false }
    let ids = [ObjectID.forReturn(of: tid, index: i + 1), ObjectID.forReturn(of: tid, index: 0)]
    guard !ids.contains(where: { store.contains($0) }) else { return false }
    for id in ids { waiters[id, default: []].append(waiter) }
    return true
  }

  /// The reader dropped its generator: items it never took are released (and freed).
  public mutating func generatorClosed(_ tid: TaskID, now: UInt64) -> Effects {
    var e = Effects()
    dropStream(tid, now: now, &e)
    return e
  }

  /// Closes the stream: the items it still holds for a reader are released.
  mutating func dropStream(_ tid: TaskID, now: UInt64, _ e: inout Effects) {
    let (unconsumed, due) = streams.closed(tid)
    answerPolls(tid, due, &e)
    refActionsDecided(unconsumed.flatMap { refs.localRefRemoved(ObjectID.forReturn(of: tid, index: $0 + 1)) }, now: now, &e)
  }

  /// A worker waits (back-pressure) until the reader took `want` items: answered now,
  /// or held (`Effects.expirePolls` says when to give up on it).
  public mutating func generatorPollStarted(_ tid: TaskID, want: UInt64, poller: Requester) -> Effects {
    var e = Effects()
    let p = streams.progress(tid)
    switch streams.pollStarted(tid, want: Int(min(want, UInt64(Int.max))), poller: poller) {
    case .now: e.generatorProgress.append((poller, p.consumed, p.closed))
    case .held(let id): e.expirePolls.append((tid, id))
    }
    return e
  }

  /// A held wait's second passed: answered with the progress so far, if still held.
  public mutating func generatorPollExpired(_ tid: TaskID, id: UInt64) -> Effects {
    var e = Effects()
    if let poller = streams.pollExpired(tid, id: id) {
      let p = streams.progress(tid)
      e.generatorProgress.append((poller, p.consumed, p.closed))
    }
    return e
  }

  /// The streaming task ended (its reply came, or it failed for good), before its
  /// `returns` are stored: a dynamic generator's end, when it succeeded, gets refs to
  /// every item (held by it from then on).
  mutating func generatorEnded(_ tid: TaskID, succeeded: Bool, returns: inout [(ObjectID, Swiftray_RayObject)],
                               now: UInt64, _ e: inout Effects) {
    guard streams.isStreaming(tid) else { return }
    if succeeded, tasks.spec(tid)?.dynamicReturns == true, let n = streams.kept(tid), !returns.isEmpty {
      let me = selfAddress
      returns[0].1.nestedRefs = (0..<n).map { i in
        .with { $0.objectID = Data(ObjectID.forReturn(of: tid, index: i + 1).binary); $0.owner = me }
      }
    }
    // Readers waiting for the next item wait for the end too: the item will not come.
    if let i = streams.awaited(tid) {
      let item = ObjectID.forReturn(of: tid, index: i + 1)
      if !store.contains(item) { waiters[item] = nil }
    }
    let (dropped, due) = streams.ended(tid, succeeded: succeeded)
    answerPolls(tid, due, &e)
    refActionsDecided(dropped.flatMap { refs.localRefRemoved(ObjectID.forReturn(of: tid, index: $0 + 1)) }, now: now, &e)
  }

  /// After a streaming task's returns are stored: a dynamic generator has no reader,
  /// so the stream lets its items go (its end holds them now, or they are freed).
  mutating func generatorSettled(_ tid: TaskID, now: UInt64, _ e: inout Effects) {
    guard streams.isStreaming(tid), tasks.spec(tid)?.dynamicReturns == true else { return }
    dropStream(tid, now: now, &e)
  }

  private func answerPolls(_ tid: TaskID, _ due: [(UInt64, Requester)], _ e: inout Effects) {
    guard !due.isEmpty else { return }
    let p = streams.progress(tid)
    for (_, poller) in due { e.generatorProgress.append((poller, p.consumed, p.closed)) }
  }
}
