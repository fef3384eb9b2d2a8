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
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
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
        // AWS Signature Version 4: signing for the client, verification for the emulator.
        .target(
            name: "SigV4",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // AWS control plane: credential chain, endpoints, and the SSM/EC2/KMS/STS calls (SigV4-signed, over AHC).
        .target(
            name: "AWSClient",
            dependencies: [
                "SigV4",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ]
        ),
        // smux sessions and streams (client and server side) with fair, bounded output scheduling.
        .target(
            name: "Mux",
            dependencies: [
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // WebSocket framing on a NIO channel (RFC 6455): the frame codec and the upgrade handshakes,
        // for the data channel and the emulator. Frames are parsed out of reads, not copied.
        .target(
            name: "WebSocketTransport",
            dependencies: [
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The client's reliable data channel: WebSocket (TLS), OpenDataChannel, acks and resends,
        // handshake, KMS encryption, reconnect with ResumeSession, rate and window limits.
        .target(
            name: "DataChannel",
            dependencies: [
                "SSMProtocol",
                "WebSocketTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // What runs on a data channel: port forwarding (stdio, basic, mux with smux) and shells.
        .target(
            name: "Sessions",
            dependencies: [
                "DataChannel",
                "Mux",
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The local emulator of Session Manager: SSM/EC2 APIs, MGS relay, agent simulator.
        .target(
            name: "LocalSSM",
            dependencies: [
                "SSMProtocol",
                "Mux",
                "SigV4",
                "WebSocketTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // libssh's server API (Debian libssh-dev) for the gateway's SSH front.
        .systemLibrary(
            name: "CLibSSH",
            pkgConfig: "libssh",
            providers: [.apt(["libssh-dev"])]
        ),
        // Bounded byte rings between a foreign thread (a libssh session) and an event loop, with wake-ups.
        .target(
            name: "Relay",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // `ssmgate serve`: fronts (SSH, SOCKS5, HTTP CONNECT, forwards, daemon socket), Router, Pool,
        // access rules, audit, metrics, configuration.
        .target(
            name: "Gateway",
            dependencies: [
                "AWSClient",
                "CLibSSH",
                "DataChannel",
                "LocalSSM",
                "Relay",
                "Sessions",
                "SSMProtocol",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(
            name: "ssmgate",
            dependencies: [
                "SSMProtocol",
                "LocalSSM",
                "AWSClient",
                "DataChannel",
                "Sessions",
                "Gateway",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
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
        // Helpers shared by the test targets: the emulator on a free port, processes, an echo server.
        .target(
            name: "TestSupport",
            dependencies: [
                "LocalSSM",
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/TestSupport"
        ),
        // `bash scripts/bench-sessions.sh`: one TCP stream through ssmgate and the in-process emulator, against raw TCP and the aws cap.
        .executableTarget(
            name: "SessionBenchmarks",
            dependencies: [
                "AWSClient",
                "DataChannel",
                "LocalSSM",
                "Sessions",
                "SigV4",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Benchmarks/SessionBenchmarks"
        ),
        // `bash scripts/bench-gateway.sh`: the gateway (static forward, Pool, GatewayCore) against a separate
        // `ssmgate local` process: per-session cap, pool scaling, echo delay beside bulk, connection setup, memory, CPU.
        .executableTarget(
            name: "GatewayBenchmarks",
            dependencies: [
                "Gateway",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Benchmarks/GatewayBenchmarks"
        ),
        .testTarget(
            name: "SSMProtocolTests",
            dependencies: [
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            resources: [.copy("Vectors")]
        ),
        .testTarget(
            name: "LocalSSMTests",
            dependencies: [
                "TestSupport",
                "LocalSSM",
                "SSMProtocol",
                "Mux",
                "WebSocketTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The frame codec and handshakes against NIO's own WebSocket implementation.
        .testTarget(
            name: "WebSocketTransportTests",
            dependencies: [
                "WebSocketTransport",
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "DataChannelTests",
            dependencies: [
                "TestSupport",
                "DataChannel",
                "Sessions",
                "LocalSSM",
                "SSMProtocol",
                "Mux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "AWSClientTests",
            dependencies: [
                "TestSupport",
                "AWSClient",
                "LocalSSM",
                "SigV4",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // Real OpenSSH, rsync, awscli and terminals against the built `ssmgate` and the emulator.
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "TestSupport",
                "LocalSSM",
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The gateway with real ssh/scp/rsync/sftp, psql and curl against the emulator.
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "TestSupport",
                "Gateway",
                "AWSClient",
                "DataChannel",
                "LocalSSM",
                "Relay",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "SigV4Tests",
            dependencies: ["SigV4"]
        ),
        .testTarget(
            name: "MuxTests",
            dependencies: [
                "Mux",
                "SSMProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// Release builds skip Swift's runtime exclusivity checks: on the data path every 1 KiB message
// made hundreds of them, about a fifth of the CPU of the unlimited single-stream benchmark
// (BENCHMARKS.md). Debug builds, and so every test run, keep them; the compile-time checks stay.
for target in package.targets where target.type == .regular || target.type == .executable {
    target.swiftSettings = (target.swiftSettings ?? []) + [
        .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))
    ]
}
