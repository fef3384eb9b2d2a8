// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "ssmgate",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ssmgate", targets: ["ssmgate"]),
        .library(name: "SSMProtocol", targets: ["SSMProtocol"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    ],
    targets: [
        // Wire layer: AgentMessage, payloads, handshake and smux frames. Pure codecs, no I/O.
        .target(
            name: "SSMProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .executableTarget(
            name: "ssmgate",
            dependencies: [
                "SSMProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // libFuzzer target for the wire decoders; scripts/fuzz.sh builds and runs it.
        .executableTarget(
            name: "SSMProtocolFuzz",
            dependencies: [
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Fuzz/SSMProtocolFuzz"
        ),
        // `swift run -c release ProtocolBenchmarks`: codec throughput against bare SHA-256.
        .executableTarget(
            name: "ProtocolBenchmarks",
            dependencies: [
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Benchmarks/ProtocolBenchmarks"
        ),
        .testTarget(
            name: "SSMProtocolTests",
            dependencies: [
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            resources: [.copy("Vectors")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
