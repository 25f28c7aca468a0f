// swift-tools-version:6.1
import PackageDescription

// srv: an application server for web applications compiled as shared objects.
// Layout: PluginSDK/ is the gateway spec (C header) and the Swift SDK for plugins,
// Sources/ is the server, Examples/ are applications, Tests/ drive the real binary.

let swift5: [SwiftSetting] = [.swiftLanguageMode(.v5)]
// Dynamic exclusivity checks, measured with callgrind (user-space instructions per hello
// request in the worker, 2026-12-07): 15,679 with them everywhere; 12,947 without them in
// SrvCore (-17%); 10,159 without them in NIO and the other dependencies too (-35% in all;
// a browser-sized request 24,337 -> 21,633 -> 18,820). The request path runs on one thread
// per slot. So release builds of SrvCore go without them here; the dependencies get the
// same through the Makefile's SWIFTFLAGS (SwiftPM takes no flags for another package's
// targets). Debug builds, and so `swift test`, keep the checks.
let hotPath: [SwiftSetting] = swift5 + [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

// srv's C builds with every warning an error (-Wall -Wextra -Werror), as its plugins' examples do.
let strictC: [CSetting] = [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])]

let gateway: Target.Dependency = .product(name: "SrvGateway", package: "PluginSDK")

let package = Package(
    name: "srv",
    products: [
        .executable(name: "srv", targets: ["srv"]),
        // The blog example, a Swift plugin: SwiftPM builds it as libblog.so.
        .library(name: "blog", type: .dynamic, targets: ["Blog", "BlogExport"]),
    ],
    dependencies: [
        // The gateway header, the Swift SDK and the toolchain stamp: a package of their own.
        .package(path: "PluginSDK"),
        // srv imports NIO's bundled llhttp (CNIOLLHTTP), which is not NIO's public API: an
        // update of NIO is a deliberate change, so it is pinned to the minor version.
        .package(url: "https://github.com/apple/swift-nio.git", .upToNextMinor(from: "2.101.2")),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        // --metrics-bind: the master renders the Prometheus text format with it.
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // MARK: - The server
        .systemLibrary(name: "CFFI", path: "Sources/CFFI", pkgConfig: "libffi",
                       providers: [.apt(["libffi-dev"])]),
        .target(name: "CSrvSystem", dependencies: [gateway, "CFFI"], path: "Sources/CSrvSystem", cSettings: strictC),
        .target(name: "SrvCore",
                dependencies: [
                    gateway, "CSrvSystem",
                    .product(name: "SrvToolchain", package: "PluginSDK"),
                    .product(name: "NIOCore", package: "swift-nio"),
                    .product(name: "NIOPosix", package: "swift-nio"),
                    .product(name: "NIOHTTP1", package: "swift-nio"),
                    .product(name: "Logging", package: "swift-log"),
                    .product(name: "Prometheus", package: "swift-prometheus"),
                ],
                path: "Sources/SrvCore", swiftSettings: hotPath),
        .executableTarget(name: "srv",
                          dependencies: [
                              "SrvCore",
                              .product(name: "ArgumentParser", package: "swift-argument-parser"),
                          ],
                          path: "Sources/srv", swiftSettings: swift5),

        // MARK: - Examples
        .systemLibrary(name: "CSQLite", path: "Examples/blog/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        // The stylesheet is compiled into libblog.so (PackageResources.style_css), so the
        // blog is styled wherever its .so goes; static/ stays a directory nginx can serve.
        .target(name: "Blog", dependencies: [.product(name: "SrvPlugin", package: "PluginSDK"), "CSQLite"], path: "Examples/blog",
                exclude: ["Sources/BlogExport", "CSQLite", "README.md"], sources: ["Sources/Blog"],
                resources: [.embedInCode("static/style.css")], swiftSettings: swift5),
        .target(name: "BlogExport", dependencies: [gateway], path: "Examples/blog/Sources/BlogExport", cSettings: strictC),

        // MARK: - Tests (unit tests of pure logic; Tests/integration drives the real binary)
        .testTarget(name: "SrvCoreTests", dependencies: ["SrvCore", gateway], path: "Tests/SrvCoreTests",
                    swiftSettings: swift5),
    ]
)
