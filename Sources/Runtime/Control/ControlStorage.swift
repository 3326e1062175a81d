import Foundation
import Synchronization

/// Where the ControlService keeps its tables (Ray's GCS store client): named tables of
/// byte keys and values — nodes, jobs, actors, and one KV table per namespace. The
/// service writes every durable change through this seam (resource reports are soft
/// state and stay in memory); a Redis implementation plugs in here for a head that
/// survives restarts.
///
/// Threading: any thread or task; implementations serialize internally.
public protocol ControlStorage: Sendable {
  /// Stores `value` under `key`; with `overwrite: false` keeps an existing value and
  /// returns false.
  func put(_ table: String, _ key: Data, _ value: Data, overwrite: Bool) async throws -> Bool
  func get(_ table: String, _ key: Data) async throws -> Data?
  func delete(_ table: String, _ key: Data) async throws
  func getAll(_ table: String) async throws -> [Data: Data]
}

/// The tables' names.
public enum ControlTable {
  public static let nodes = "nodes"
  public static let jobs = "jobs"
  public static let actors = "actors"
  public static let placementGroups = "placement_groups"
  public static func kv(_ namespace: String) -> String { "kv:" + namespace }
}

/// Ray's default: the tables live in the head's memory and die with it.
public final class InMemoryControlStorage: ControlStorage {
  let tables = Locked<[String: [Data: Data]]>([:])
  public init() {}

  public func put(_ table: String, _ key: Data, _ value: Data, overwrite: Bool) async throws -> Bool {
    tables.withLock { t in
      if !overwrite && t[table]?[key] != nil { return false }
      t[table, default: [:]][key] = value
      return true
    }
  }
  public func get(_ table: String, _ key: Data) async throws -> Data? { tables.withLock { $0[table]?[key] } }
  public func delete(_ table: String, _ key: Data) async throws { _ = tables.withLock { $0[table]?.removeValue(forKey: key) } }
  public func getAll(_ table: String) async throws -> [Data: Data] { tables.withLock { $0[table] ?? [:] } }
}

/// Writes made from synchronous code (state-machine actions) go out through one task,
/// in the order they were made, so a later write of a key never loses to an earlier one.
///
/// Threading: `write` from any thread; it does not wait.
final class StorageWriter: Sendable {
  /// A value to put, or nil: delete the key.
  let continuation: AsyncStream<(String, Data, Data?)>.Continuation
  let task: Task<Void, Never>

  init(_ storage: any ControlStorage, onError: @escaping @Sendable (String, Error) -> Void) {
    let (stream, continuation) = AsyncStream<(String, Data, Data?)>.makeStream()
    self.continuation = continuation
    task = Task {
      for await (table, key, value) in stream {
        do {
          if let value { _ = try await storage.put(table, key, value, overwrite: true) } else { try await storage.delete(table, key) }
        } catch { onError(table, error) }
      }
    }
  }

  /// Queues a write. Allowed under a lock (the one exception to `Locked`'s rule, and why):
  /// it only appends to the writer's stream, which has no `onTermination` and an
  /// unbounded buffer, so it never runs anyone's code; and a caller writes inside the
  /// critical section that made the change, so writes of one key keep their order.
  func write(_ table: String, _ key: Data, _ value: Data) { continuation.yield((table, key, value)) }
  /// Queues a delete, in order with the writes (as `write`).
  func erase(_ table: String, _ key: Data) { continuation.yield((table, key, nil)) }
  func close() { continuation.finish() }
}
