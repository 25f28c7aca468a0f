// swift-tools-version:6.1
// The floor of a SwiftNIO HTTP/1.1 server on this machine: one event loop, a handler that
// answers each read containing a complete request head with a constant hello-world
// response (no parsing, no environ, no application). `make bench-floor` measures it
// beside kore and srv; whatever srv costs above it is srv's own.
import PackageDescription

let package = Package(
    name: "nio-floor",
    dependencies: [.package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2")],
    targets: [
        .executableTarget(
            name: "nio-floor",
            dependencies: [.product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: [.swiftLanguageMode(.v5), .unsafeFlags(["-enforce-exclusivity=unchecked"])]
        )
    ]
)
