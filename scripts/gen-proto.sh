#!/usr/bin/env bash
# Regenerates Sources/RuntimeProto from proto/*.proto.
# Needs protoc (`apt-get install -y protobuf-compiler`); builds the two Swift plugins
# (protoc-gen-swift, protoc-gen-grpc-swift-2) from the mirrored packages into
# .build-protoc/ once (~2 min). The generated code is committed, so a normal build
# never runs this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.build-protoc"
mkdir -p "$tools/pkg/Sources/Dummy"
cat > "$tools/pkg/Package.swift" <<'SWIFT'
// swift-tools-version:6.1
import PackageDescription
let package = Package(
  name: "ProtocPlugins",
  dependencies: [
    .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
  ],
  targets: [.target(name: "Dummy")]
)
SWIFT
echo "// placeholder so the package has a target" > "$tools/pkg/Sources/Dummy/Dummy.swift"
if [ ! -x "$tools/bin/protoc-gen-grpc-swift-2" ] || [ ! -x "$tools/bin/protoc-gen-swift" ]; then
  (cd "$tools/pkg" && swift build -c release --product protoc-gen-swift && swift build -c release --product protoc-gen-grpc-swift-2)
  mkdir -p "$tools/bin"
  cp "$tools/pkg/.build/release/protoc-gen-swift" "$tools/pkg/.build/release/protoc-gen-grpc-swift-2" "$tools/bin/"
fi
out="$root/Sources/RuntimeProto"
rm -f "$out"/*.pb.swift "$out"/*.grpc.swift
mkdir -p "$out"
protoc --proto_path="$root/proto" \
  --plugin=protoc-gen-swift="$tools/bin/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift-2="$tools/bin/protoc-gen-grpc-swift-2" \
  --swift_out="$out" --swift_opt=Visibility=Public \
  --grpc-swift-2_out="$out" --grpc-swift-2_opt=Visibility=Public \
  "$root"/proto/*.proto
echo "generated: $(ls "$out")"
