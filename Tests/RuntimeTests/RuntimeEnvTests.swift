import Foundation
import Testing
import Runtime

private let pkgA = "pkg://" + String(repeating: "a", count: 64) + ".zip"
private let pkgB = "pkg://" + String(repeating: "b", count: 64) + ".zip"

private func cpus(_ n: Double) -> ResourceSet { ResourceSet(units: ["CPU": n]) }

private func starts(_ actions: [LeaseQueue.Action]) -> [String] {
  actions.compactMap { if case .startWorker(let env) = $0 { return env } else { return nil } }
}

private func kills(_ actions: [LeaseQueue.Action]) -> [WorkerID] {
  actions.compactMap { if case .killWorker(let w) = $0 { return w } else { return nil } }
}

private func grantedWorker(_ actions: [LeaseQueue.Action]) -> WorkerID? {
  actions.lazy.compactMap { if case .grant(_, let l) = $0 { return l.worker } else { return nil } }.first
}

@Suite struct RuntimeEnvParseTests {
  @Test func theEmptyEnvironmentIsTheNodesOwn() throws {
    #expect(try RuntimeEnv.parse("") == nil)
  }

  @Test func aCanonicalEnvironmentParsesWithItsDefaultsAndAStableKey() throws {
    let json = #"{"config":{"eager_install":false,"setup_timeout_seconds":30},"env_vars":{"A":"1"},"pip":{"packages":["six==1.16.0"]},"py_modules":["\#(pkgB)"],"working_dir":"\#(pkgA)"}"#
    let env = try #require(try RuntimeEnv.parse(json))
    #expect(env.envVars == ["A": "1"])
    #expect(env.workingDir?.uri == pkgA && env.pyModules.map(\.uri) == [pkgB])
    #expect(env.packages.map(\.uri) == [pkgA, pkgB])
    #expect(env.pipPackages == ["six==1.16.0"] && env.pipKey != nil)
    #expect(env.setupTimeoutSeconds == 30 && env.eagerInstall == false)
    let again = try RuntimeEnv.parse(json)
    #expect(env.key.count == 32 && env.key == again?.key)
    #expect(try RuntimeEnv.parse(#"{"env_vars":{"A":"2"}}"#)?.key != env.key)
    #expect(try RuntimeEnv.parse(#"{"env_vars":{}}"#)?.setupTimeoutSeconds == RuntimeEnv.defaultSetupTimeoutSeconds)
    #expect(try RuntimeEnv.parse(#"{"config":{"setup_timeout_seconds":-1}}"#)?.setupTimeoutSeconds == nil)
  }

  @Test(arguments: [
    "[1]", "{", #"{"conda":"x"}"#, #"{"env_vars":{"A":1}}"#, #"{"env_vars":{"A=B":"1"}}"#,
    #"{"working_dir":"/home/me/proj"}"#, #"{"working_dir":"pkg://abc.zip"}"#, #"{"py_modules":"pkg://x"}"#,
    #"{"pip":["six"]}"#, #"{"pip":{"packages":["six\nrequests"]}}"#, #"{"pip":{"packages":[""]}}"#,
    #"{"config":{"setup_timeout_seconds":0}}"#, #"{"config":{"setup_timeout_seconds":true}}"#,
    #"{"config":{"eager_install":"yes"}}"#,
  ])
  func malformedEnvironmentsAreRefusedNamingWhatIsWrong(_ json: String) {
    #expect(throws: SwiftrayError.self) { _ = try RuntimeEnv.parse(json) }
  }

  @Test func anOversizedEnvironmentIsRefusedBeforeItIsDecoded() {
    let big = #"{"env_vars":{"A":""# + String(repeating: "x", count: RuntimeEnv.maxJSONBytes) + #""}}"#
    #expect(throws: SwiftrayError.self) { _ = try RuntimeEnv.parse(big) }
  }

  @Test func aWorkersContextPutsTheWorkingDirFirstAndNamesTheVirtualenv() throws {
    let env = try #require(try RuntimeEnv.parse(#"{"env_vars":{"K":"v"},"py_modules":["\#(pkgB)"],"working_dir":"\#(pkgA)"}"#))
    let a = try #require(RuntimeEnv.Package(uri: pkgA)), b = try #require(RuntimeEnv.Package(uri: pkgB))
    let json = env.context(packageDirs: [a: "/c/pkg/a", b: "/c/pkg/b"], sitePackages: "/c/pip/k/lib/site-packages")
    let c = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    #expect(c["cwd"] as? String == "/c/pkg/a")
    #expect(c["sys_path"] as? [String] == ["/c/pkg/a", "/c/pkg/b"])
    #expect(c["site_dirs"] as? [String] == ["/c/pip/k/lib/site-packages"])
    #expect(c["env_vars"] as? [String: String] == ["K": "v"])
    #expect(c["runtime_env"] as? String == env.json)
  }
}

@Suite struct PackageStoreTests {
  @Test func aPackageIsCheckedAgainstItsDigestAndSize() throws {
    let data = Data((0..<5_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
    let uri = "pkg://\(PackageStore.digest(data)).zip"
    #expect(try PackageStore.checked(uri: uri, data, maxBytes: 10 << 20).uri == uri)
    #expect(throws: SwiftrayError.self) { _ = try PackageStore.checked(uri: pkgA, data, maxBytes: 10 << 20) }
    #expect(throws: SwiftrayError.self) { _ = try PackageStore.checked(uri: uri, data, maxBytes: 1 << 20) }
    #expect(throws: SwiftrayError.self) { _ = try PackageStore.checked(uri: "s3://bucket/x.zip", data, maxBytes: 10 << 20) }
    let chunks = PackageStore.chunks(data)
    #expect(chunks.count == 3 && chunks.allSatisfy { $0.count <= PackageStore.chunkBytes })
    #expect(chunks.reduce(Data(), +) == data)
  }

  @Test func raysPackageNamesAreCheckedAndTheirAliasesNameOnlyOurPackages() {
    #expect(PackageStore.isRayPackageName("_ray_pkg_029f88d5ecc55e1e.zip"))
    for bad in ["_ray_pkg_x.whl", "ray_pkg_1.zip", "_ray_pkg_../../x.zip", "_ray_pkg_a/b.zip", "_ray_pkg_" + String(repeating: "a", count: 200) + ".zip"] {
      #expect(!PackageStore.isRayPackageName(Substring(bad)), "\(bad)")
    }
    #expect(PackageStore.aliasKey("_ray_pkg_1.zip") == Data("gcs://_ray_pkg_1.zip".utf8))
    #expect(PackageStore.decodeAlias(Data(pkgA.utf8))?.uri == pkgA)
    #expect(PackageStore.decodeAlias(Data("gcs://_ray_pkg_1.zip".utf8)) == nil)
    #expect(PackageStore.decodeAlias(Data(repeating: 65, count: 1000)) == nil)
  }

  @Test func aFollowedLogIsSentInWholeCharactersAndOnlyItsTailRouteIsAWebSocket() {
    let text = String(repeating: "é", count: 5) + "x"  // 11 bytes
    let frames = Dashboard.frames(text, max: 4)
    #expect(frames.joined() == text && frames.allSatisfy { $0.utf8.count <= 4 && !$0.contains("\u{FFFD}") })
    #expect(Dashboard.frames("").isEmpty)
    #expect(Dashboard.tailedJob("/api/jobs/raysubmit_1/logs/tail") == "raysubmit_1")
    #expect(Dashboard.tailedJob("/api/jobs/raysubmit_1/logs") == nil)
    #expect(Dashboard.tailedJob("/api/jobs/a/b/logs/tail") == nil)
  }

  @Test func aManifestReadBackIsRangeChecked() {
    let m = PackageStore.Manifest(size: 5_000_000, chunks: 3)
    #expect(PackageStore.decodeManifest(PackageStore.encode(m), maxBytes: 10 << 20) == m)
    for bad in ["5000000,2", "-1,0", "9999999999999999999999,1", "5000000", "a,b", "20000000,10"] {
      #expect(PackageStore.decodeManifest(Data(bad.utf8), maxBytes: 10 << 20) == nil, "\(bad)")
    }
  }
}

@Suite struct RuntimeEnvCacheTests {
  let s: UInt64 = 1_000_000_000

  func env(_ json: String) throws -> RuntimeEnv { try #require(try RuntimeEnv.parse(json)) }

  @Test func whatNoLiveEnvironmentUsesGoesOnceStaleOrWhileTheCacheIsOverItsSize() throws {
    let a = try env(#"{"working_dir":"\#(pkgA)"}"#)
    let b = try env(#"{"pip":{"packages":["six"]},"working_dir":"\#(pkgB)"}"#)
    var cache = RuntimeEnvCache()
    let pa = RuntimeEnvCache.Resource.package(try #require(RuntimeEnv.Package(uri: pkgA)))
    let pb = RuntimeEnvCache.Resource.package(try #require(RuntimeEnv.Package(uri: pkgB)))
    let venv = RuntimeEnvCache.Resource.venv(try #require(b.pipKey))
    cache.added(pa, path: "/c/a", bytes: 100, now: 0)
    cache.used(a, now: 0)
    cache.added(pb, path: "/c/b", bytes: 50, now: 10 * s)
    cache.added(venv, path: "/c/v/site", bytes: 500, now: 10 * s)
    cache.used(b, now: 10 * s)
    #expect(cache.totalBytes == 650)
    // Within size and fresh: nothing goes, used or not.
    #expect(cache.evictions(inUse: [], now: 20 * s, maxBytes: 1000, ttlNanos: 3600 * s).resources.isEmpty)
    // Over size: the least recently used unused one goes first, until it fits.
    let over = cache.evictions(inUse: [b.key], now: 20 * s, maxBytes: 600, ttlNanos: 3600 * s)
    #expect(over.resources.map(\.0) == [pa] && cache.totalBytes == 550)
    #expect(over.forgotten == [a.key], "an environment whose package went is forgotten (set up again when asked for)")
    #expect(cache.path(pa) == nil && cache.path(pb) == "/c/b")
    // In use: kept however stale; unused and stale: gone.
    #expect(cache.evictions(inUse: [b.key], now: 7200 * s, maxBytes: 1 << 30, ttlNanos: 3600 * s).resources.isEmpty)
    let stale = cache.evictions(inUse: [], now: 7200 * s, maxBytes: 1 << 30, ttlNanos: 3600 * s)
    #expect(Set(stale.resources.map(\.0)) == [pb, venv] && cache.totalBytes == 0 && stale.forgotten == [b.key])
    // Environments without packages (env_vars only) are forgotten once unused long enough,
    // never at once: one just set up is not in use until its request is queued.
    let plain = try env(#"{"env_vars":{"A":"1"}}"#)
    cache.used(plain, now: 7200 * s)
    #expect(cache.evictions(inUse: [], now: 7201 * s, maxBytes: 0, ttlNanos: 0).forgotten.isEmpty)
    #expect(cache.evictions(inUse: [], now: 7300 * s, maxBytes: 0, ttlNanos: 0).forgotten == [plain.key])
    #expect(cache.environments.isEmpty)
  }
}

@Suite struct LeaseQueueRuntimeEnvTests {
  let owner = WorkerID.random()

  @Test func aRequestIsGrantedOnlyAWorkerOfItsEnvironment() {
    var q = LeaseQueue(total: cpus(2), limits: .init(maxStartingWorkers: 4, maxWorkers: 8))
    #expect(starts(q.prestart(count: 1)) == [""])
    let plain = WorkerID.random()
    _ = q.workerStarting(plain)
    _ = q.workerRegistered(plain)
    // An idle worker of the node's own environment does not serve env "e1": one is started for it.
    let asked = q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner, env: "e1"))
    #expect(starts(asked) == ["e1"] && grantedWorker(asked) == nil)
    let w1 = WorkerID.random()
    _ = q.workerStarting(w1, env: "e1")
    #expect(grantedWorker(q.workerRegistered(w1)) == w1)
    // A plain request still gets the plain worker.
    #expect(grantedWorker(q.leaseRequested(.init(id: 2, shape: cpus(1), owner: owner))) == plain)
    #expect(q.environmentsInUse == ["e1"])
  }

  @Test func pastOneWorkerPerCPUIdleWorkersOfOtherEnvironmentsMakeRoom() {
    var q = LeaseQueue(total: cpus(2), limits: .init(maxStartingWorkers: 4, maxWorkers: 8))
    _ = q.prestart(count: 2)
    let plain = [WorkerID.random(), WorkerID.random()]
    for w in plain { _ = q.workerStarting(w); _ = q.workerRegistered(w) }
    let asked = q.leaseRequested(.init(id: 1, shape: cpus(1), owner: owner, env: "e1"))
    #expect(starts(asked) == ["e1"])
    let killed = kills(asked)
    #expect(killed.count == 1 && plain.contains(killed[0]), "one idle plain worker goes for the new one")
    #expect(q.idleWorkerCount == 1)
    // Once it exits nothing more is killed; the e1 worker serves the request.
    #expect(kills(q.workerExited(killed[0])).isEmpty)
    let w = WorkerID.random()
    _ = q.workerStarting(w, env: "e1")
    #expect(grantedWorker(q.workerRegistered(w)) == w)
  }
}
