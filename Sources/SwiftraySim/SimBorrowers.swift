import Foundation
import Runtime
import RuntimeProto

/// Workers that keep a ref they were passed, as a task that stashes an argument in a
/// global does: each registers at the owner as a borrower — on the channel its reply
/// takes next, so before the reply — and lets go a while later, unless it dies first.
/// A borrower that dies never lets go: the owner must learn of the death and drop it,
/// else the object leaks (the end check finds state left at a driver). A worker's exit
/// reaches owners through the head's `WorkerDeathLog` (its node reports the exit; node
/// 0 reads the log with each report and tells its drivers, as NodeManager does); the
/// death of a borrower's node through the cluster's verdict on it (`OwnerState.nodeDied`).
extension SimCluster {
  func keepBorrowed(_ w: Worker, _ id: ObjectID, owner d: Int) {
    activity["argument kept by its worker", default: 0] += 1
    let wid = w.id, node = Data(nodes[w.node].id.binary), channel = "w\(w.id.hex.prefix(6))->d\(d)"
    send(on: channel, delay: latency(w.node), "w\(wid.hex.prefix(6)) borrows \(id.task.counter)") { [self] in
      if !drivers[d].state.borrowerAdded(id, wid, node: node, count: 1) { fail("a borrower was refused") }
    }
    time.after(rng.between(10 * ms, 2_000 * ms), "w\(wid.hex.prefix(6)) lets go of \(id.task.counter)") { [self] in
      guard w.alive else { return }  // it died holding the ref
      send(on: channel, delay: latency(w.node), "w\(wid.hex.prefix(6)) returns its borrow of \(id.task.counter)") { [self] in
        driverEvent(d) { $0.borrowerRemoved(id, wid, count: 1, now: time.now) }
      }
    }
  }

  /// Node 0 reads the head's log of worker exits with its report; its drivers drop the
  /// dead as borrowers.
  func driversLearnWorkerDeaths() {
    let (dead, next) = workerDeaths.since(log: workerDeathsSeen.log, next: workerDeathsSeen.next)
    workerDeathsSeen = (workerDeaths.id, next)
    let ids = dead.compactMap { WorkerID(binary: $0) }
    guard !ids.isEmpty else { return }
    for d in drivers.indices { driverEvent(d) { $0.borrowersDied(ids, now: time.now) } }
  }
}
