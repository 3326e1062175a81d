// swift-tools-version:6.1
// swiftray: Ray's programming model for Python with a Swift core.
// Build facts (DESIGN §9): always build with PKG_CONFIG_PATH set to the LIBPC of the
// python3 that will load the extension (scripts/swift.sh does it).
import PackageDescription

// The embedding executable needs an rpath to the LIBDIR of the Python it embeds, or
// the loader picks the system libpython. LIBPC is LIBDIR/pkgconfig, so derive it.
let pythonLibDir: String? = Context.environment["PKG_CONFIG_PATH"]?
  .split(separator: ":").first
  .map { String($0) }
  .flatMap { $0.hasSuffix("/pkgconfig") ? String($0.dropLast("/pkgconfig".count)) : nil }
let embedLinker: [LinkerSetting] = pythonLibDir.map {
  [.unsafeFlags(["-Xlinker", "-rpath", "-Xlinker", $0])]
} ?? []

let swift6: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
  name: "swiftray",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "swiftray", targets: ["SwiftrayCLI"]),
    // Copied to python/swiftray/_core.<EXT_SUFFIX> by the pip build.
    .library(name: "SwiftrayCoreExtension", type: .dynamic, targets: ["SwiftrayCoreExtension"]),
    // Seeded simulations of whole clusters on virtual time (scripts/simulate.sh).
    .executable(name: "swiftray-sim", targets: ["SwiftraySim"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
    .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
  ],
  targets: [
    // Headers only: an extension module gets its symbols from the loading python.
    .systemLibrary(name: "CPython", path: "Sources/CPython", pkgConfig: "python3"),
    // Adds -lpython3.x for the executable that embeds the interpreter.
    .systemLibrary(name: "CPythonEmbed", path: "Sources/CPythonEmbed", pkgConfig: "python3-embed"),
    .target(
      name: "RuntimeProto",
      dependencies: [
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
      ],
      // Generated code only: each message's accessors reach its storage class, and the
      // run-time exclusivity check on every such access took ~1.5 % of a busy cluster's
      // CPU (perf, 1:1 actor calls). The generator's accesses never overlap.
      swiftSettings: swift6 + [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
    ),
    // POSIX helpers for process management (no Python).
    .target(name: "CSwiftray", path: "Sources/CSwiftray"),
    .target(
      name: "Runtime",
      dependencies: [
        "RuntimeProto", "CSwiftray",
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOWebSocket", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
        .product(name: "NIOExtras", package: "swift-nio-extras"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "DequeModule", package: "swift-collections"),
        .product(name: "HeapModule", package: "swift-collections"),
        .product(name: "Prometheus", package: "swift-prometheus"),
      ],
      swiftSettings: swift6
    ),
    // The read-only Python buffer type over object-store memory (C: a static type object).
    .target(name: "CPyStoreView", dependencies: ["CPython"], path: "Sources/CPyStoreView"),
    .target(name: "PyBridge", dependencies: ["CPython", "CPyStoreView", "Runtime"], swiftSettings: swift6),
    .target(name: "SwiftrayCoreExtension", dependencies: ["PyBridge"], swiftSettings: swift6),
    .executableTarget(
      name: "SwiftrayCLI",
      dependencies: [
        "PyBridge", "Runtime", "RuntimeProto", "CPythonEmbed",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      swiftSettings: swift6,
      linkerSettings: embedLinker
    ),
    .executableTarget(
      name: "SwiftraySim",
      dependencies: ["Runtime", "RuntimeProto", "CSwiftray", .product(name: "HeapModule", package: "swift-collections")],
      swiftSettings: swift6
    ),
    .testTarget(
      name: "RuntimeTests",
      dependencies: ["Runtime", .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
                     .product(name: "GRPCCore", package: "grpc-swift-2"),
                     .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                     .product(name: "SwiftProtobuf", package: "swift-protobuf")],
      swiftSettings: swift6
    ),
  ]
)
