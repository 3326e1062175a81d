import Foundation
import Testing
import Runtime

@Suite struct LeaseGrantTests {
  let grants = LeaseGrants(hex: LeaseGrants.generateKey())!
  let worker = Data(WorkerID.random().binary)
  let owner = Data(WorkerID.random().binary)

  @Test func aGrantOfTheWorkersNodeAdmitsItsLeasesTasks() {
    var gate = LeaseGate(grants: grants, worker: worker)
    let g = grants.grant(leaseID: 4096, worker: worker, owner: owner)
    #expect(gate.admit(leaseID: 4096, grant: g, owner: owner) == .admit)
    #expect(gate.admit(leaseID: 4096, grant: g, owner: owner) == .admit, "the next task of the lease")
  }

  @Test func aGrantForAnotherOwnerWorkerLeaseOrNodeIsRefused() {
    var gate = LeaseGate(grants: grants, worker: worker)
    let g = grants.grant(leaseID: 4096, worker: worker, owner: owner)
    let other = Data(WorkerID.random().binary)
    let elsewhere = LeaseGrants(hex: LeaseGrants.generateKey())!.grant(leaseID: 4096, worker: worker, owner: owner)
    for (id, grant, who) in [(4096 as UInt64, g, other), (4097, g, owner), (4096, elsewhere, owner), (4096, Data(), owner),
                             (4096, grants.grant(leaseID: 4096, worker: other, owner: owner), owner)] {
      guard case .refuse = gate.admit(leaseID: id, grant: grant, owner: who) else {
        Issue.record("admitted lease \(id)")
        continue
      }
    }
  }

  @Test func aLeaseOlderThanTheNewestSeenHasEnded() {
    var gate = LeaseGate(grants: grants, worker: worker)
    let next = Data(WorkerID.random().binary)
    #expect(gate.admit(leaseID: 10, grant: grants.grant(leaseID: 10, worker: worker, owner: owner), owner: owner) == .admit)
    #expect(gate.admit(leaseID: 11, grant: grants.grant(leaseID: 11, worker: worker, owner: next), owner: next) == .admit)
    #expect(gate.admit(leaseID: 10, grant: grants.grant(leaseID: 10, worker: worker, owner: owner), owner: owner)
      == .refuse("its lease (10) has ended"))
  }

  @Test func aProcessWithoutTheNodesKeyRunsNoPushedTask() {
    var gate = LeaseGate(grants: nil, worker: worker)
    guard case .refuse = gate.admit(leaseID: 1, grant: grants.grant(leaseID: 1, worker: worker, owner: owner), owner: owner) else {
      Issue.record("admitted without a key")
      return
    }
  }

  @Test func keysAreHexOf32Bytes() {
    #expect(LeaseGrants(hex: "00") == nil && LeaseGrants(hex: String(repeating: "zz", count: 32)) == nil)
  }
}
