// swift-tools-version: 6.1
import PackageDescription

// Module names carry a "Strata" prefix: the toolchain already ships a module called `Runtime`.
// Every target lists each module its sources import (scripts/test builds with
// --explicit-target-dependency-import-check=error), and Tests/StrataTests/LayeringTests.swift
// fails when a lower layer imports a higher one. The layers, lowest first, are in design/README.md.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .unsafeFlags(["-warnings-as-errors"]),
    // Exclusivity is checked dynamically in debug builds and the test suite; release builds check it
    // statically only, since the dynamic check cost ~11% of the CPU per request (perf, null path).
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let deque: Target.Dependency = .product(name: "DequeModule", package: "swift-collections")
let histogram: Target.Dependency = .product(name: "Histogram", package: "hdrhistogram-swift")

func strata(_ name: String, _ path: String, _ dependencies: [Target.Dependency]) -> Target {
    .target(name: name, dependencies: dependencies, path: "Sources/\(path)", swiftSettings: swiftSettings)
}

let package = Package(
    name: "Strata",
    products: [
        .executable(name: "strata", targets: ["StrataCLI"]),
        .library(name: "Strata", targets: [
            "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataNodes", "StrataFilters", "StrataDevices", "StrataLoad",
            "StrataNBD", "StrataNBDServer", "StrataNBDClient", "StrataVhostUser", "StrataVhostUserServer", "StrataEngine",
            "StrataImageTools", "StrataControl", "StrataSimulation", "StrataLab", "StrataRBD", "StrataISCSI",
        ]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // The only C: liburing, libnuma, CPU pinning, OFD locks, glibc constants Swift cannot import.
        .target(name: "CStrataShim", path: "Sources/Shims/CStrataShim", linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("numa")]),
        // zlib inflates qcow2's compressed clusters.
        .systemLibrary(name: "CZlib", path: "Sources/Shims/CZlib", providers: [.apt(["zlib1g-dev"])]),
        // zstd decompresses (and compresses) qcow2 clusters of images with compression_type=zstd.
        .systemLibrary(name: "CZstd", path: "Sources/Shims/CZstd", providers: [.apt(["libzstd-dev"])]),
        // librbd and librados (Ceph's client libraries), for the rbd protocol node.
        .systemLibrary(name: "CRbd", path: "Sources/Shims/CRbd", providers: [.apt(["librbd-dev"])]),
        .systemLibrary(name: "CIscsi", path: "Sources/Shims/CIscsi", providers: [.apt(["libiscsi-dev"])]),

        // Layer 1: no block concept.
        strata("StrataRuntime", "Runtime", ["CStrataShim", deque]),
        strata("StrataFormatting", "Formatting", []),
        // The NBD protocol codec: handshake state machines, request and reply layouts. No I/O.
        strata("StrataNBD", "NBD/Codec", []),
        // The vhost-user protocol codec: message layouts, features, payload checks. No I/O.
        strata("StrataVhostUser", "VhostUser/Protocol", []),

        // Layer 2: requests, node contracts, the graph and its transactions.
        strata("StrataGraph", "Graph", ["StrataRuntime"]),

        // Layer 3: drivers, filters, device models and exports, each knowing only the graph.
        strata("StrataNodes", "Nodes", ["CStrataShim", "CZlib", "CZstd", "StrataRuntime", "StrataFormatting", "StrataGraph"]),
        // The `nbd` protocol node: an NBD client whose sockets run on the queue executors' rings.
        strata("StrataNBDClient", "NBD/Client", ["CStrataShim", "StrataRuntime", "StrataGraph", "StrataNBD", deque]),
        strata("StrataFilters", "Filters", ["StrataRuntime", "StrataGraph", deque]),
        // Remote backends through their client libraries: the `rbd` node (librbd).
        strata("StrataRBD", "Remote/RBD", ["CRbd", "StrataRuntime", "StrataGraph"]),
        // The iscsi protocol node: libiscsi sessions, one per queue, polled on the queues' rings.
        strata("StrataISCSI", "Remote/iSCSI", ["CIscsi", "StrataRuntime", "StrataGraph"]),
        // The virtio-blk device model on split virtqueues (the device side only).
        strata("StrataDevices", "Devices", ["CStrataShim", "StrataRuntime", "StrataGraph"]),
        // The NBD export server: connections served on the queue executors' rings.
        strata("StrataNBDServer", "NBD/Server", ["CStrataShim", "StrataRuntime", "StrataGraph", "StrataNBD"]),

        // Layer 4: what drives the device model: the guest load generator (its driver side) and the
        // vhost-user-blk export (a real guest's device queues).
        strata("StrataLoad", "Load", [
            "CStrataShim", "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataDevices", "StrataVhostUser", histogram,
        ]),
        // The vhost-user-blk export: a front end's control socket, guest memory, one device queue
        // per virtqueue on its queue executor.
        strata("StrataVhostUserServer", "VhostUser/Server", [
            "CStrataShim", "StrataRuntime", "StrataGraph", "StrataDevices", "StrataVhostUser",
        ]),

        // Layer 5: where things are put together: the driver catalog, executors, the storage daemon.
        strata("StrataEngine", "Engine", [
            "StrataRuntime", "StrataGraph", "StrataNodes", "StrataNBDClient", "StrataFilters", "StrataNBDServer",
            "StrataVhostUserServer", "StrataRBD", "StrataISCSI",
        ]),

        // Layer 6: the image toolkit behind `strata img` and `strata io`.
        strata("StrataImageTools", "ImageTools", [
            "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataNodes", "StrataEngine", deque,
        ]),

        // Layer 7: jobs: QEMU's job state machine and the jobs that run under it.
        strata("StrataJobs", "Jobs", [
            "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataNodes", "StrataFilters", "StrataImageTools",
        ]),

        // Layer 7: the deterministic power-cut and fault simulation behind `strata sim`.
        strata("StrataSimulation", "Simulation", [
            "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataNodes", "StrataEngine", "StrataImageTools",
        ]),

        // Layer 7: the scheduling-policy lab behind `strata lab`.
        strata("StrataLab", "Lab", [
            "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataNodes", "StrataFilters", "StrataEngine", histogram,
        ]),

        // Layer 8: the QMP control plane.
        strata("StrataControl", "Control", [
            "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataNodes", "StrataFilters", "StrataNBDServer",
            "StrataVhostUserServer", "StrataEngine", "StrataImageTools", "StrataJobs", deque,
        ]),

        // Layer 9: the command line and the bench programs.
        .executableTarget(
            name: "StrataCLI",
            dependencies: [
                "CStrataShim", "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataNodes", "StrataNBDServer",
                "StrataVhostUserServer", "StrataLoad",
                "StrataEngine", "StrataImageTools", "StrataControl", "StrataSimulation", "StrataLab", "StrataRBD",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/StrataCLI", swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "strata-alloc-count",
            dependencies: [
                "StrataRuntime", "StrataGraph", "StrataLoad", "StrataEngine", "StrataVhostUserServer",
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ],
            path: "Bench/AllocationCount", swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "strata-ring-floor",
            dependencies: ["CStrataShim", "StrataRuntime"],
            path: "Bench/RingFloor", swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "strata-fuzz",
            dependencies: ["StrataRuntime", "StrataGraph", "StrataNBD", "StrataNodes", "StrataVhostUser", "StrataEngine", "StrataNBDServer"],
            path: "Sources/Fuzz", swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StrataTests",
            dependencies: [
                "CStrataShim", "StrataRuntime", "StrataFormatting", "StrataGraph", "StrataNodes", "StrataFilters", "StrataDevices",
                "StrataLoad", "StrataNBD", "StrataNBDServer", "StrataNBDClient", "StrataEngine", "StrataImageTools",
                "StrataJobs", "StrataControl", "StrataSimulation", "StrataLab", "StrataRBD", "StrataISCSI",
            ],
            path: "Tests/StrataTests", swiftSettings: swiftSettings
        ),
    ]
)
