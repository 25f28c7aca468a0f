// swift-tools-version:6.1
import PackageDescription

// srv's plugin SDK: the gateway spec's C header (SrvGateway) and the Swift SDK (SrvPlugin).
// It depends on nothing, so a plugin package builds in seconds:
//
//     .package(path: "/usr/local/share/srv/PluginSDK"),   // `make install` puts it there
//     .target(name: "MyApp", dependencies: [.product(name: "SrvPlugin", package: "PluginSDK")])
//
// srv's own package depends on this one for the header and the toolchain stamp.
let package = Package(
    name: "PluginSDK",
    products: [
        .library(name: "SrvPlugin", targets: ["SrvPlugin"]),
        .library(name: "SrvGateway", targets: ["SrvGateway"]),
        .library(name: "SrvToolchain", targets: ["SrvToolchain"]),
    ],
    targets: [
        .target(name: "SrvGateway", path: "C", exclude: ["srv-gateway.pc.in"], publicHeadersPath: "include"),
        .target(name: "SrvToolchain", path: "Toolchain"),
        .target(name: "SrvPlugin", dependencies: ["SrvGateway", "SrvToolchain"], path: "Swift",
                swiftSettings: [.swiftLanguageMode(.v5)]),
    ]
)
