import Foundation
import NIOPosix
import Runtime
import RuntimeProto
import Synchronization
import SwiftProtobuf
import Testing

@Suite struct LaneTests {
  static func bytes(_ frames: [[UInt8]]) -> [UInt8] { frames.flatMap { Lane.lengthPrefixed($0) } }

  @Test func framesAreCutWhereverTheStreamIsSplit() {
    let frames: [[UInt8]] = (0..<50).map { i in (0..<(i * 7 % 23)).map { UInt8(($0 + i) & 0xFF) } }
    let stream = Self.bytes(frames)
    for chunk in [1, 3, 4, 5, 64, stream.count] {
      var reader = FrameReader(max: 1 << 20)
      var got: [[UInt8]] = []
      var i = 0
      while i < stream.count {
        let end = min(i + chunk, stream.count)
        stream[i..<end].withUnsafeBytes { reader.append($0) }
        i = end
        while case .frame(let f) = reader.next() { got.append(Array(f)) }
      }
      #expect(got == frames, "chunk \(chunk)")
      #expect(reader.buffered == 0)
    }
  }

  /// A lane reads frame after frame for as long as a worker lives: taking each as it
  /// comes must neither move the reader to fresh storage per frame nor let its storage
  /// creep up; and the storage one large frame needed is let go once it is read.
  @Test func aReaderTakingFramesAsTheyComeKeepsItsStorageBounded() {
    var reader = FrameReader(max: 1 << 24)
    let small = Lane.lengthPrefixed([UInt8](repeating: 7, count: 300))
    // A burst read at once (a lane reads up to 1 MiB per wake-up), then frames one by one.
    let burst = (0..<2_000).flatMap { _ in small }
    burst.withUnsafeBytes { reader.append($0) }
    var inBurst = 0
    while case .frame = reader.next() { inBurst += 1 }
    #expect(inBurst == 2_000)
    for _ in 0..<20_000 {
      small.withUnsafeBytes { reader.append($0) }
      guard case .frame(let f) = reader.next() else { Issue.record("no frame"); return }
      #expect(f.count == 300)
    }
    #expect(reader.storageCapacity <= 1 << 20, "storage grew to \(reader.storageCapacity) bytes")
    Lane.lengthPrefixed([UInt8](repeating: 1, count: 4 << 20)).withUnsafeBytes { reader.append($0) }
    guard case .frame(let big) = reader.next() else { Issue.record("no large frame"); return }
    #expect(big.count == 4 << 20)
    small.withUnsafeBytes { reader.append($0) }
    #expect(reader.storageCapacity <= 1 << 20, "a read large frame's storage was kept")
    guard case .frame(let after) = reader.next() else { Issue.record("no frame after the large one"); return }
    #expect(after.count == 300 && reader.buffered == 0)
  }

  /// `receive` reads into storage the reader keeps: what a read returns is appended, a
  /// read of nothing (or an error) appends nothing.
  @Test func framesReceivedIntoTheReadersOwnStorageArriveWhole() {
    let frames: [[UInt8]] = (0..<20).map { i in [UInt8](repeating: UInt8(i), count: i * 5_000) }
    var stream = Self.bytes(frames)[...]
    var reader = FrameReader(max: 1 << 20)
    var got: [[UInt8]] = []
    while !stream.isEmpty {
      let n = reader.receive { buf in
        let n = Swift.min(buf.count, stream.count)
        stream.prefix(n).withUnsafeBytes { buf.copyMemory(from: $0) }
        stream = stream.dropFirst(n)
        return n
      }
      #expect(n > 0 && n == Swift.min(FrameReader.scratchBytes, n + stream.count))
      #expect(reader.receive { _ in 0 } == 0)
      #expect(reader.receive { _ in -1 } == -1)
      while case .frame(let f) = reader.next() { got.append(Array(f)) }
    }
    #expect(got == frames && reader.buffered == 0)
    // A reader for a handshake (a small limit) reads 4 KiB at a time, and 64 KiB once
    // its limit is raised.
    var handshake = FrameReader(max: 100)
    #expect(handshake.receive { $0.count } == 4096)
    handshake.max = 1 << 20
    #expect(handshake.receive { $0.count } == FrameReader.scratchBytes)
    // No limit, however large, overflows the read's size.
    var unlimited = FrameReader(max: .max)
    #expect(unlimited.receive { $0.count } == FrameReader.scratchBytes)
  }

  @Test func aLengthBeyondTheLimitIsReportedBeforeItsBytesArrive() {
    var reader = FrameReader(max: 100)
    let header = Lane.lengthPrefixed([UInt8](repeating: 1, count: 101)).prefix(4)
    Array(header).withUnsafeBytes { reader.append($0) }
    #expect(reader.next() == .tooLarge(101))
    var ok = FrameReader(max: 100)
    Lane.lengthPrefixed([UInt8](repeating: 1, count: 100)).withUnsafeBytes { ok.append($0) }
    guard case .frame(let f) = ok.next() else { Issue.record("a frame of exactly the limit was refused"); return }
    #expect(f.count == 100)
  }

  @Test func aFrameIsEncodedBehindItsLengthAndReadsBackWhole() throws {
    var frame = Swiftray_DataFrame()
    frame.id = 7
    var push = Swiftray_PushTaskRequest()
    push.spec.name = "f"
    push.spec.taskID = Data((0..<24).map { UInt8($0) })
    push.leaseGrant = Data(repeating: 9, count: 300)
    frame.body = .pushTask(push)
    let framed = try #require(Lane.encode(frame))
    let body: [UInt8] = try frame.serializedBytes()
    #expect(framed == Lane.lengthPrefixed(body))
    var reader = FrameReader(max: 1 << 20)
    framed.withUnsafeBytes { reader.append($0) }
    guard case .frame(let f) = reader.next() else { Issue.record("no frame"); return }
    #expect(try Swiftray_DataFrame(serializedBytes: Array(f)) == frame)
    // An empty message is a frame of length zero.
    #expect(Lane.encode(Swiftray_DataFrame()) == [0, 0, 0, 0])
  }

  /// A push is encoded level by level (its spec once); it reads back as the same frame,
  /// whatever the sizes (lengths of one, two and three varint bytes).
  @Test func aPushEncodedLevelByLevelReadsBackAsTheSameFrame() throws {
    for size in [0, 100, 20_000] {
      var frame = Swiftray_DataFrame()
      frame.id = 1 << 40
      var push = Swiftray_PushTaskRequest()
      push.spec.name = "g"
      push.spec.owner.workerID = Data(repeating: 3, count: 28)
      push.spec.resources.quantities = ["CPU": 10_000, "custom": 5]
      var arg = Swiftray_TaskArg()
      arg.value.data = Data(repeating: 1, count: size)
      push.spec.args = [arg, arg]
      push.gpuIds = [0, 3]
      push.leaseID = 12
      push.leaseGrant = Data(repeating: 9, count: size / 2)
      frame.body = .pushTask(push)
      try Self.readsBackWhole(frame, "size \(size)")
    }
  }

  /// `frame`, encoded by `Lane.encode` and cut by a `FrameReader`, reads back as itself
  /// (SwiftProtobuf decoding it) and is as long as SwiftProtobuf's encoding.
  static func readsBackWhole(_ frame: Swiftray_DataFrame, _ what: String) throws {
    let framed = try #require(Lane.encodedByHand(frame), "\(what) written by hand")
    var reader = FrameReader(max: 1 << 23)
    framed.withUnsafeBytes { reader.append($0) }
    guard case .frame(let f) = reader.next() else { Issue.record("no frame: \(what)"); return }
    #expect(try Swiftray_DataFrame(serializedBytes: Array(f)) == frame, "\(what)")
    #expect(framed.count == 4 + (try frame.serializedBytes() as [UInt8]).count, "\(what)")
  }

  /// A reply is encoded level by level too (each returned object once): it reads back
  /// as the same frame, with values of every length class, an error reply, a return
  /// without an object, and a return whose object is empty.
  @Test func aReplyEncodedLevelByLevelReadsBackAsTheSameFrame() throws {
    for size in [0, 1, 127, 128, 20_000, 3_000_000] {
      var frame = Swiftray_DataFrame()
      frame.id = 77
      var reply = Swiftray_PushTaskReply()
      var value = Swiftray_ReturnObject()
      value.objectID = Data(repeating: 5, count: 28)
      value.object.data = Data(repeating: 2, count: size)
      value.object.metadata = Data("PICKLE".utf8)
      var ref = Swiftray_ObjectReference()
      ref.objectID = Data(repeating: 6, count: 28)
      value.object.nestedRefs = [ref]
      var bare = Swiftray_ReturnObject()
      bare.objectID = Data(repeating: 7, count: 28)
      var empty = Swiftray_ReturnObject()
      empty.object = Swiftray_RayObject()
      reply.returns = [value, bare, empty, value]
      reply.isApplicationError = size == 1
      reply.startedWallNs = 1_700_000_000_000_000_000
      reply.endedWallNs = 1_700_000_000_000_000_123
      reply.lostArguments = size == 127 ? [Data(repeating: 8, count: 28)] : []
      frame.body = .pushTaskReply(reply)
      try Self.readsBackWhole(frame, "size \(size)")
    }
  }

  /// Messages of type `M` with one field set each, for every field the generated code
  /// knows: found by decoding each field number with each kind of value.
  static func oneFieldEach<M: SwiftProtobuf.Message & Equatable>(_: M.Type) -> (messages: [M], fields: Set<UInt64>) {
    var out: [M] = [], fields = Set<UInt64>()
    for field in UInt64(1)...60 {
      let key = { (wire: UInt64) -> [UInt8] in
        let k = field << 3 | wire
        return k < 0x80 ? [UInt8(k)] : [UInt8(k & 0x7F) | 0x80, UInt8(k >> 7)]
      }
      let values: [[UInt8]] = [
        key(0) + [1], key(0) + [0xAC, 0x02],  // varints: 1, 300
        key(2) + [0], key(2) + [2, 0x61, 0x62],  // empty, "ab"
        key(2) + [2, 0x18, 0x07],  // a sub-message with field 3 = 7
      ]
      for v in values {
        // Only messages with no unknown field at any depth (a field of a sub-message
        // read with the wrong wire type is kept as unknown there).
        var strict = BinaryDecodingOptions()
        strict.discardUnknownFields = true
        guard let m = try? M(serializedBytes: v), m == (try? M(serializedBytes: v, options: strict)) else { continue }
        out.append(m)
        fields.insert(field)
      }
    }
    return (out, fields)
  }

  /// `frame` is written by hand byte for byte as SwiftProtobuf writes it (behind its
  /// length), and read back by hand as itself.
  static func writtenAndReadByHand(_ frame: Swiftray_DataFrame, _ what: String) throws {
    let framed = try #require(Lane.encodedByHand(frame), "\(what) written by hand")
    let whole: [UInt8] = try frame.serializedBytes()
    #expect(framed == Array(withUnsafeBytes(of: UInt32(whole.count).bigEndian) { Array($0) }) + whole, "\(what)")
    #expect(framed[4...].withUnsafeBytes { WireReader.frame($0) } == frame, "\(what) read back by hand")
  }

  /// Each message a reply is written with by hand (`WireWriter`), with one field set at
  /// a time, every field the generated code knows found by decoding each field number
  /// with each kind of value: the frame is byte for byte what SwiftProtobuf writes. A
  /// field added to the proto and not to `WireWriter` fails here.
  @Test func everyFieldOfAReplyIsWrittenByHandAsSwiftProtobufWritesIt() throws {
    func check(_ reply: Swiftray_PushTaskReply, _ what: String, head: Swiftray_DataFrame = .with { $0.id = 9 }) throws {
      var frame = head
      frame.body = .pushTaskReply(reply)
      try Self.writtenAndReadByHand(frame, what)
    }
    let replies = Self.oneFieldEach(Swiftray_PushTaskReply.self)
    let returns = Self.oneFieldEach(Swiftray_ReturnObject.self)
    let objects = Self.oneFieldEach(Swiftray_RayObject.self)
    // The generator finds the fields there are (if the proto grows, so does this).
    #expect(replies.fields.isSuperset(of: Set(1...11)) && returns.fields == [1, 2] && objects.fields.isSuperset(of: Set(1...6)))
    for (i, r) in replies.messages.enumerated() { try check(r, "reply variant \(i)") }
    // The frame's own fields (those outside its body) are written by hand too.
    let heads = Self.oneFieldEach(Swiftray_DataFrame.self).messages.filter { $0.body == nil }
    #expect(heads.count >= 3)
    for (i, h) in heads.enumerated() { try check(.with { $0.endedWallNs = 5 }, "frame variant \(i)", head: h) }
    for (i, ret) in returns.messages.enumerated() { try check(.with { $0.returns = [ret, ret] }, "return variant \(i)") }
    for (i, o) in objects.messages.enumerated() {
      try check(.with { $0.returns = [.with { $0.objectID = Data([1, 2]); $0.object = o }] }, "object variant \(i)")
    }
  }

  /// A push is written by hand too: each message of a push with one field set at a
  /// time (the generator finds every field), and numbers below zero (ten varint bytes),
  /// come out byte for byte as SwiftProtobuf writes them and read back by hand.
  @Test func everyFieldOfAPushIsWrittenByHandAsSwiftProtobufWritesIt() throws {
    func check(_ push: Swiftray_PushTaskRequest, _ what: String) throws {
      var frame = Swiftray_DataFrame()
      frame.id = 4
      frame.body = .pushTask(push)
      try Self.writtenAndReadByHand(frame, what)
    }
    let pushes = Self.oneFieldEach(Swiftray_PushTaskRequest.self)
    let specs = Self.oneFieldEach(Swiftray_TaskSpec.self)
    let args = Self.oneFieldEach(Swiftray_TaskArg.self)
    let refs = Self.oneFieldEach(Swiftray_ObjectReference.self)
    let addresses = Self.oneFieldEach(Swiftray_Address.self)
    let functions = Self.oneFieldEach(Swiftray_FunctionDescriptor.self)
    let shapes = Self.oneFieldEach(Swiftray_ResourceShape.self)
    let objects = Self.oneFieldEach(Swiftray_RayObject.self)
    let strategies = Self.oneFieldEach(Swiftray_SchedulingStrategy.self)
    #expect(strategies.fields.isSuperset(of: Set(1...6)))
    for (i, st) in strategies.messages.enumerated() { try check(.with { $0.spec.strategy = st }, "strategy variant \(i)") }
    #expect(pushes.fields.isSuperset(of: Set(1...5)) && specs.fields.isSuperset(of: Set(1...25))
            && args.fields == [1, 2, 3] && refs.fields == [1, 2] && addresses.fields.isSuperset(of: Set(1...5))
            && functions.fields == [1, 2] && shapes.fields == [1])
    for (i, p) in pushes.messages.enumerated() { try check(p, "push variant \(i)") }
    for (i, s) in specs.messages.enumerated() { try check(.with { $0.spec = s }, "spec variant \(i)") }
    for (i, a) in args.messages.enumerated() { try check(.with { $0.spec.args = [a, a] }, "arg variant \(i)") }
    for (i, o) in objects.messages.enumerated() {
      try check(.with { $0.spec.args = [.with { $0.value = o }] }, "object variant \(i)")
    }
    for (i, r) in refs.messages.enumerated() {
      try check(.with { $0.spec.args = [.with { $0.ref = r }, .with { $0.value.nestedRefs = [r] }] }, "ref variant \(i)")
    }
    for (i, a) in addresses.messages.enumerated() {
      try check(.with { $0.spec.owner = a; $0.spec.args = [.with { $0.ref.owner = a }] }, "address variant \(i)")
    }
    for (i, f) in functions.messages.enumerated() { try check(.with { $0.spec.function = f }, "function variant \(i)") }
    for (i, r) in shapes.messages.enumerated() { try check(.with { $0.spec.resources = r }, "resources variant \(i)") }
    try check(.with {
      $0.gpuIds = [-1, 2, 1 << 20]
      $0.spec.numReturns = -1
      $0.spec.generatorBackpressure = -3
      $0.spec.owner.pid = -5
      $0.spec.strategy.bundleIndex = -1
      $0.spec.strategy.kind = .placementGroup
      $0.spec.resources.quantities = ["CPU": -10_000, "": 0, "GPU": 20_000]
    }, "numbers below zero, three resources")
  }

  /// A reply (or a push) holding fields this build does not know is encoded by
  /// SwiftProtobuf, keeping them.
  @Test func aReplyWithUnknownFieldsKeepsThem() throws {
    var reply = try Swiftray_PushTaskReply(serializedBytes: [0xF8, 0x03, 0x05])  // field 63 = 5
    #expect(!reply.unknownFields.data.isEmpty)
    reply.startedWallNs = 3
    var frame = Swiftray_DataFrame()
    frame.body = .pushTaskReply(reply)
    #expect(Lane.encodedByHand(frame) == nil, "not by hand: it would drop them")
    let framed = try #require(Lane.encode(frame))
    #expect(try Swiftray_DataFrame(serializedBytes: Array(framed.dropFirst(4))) == frame)
    var push = Swiftray_DataFrame()
    push.body = .pushTask(.with { $0.spec.args = [.with { $0.value = try! Swiftray_RayObject(serializedBytes: [0xF8, 0x03, 0x05]) }] })
    #expect(Lane.encodedByHand(push) == nil, "nor a push with one deep in its spec")
    let pushed = try #require(Lane.encode(push))
    #expect(try Swiftray_DataFrame(serializedBytes: Array(pushed.dropFirst(4))) == push)
  }

  /// Pushes and replies are read by hand; whatever the bytes (valid frames of every kind, then
  /// bytes flipped, cut, inserted), the frame read is SwiftProtobuf's, or nil when
  /// SwiftProtobuf refuses them.
  @Test func aFrameReadByHandIsWhatSwiftProtobufReadsWhateverTheBytes() throws {
    var seeds: [[UInt8]] = []
    for o in Self.oneFieldEach(Swiftray_RayObject.self).messages + [Swiftray_RayObject()] {
      var reply = Swiftray_PushTaskReply()
      reply.returns = [.with { $0.objectID = Data(repeating: 4, count: 28); $0.object = o }, .with { $0.objectID = Data([1]) }]
      reply.endedWallNs = 1 << 62
      reply.lostDetail = "n\u{e9}ud"
      reply.lostArguments = [Data([9, 9])]
      var frame = Swiftray_DataFrame()
      frame.id = 300
      frame.body = .pushTaskReply(reply)
      let bytes: [UInt8] = try frame.serializedBytes()
      #expect(bytes.withUnsafeBytes { WireReader.frame($0) } == frame, "a valid reply is read by hand")
      seeds.append(bytes)
    }
    var push = Swiftray_DataFrame()
    push.id = 12
    push.body = .pushTask(.with {
      $0.spec.taskID = Data(repeating: 1, count: 24)
      $0.spec.name = "f\u{e9}"
      $0.spec.owner = .with { $0.workerID = Data([1, 2]); $0.endpoint = "10.0.0.1:7"; $0.pid = -2 }
      $0.spec.function = .with { $0.functionID = Data([3]); $0.name = "m.f" }
      $0.spec.args = [.with { $0.ref = .with { $0.objectID = Data([4]); $0.owner.nodeID = Data([5]) } },
                      .with { $0.value = .with { $0.data = Data([6, 7]); $0.nestedRefs = [.with { $0.objectID = Data([8]) }] } }]
      $0.spec.resources.quantities = ["CPU": 10_000, "x": -1]
      $0.spec.strategy.kind = .spread
      $0.spec.actorCreation.maxRestarts = 2
      $0.spec.generatorBackpressure = -1
      $0.gpuIds = [0, 1]
      $0.leaseGrant = Data([9])
    })
    let pushBytes: [UInt8] = try push.serializedBytes()
    #expect(pushBytes.withUnsafeBytes { WireReader.frame($0) } == push, "a valid push is read by hand")
    seeds.append(pushBytes)
    // GPU ids not packed (one key each), which a reader must take as well.
    let unpacked: [UInt8] = [0x52, 10, 0x0A, 3, 0x6A, 1, 0x67, 0x10, 0x07, 0x10, 0xAC, 0x02]
    let expectedUnpacked = Swiftray_DataFrame.with { $0.body = .pushTask(.with { $0.spec.name = "g"; $0.gpuIds = [7, 300] }) }
    #expect(try Swiftray_DataFrame(serializedBytes: unpacked) == expectedUnpacked)
    #expect(unpacked.withUnsafeBytes { WireReader.frame($0) } == expectedUnpacked, "unpacked ids are read by hand")
    seeds.append(unpacked)
    var rng = SeededRandom(seed: 18)
    var agreedNonNil = 0, readByHand = 0
    for i in 0..<6000 {
      var b = seeds[i % seeds.count]
      if i >= seeds.count {
        for _ in 0..<(1 + Int(rng.next() % 3)) where !b.isEmpty {
          let at = Int(rng.next() % UInt64(b.count))
          switch rng.next() % 4 {
          case 0: b[at] = UInt8(truncatingIfNeeded: rng.next())
          case 1: b[at] ^= 0x80
          case 2: b.removeSubrange(at...)
          default: b.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
          }
        }
      }
      let expected = try? Swiftray_DataFrame(serializedBytes: b)
      #expect(Lane.decode(b[...]) == expected, "bytes \(b)")
      if expected != nil { agreedNonNil += 1 }
      if b.withUnsafeBytes({ WireReader.frame($0) }) != nil { readByHand += 1 }
    }
    #expect(agreedNonNil > 600, "the mutations left enough frames whole to compare")
    #expect(readByHand > 300, "and enough of them were read by hand")
  }

  @Test func idsReadTheSameFromEveryKindOfByteCollection() throws {
    let task = TaskID(prefix: 0x0102_0304_0506_0708, counter: 0xFFEE_DDCC_BBAA_9988, job: 42)
    let object = ObjectID.forReturn(of: task, index: 0xA1B2_C3D4)
    let bytes = object.binary
    #expect(bytes.count == 28)
    #expect(ObjectID(binary: bytes) == object)
    #expect(ObjectID(binary: Data(bytes)) == object)
    // A slice that does not start at index 0, and bytes that are not contiguous.
    let padded = Data([0xFF, 0xFF] + bytes)
    #expect(ObjectID(binary: padded.dropFirst(2)) == object)
    #expect(ObjectID(binary: ([0xEE] + bytes)[1...]) == object)
    #expect(ObjectID(binary: bytes.lazy.map { $0 }) == object)
    #expect(TaskID(binary: Data(task.binary)) == task)
    #expect(ObjectID(binary: Data(bytes.dropLast())) == nil)
  }

  @Test func aThreadKeepsItsWakeupAndAnotherThreadHasItsOwn() async throws {
    let mine = Wakeup.forThisThread()
    #expect(Wakeup.forThisThread() === mine)
    let other = Mutex<Wakeup?>(nil)
    let t = Thread { other.withLock { $0 = Wakeup.forThisThread() } }
    t.start()
    let deadline = Date().addingTimeInterval(10)
    while other.withLock({ $0 == nil }) && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
    let theirs = try #require(other.withLock { $0 })
    #expect(theirs !== mine)
    // Still usable after its thread ended (we hold a reference): a signal is seen.
    try await Task.sleep(for: .milliseconds(50))
    theirs.signal()
    var p = pollfd(fd: theirs.fd, events: Int16(POLLIN), revents: 0)
    #expect(poll(&p, 1, 1000) == 1)
  }

  /// A worker's side of lanes, polled by a thread of its own as a worker's task thread
  /// polls it; it answers each pushed task with its task id (and in `lostDetail`,
  /// "more" when the push came marked `moreInFlight`). `holdUntil`: it answers nothing
  /// until that many pushes arrived, then all of them.
  final class EchoWorker: Sendable {
    let server: LaneServer
    let stop = Atomic<Bool>(false)
    let done = DispatchSemaphore(value: 0)
    let path: String

    init(auth: ClusterAuth, holdUntil: Int = 0) throws {
      let dir = NSTemporaryDirectory() + "lane-\(UInt32.random(in: 0 ... .max))"
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      path = dir + "/w-0123456789abcdef.lane"
      server = try LaneServer(path: path, auth: auth, wake: Wakeup())
      let thread = Thread { [self] in
        var held: [(Swiftray_PushTaskReply, DataPlaneResponder)] = []
        var served = 0
        while !stop.load(ordering: .acquiring) {
          server.poll(timeoutNanos: 20_000_000) { frame, responder in
            guard case .pushTask(let req)? = frame.body else {
              return responder.respond(.error(.with { $0.message = "not a task" }))
            }
            var reply = Swiftray_PushTaskReply()
            reply.returns = [.with { $0.objectID = req.spec.taskID }]
            reply.lostDetail = frame.moreInFlight ? "more" : ""
            served += 1
            held.append((reply, responder))
            if served >= holdUntil {
              for (r, to) in held { to.respond(.pushTaskReply(r)) }
              held = []
            }
          }
        }
        done.signal()
      }
      thread.start()
    }

    var endpoint: Endpoint { .unix(String(path.dropLast(5)) + ".sock") }

    func shutdown() {
      server.close()
      stop.store(true, ordering: .releasing)
      done.wait()
    }
  }

  static func push(_ lanes: LaneClients, _ ep: Endpoint, _ id: UInt32, padding: Int = 0) async -> Result<Data, SwiftrayError> {
    await pushReply(lanes, ep, id, padding: padding).map { $0.returns[0].objectID }
  }

  static func pushReply(_ lanes: LaneClients, _ ep: Endpoint, _ id: UInt32, padding: Int = 0) async
    -> Result<Swiftray_PushTaskReply, SwiftrayError> {
    await withCheckedContinuation { c in
      var req = Swiftray_PushTaskRequest()
      req.spec.taskID = withUnsafeBytes(of: id.bigEndian) { Data($0) }
      if padding > 0 { req.spec.name = String(repeating: "x", count: padding) }
      let sent = lanes.request(ep, .pushTask(req), .frame({ r in
        switch r {
        case .success(let f):
          guard case .pushTaskReply(let rep)? = f.body, !rep.returns.isEmpty else {
            return c.resume(returning: .failure(SwiftrayError(.system, "unexpected reply \(f)")))
          }
          c.resume(returning: .success(rep))
        case .failure(let e): c.resume(returning: .failure(e))
        }
      }))
      if !sent { c.resume(returning: .failure(SwiftrayError(.system, "not sent by lane"))) }
    }
  }

  @Test func repliesFromManyThreadsComeBackToTheirRequests() async throws {
    let auth = try ClusterAuth(token: "lane-secret-0123456789", source: "test")
    let worker = try EchoWorker(auth: auth)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let lanes = LaneClients(auth: auth, group: group)
    let results = await withTaskGroup(of: (UInt32, Result<Data, SwiftrayError>).self) { g in
      for i in 0..<400 as Range<UInt32> { g.addTask { (i, await Self.push(lanes, worker.endpoint, i)) } }
      var all: [(UInt32, Result<Data, SwiftrayError>)] = []
      for await r in g { all.append(r) }
      return all
    }
    #expect(results.count == 400)
    for (i, r) in results {
      #expect((try? r.get()) == withUnsafeBytes(of: i.bigEndian) { Data($0) }, "request \(i)")
    }
    lanes.closeAll()
    worker.shutdown()
    try await group.shutdownGracefully()
  }

  /// A push sent while many others wait for their replies on the same lane is marked
  /// `moreInFlight` (its worker then sleeps for the next instead of spinning); one sent
  /// alone, or behind a few (pipelined tasks), is not.
  @Test func aPushBehindManyInFlightIsMarkedAsStreaming() async throws {
    let n = LaneClients.streamingInFlight + 4
    let worker = try EchoWorker(auth: .disabled, holdUntil: n + 1)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let lanes = LaneClients(auth: .disabled, group: group)
    // The worker answers nothing before all have come, so push k has k ahead of it.
    var replies: [UInt32: Swiftray_PushTaskReply] = [:]
    await withTaskGroup(of: (UInt32, Result<Swiftray_PushTaskReply, SwiftrayError>).self) { g in
      for i in 0...n {
        g.addTask { (UInt32(i), await Self.pushReply(lanes, worker.endpoint, UInt32(i))) }
        // Sent in this order: the next goes once this one is on the lane (the last
        // one's arrival has the worker answer them all at once).
        guard i < n else { break }
        let deadline = ContinuousClock.now + .seconds(20)
        while lanes.inFlight(worker.endpoint) <= i, ContinuousClock.now < deadline { await Task.yield() }
        if lanes.inFlight(worker.endpoint) <= i {
          // Never held by the worker: fail what waits rather than wait for ever.
          Issue.record("push \(i) did not go out on the lane")
          lanes.closeAll()
          break
        }
      }
      for await (i, r) in g { replies[i] = try? r.get() }
    }
    for i in 0...n {
      let marked = try #require(replies[UInt32(i)], "push \(i) answered").lostDetail == "more"
      #expect(marked == (i >= LaneClients.streamingInFlight), "push \(i), \(i) in flight ahead of it")
    }
    // All answered: the next goes alone, unmarked.
    #expect(try await Self.pushReply(lanes, worker.endpoint, 99).get().lostDetail == "")
    lanes.closeAll()
    worker.shutdown()
    try await group.shutdownGracefully()
  }

  /// Pushes behind many in flight are corked (`LaneClients.maxCorked`), yet every one
  /// reaches a worker that answers nothing until all of them came: neither replies nor
  /// a thread waiting are needed to send corked frames (the reactor's patience is).
  @Test func corkedPushesReachAWorkerThatAnswersOnlyOnceAllCame() async throws {
    let n = LaneClients.streamingInFlight + LaneClients.maxCorked + 5
    let worker = try EchoWorker(auth: .disabled, holdUntil: n)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let lanes = LaneClients(auth: .disabled, group: group)
    let answered = await withTaskGroup(of: Bool.self) { g in
      for i in 0..<n { g.addTask { (try? await Self.push(lanes, worker.endpoint, UInt32(i)).get()) != nil } }
      var count = 0
      for await ok in g where ok { count += 1 }
      return count
    }
    #expect(answered == n)
    lanes.closeAll()
    worker.shutdown()
    try await group.shutdownGracefully()
  }

  /// Frames far larger than the socket's buffer: the writer leaves what the socket does
  /// not take for the reactor, and every frame still arrives whole and in order.
  @Test func framesLargerThanTheSocketBufferArriveWhole() async throws {
    let worker = try EchoWorker(auth: .disabled)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let lanes = LaneClients(auth: .disabled, group: group)
    // Rounds, because what could go wrong (a write interest dropped between a writer
    // and the reactor) depends on timing.
    for round in 0..<5 as Range<UInt32> {
      let results = await withTaskGroup(of: (UInt32, Result<Data, SwiftrayError>).self) { g in
        for i in 0..<40 as Range<UInt32> {
          g.addTask { (i, await Self.push(lanes, worker.endpoint, round * 100 + i, padding: 300_000)) }
        }
        var all: [(UInt32, Result<Data, SwiftrayError>)] = []
        for await r in g { all.append(r) }
        return all
      }
      #expect(results.count == 40)
      for (i, r) in results {
        #expect((try? r.get()) == withUnsafeBytes(of: (round * 100 + i).bigEndian) { Data($0) }, "request \(i)")
      }
    }
    lanes.closeAll()
    worker.shutdown()
    try await group.shutdownGracefully()
  }

  @Test func aLaneWithTheWrongTokenIsClosedBeforeAnythingIsServed() async throws {
    let worker = try EchoWorker(auth: try ClusterAuth(token: "right-token-0123456789", source: "test"))
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let lanes = LaneClients(auth: try ClusterAuth(token: "wrong-token-0123456789", source: "test"), group: group)
    let r = await Self.push(lanes, worker.endpoint, 7)
    guard case .failure(let e) = r else { Issue.record("a lane with the wrong token was served"); return }
    #expect(e.message.contains("connection lost"))
    lanes.closeAll()
    worker.shutdown()
    try await group.shutdownGracefully()
  }

  @Test func requestsInFlightFailWhenTheWorkerGoesAway() async throws {
    let auth = ClusterAuth.disabled
    let dir = NSTemporaryDirectory() + "lane-\(UInt32.random(in: 0 ... .max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let path = dir + "/w-0123456789abcdef.lane"
    // A worker that reads what it is sent and never answers, then goes away.
    let server = try LaneServer(path: path, auth: auth, wake: Wakeup())
    let received = DispatchSemaphore(value: 0)
    let stop = Atomic<Bool>(false)
    let stopped = DispatchSemaphore(value: 0)
    Thread {
      while !stop.load(ordering: .acquiring) {
        server.poll(timeoutNanos: 20_000_000) { _, _ in received.signal() }
      }
      // The worker goes away: its listener and lanes close.
      server.close()
      server.poll(timeoutNanos: 0) { _, _ in }
      stopped.signal()
    }.start()
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let lanes = LaneClients(auth: auth, group: group)
    let ep = Endpoint.unix(dir + "/w-0123456789abcdef.sock")
    async let r = Self.push(lanes, ep, 1)
    await Task.detached { received.wait() }.value
    stop.store(true, ordering: .releasing)
    await Task.detached { stopped.wait() }.value
    guard case .failure(let e) = await r else { Issue.record("a request to a worker that went away succeeded"); return }
    #expect(e.message.contains("connection lost"))
    lanes.closeAll()
    try await group.shutdownGracefully()
  }
}

