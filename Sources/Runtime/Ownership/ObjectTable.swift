import RuntimeProto

/// The values (or error objects) a process holds, by id: a dictionary whose slots hold
/// a pointer to each message rather than the message itself.
///
/// Why: a hash table keeps a quarter to a half of its slots empty and doubles when it
/// grows; with the message inline (~100 bytes) every empty slot cost that much, and
/// 100,000 small results in flight cost ~330 bytes each. Boxed, a slot is 40 bytes.
///
/// Threading: value type, owned by the CoreWorker shell under its lock.
public struct ObjectTable: Sendable {
  final class Box: Sendable {
    let object: Swiftray_RayObject
    init(_ object: Swiftray_RayObject) { self.object = object }
  }

  private var boxes: [ObjectID: Box] = [:]

  public init() {}

  public subscript(id: ObjectID) -> Swiftray_RayObject? {
    get { boxes[id]?.object }
    set { boxes[id] = newValue.map(Box.init) }
  }

  /// Whether `id` is held: a lookup that copies nothing (the per-id checks of `wait`
  /// and of arrivals).
  @inline(__always)
  public func contains(_ id: ObjectID) -> Bool { boxes.index(forKey: id) != nil }

  @discardableResult
  public mutating func removeValue(forKey id: ObjectID) -> Swiftray_RayObject? {
    boxes.removeValue(forKey: id)?.object
  }

  public var count: Int { boxes.count }

  /// Every held object (for statistics and recovery scans, not per-event paths).
  public var all: [(id: ObjectID, object: Swiftray_RayObject)] { boxes.map { ($0.key, $0.value.object) } }
}
