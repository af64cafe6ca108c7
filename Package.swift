// swift-tools-version: 6.1
import PackageDescription

// Module names carry a "Strata" prefix: the toolchain already ships a module called `Runtime`.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .unsafeFlags(["-warnings-as-errors"]),
    // Exclusivity is checked dynamically in debug builds and the test suite; release builds check it
    // statically only, since the dynamic check cost ~11% of the CPU per request (perf, null path).
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "Strata",
    products: [
        .executable(name: "strata", targets: ["StrataCLI"]),
        .library(name: "Strata", targets: ["StrataRuntime", "StrataGraph", "StrataNodes", "StrataFilters", "StrataDevices", "StrataEngine", "StrataNBD", "StrataNBDServer", "StrataNBDClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .target(
            name: "CStrataShim",
            path: "Sources/CStrataShim",
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("numa")]
        ),
        .target(name: "StrataRuntime", dependencies: ["CStrataShim", .product(name: "DequeModule", package: "swift-collections")], path: "Sources/Runtime", swiftSettings: swiftSettings),
        .target(name: "StrataGraph", dependencies: ["StrataRuntime"], path: "Sources/Graph", swiftSettings: swiftSettings),
        // zlib inflates qcow2's compressed clusters.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
        // zstd decompresses (and compresses) qcow2 clusters of images with compression_type=zstd.
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", providers: [.apt(["libzstd-dev"])]),
        .target(name: "StrataNodes", dependencies: ["CZlib", "CZstd", "StrataRuntime", "StrataGraph"], path: "Sources/Nodes", swiftSettings: swiftSettings),
        // The NBD protocol codec: handshake state machines, request and reply layouts. No I/O.
        .target(name: "StrataNBD", dependencies: ["StrataGraph"], path: "Sources/NBD", swiftSettings: swiftSettings),
        // The NBD export server: connections served on the queue executors' rings.
        .target(name: "StrataNBDServer", dependencies: ["CStrataShim", "StrataNBD", "StrataRuntime", "StrataGraph"], path: "Sources/NBDServer", swiftSettings: swiftSettings),
        // The `nbd` protocol node: an NBD client whose sockets run on the queue executors' rings.
        .target(
            name: "StrataNBDClient",
            dependencies: ["StrataNBD", "StrataRuntime", "StrataGraph", .product(name: "DequeModule", package: "swift-collections")],
            path: "Sources/NBDClient", swiftSettings: swiftSettings
        ),
        .target(name: "StrataFilters", dependencies: ["StrataRuntime", "StrataGraph", .product(name: "DequeModule", package: "swift-collections")], path: "Sources/Filters", swiftSettings: swiftSettings),
        .target(
            name: "StrataDevices",
            dependencies: ["CStrataShim", "StrataRuntime", "StrataGraph", .product(name: "Histogram", package: "hdrhistogram-swift")],
            path: "Sources/Devices", swiftSettings: swiftSettings
        ),
        .target(
            name: "StrataEngine",
            dependencies: ["StrataRuntime", "StrataGraph", "StrataNodes", "StrataFilters", "StrataDevices", "StrataNBDClient"],
            path: "Sources/Engine", swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "StrataCLI",
            dependencies: [
                "CStrataShim", "StrataRuntime", "StrataGraph", "StrataNodes", "StrataDevices", "StrataEngine", "StrataNBD", "StrataNBDServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/StrataCLI", swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "strata-alloc-count",
            dependencies: [
                "StrataRuntime", "StrataGraph", "StrataDevices", "StrataEngine",
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ],
            path: "Bench/AllocationCount", swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StrataTests",
            dependencies: ["StrataRuntime", "StrataGraph", "StrataNodes", "StrataFilters", "StrataDevices", "StrataEngine", "StrataNBD", "StrataNBDServer", "StrataNBDClient"],
            path: "Tests/StrataTests", swiftSettings: swiftSettings
        ),
    ]
)
