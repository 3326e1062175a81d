import GRPCCore
import RuntimeProto

/// Resource shapes on the wire.
extension ResourceSet {
  public var proto: Swiftray_ResourceShape {
    var p = Swiftray_ResourceShape()
    p.quantities = quantities
    return p
  }
  public init(proto: Swiftray_ResourceShape) { self.init(fixedPoint: proto.quantities) }

  /// `checked(fixedPoint:field:)` of a peer's shape, as gRPC's `invalidArgument`.
  static func checked(_ proto: Swiftray_ResourceShape, field: String) throws -> ResourceSet {
    do { return try checked(fixedPoint: proto.quantities, field: field) } catch {
      throw RPCError(code: .invalidArgument, message: error.message)
    }
  }
}
