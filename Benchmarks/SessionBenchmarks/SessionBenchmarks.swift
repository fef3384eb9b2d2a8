// Single-stream throughput through ssmgate against the in-process emulator:
// `bash scripts/bench-sessions.sh` (release build), or `swift run -c release SessionBenchmarks --help`.
//
// `unlimited` measures the client's own efficiency: the emulator paces nothing, so what limits the
// rate is CPU (client, emulator and both TCP ends share this process), compared with plain loopback
// TCP between the same two ends. `aws` measures what a user gets against the service's per-session
// limits with the default client settings, compared with the agent's pacing of 1,000,000 B/s.
import AWSClient
import ArgumentParser
import AsyncHTTPClient
import DataChannel
import Foundation
import LocalSSM
import NIOCore
import NIOPosix
import SigV4

enum Direction: String, Sendable {
    /// Client → destination (the destination discards, counting and checking).
    case upload
    /// Destination → client (the destination sends; the client counts and checks).
    case download
}

/// One measured transfer.
struct Row {
    var limits: String
    var path: String
    var direction: Direction
    var bytes: Int
    var seconds: Double
    var cpuSeconds: Double
    /// What the rate is compared with: raw TCP's MB/s, or the cap.
    var reference: (name: String, megabytesPerSecond: Double)?
    var statistics: DataChannelStatistics?

    var megabytesPerSecond: Double { Double(self.bytes) / self.seconds / 1_000_000 }
    var cpuSecondsPerGiB: Double { self.cpuSeconds / (Double(self.bytes) / Double(1 << 30)) }
}

@main
struct SessionBenchmarks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Single TCP stream throughput through ssmgate (LocalPortForwarder, mux) and the in-process emulator.")

    @Option(help: "Which emulator limits to run: all, unlimited or aws.")
    var limits = "all"

    @Option(help: "MiB per direction for raw loopback TCP (the reference).")
    var rawMib = 256

    @Option(help: "MiB per direction through ssmgate with --limits unlimited.")
    var unlimitedMib = 64

    @Option(help: "MiB per direction through ssmgate with --limits aws (about 1 MB/s).")
    var awsMib = 8

    @Option(help: "The opt-in maximumPayloadSize measured beside the default 1024 (unlimited only).")
    var largePayload = 16384

    @Option(help: "Fail a transfer that makes no progress for this many seconds.")
    var stallSeconds = 30

    func validate() throws {
        guard ["all", "unlimited", "aws"].contains(self.limits) else {
            throw ValidationError("--limits is '\(self.limits)'; expected all, unlimited or aws")
        }
        for (name, value) in [("--raw-mib", self.rawMib), ("--unlimited-mib", self.unlimitedMib), ("--aws-mib", self.awsMib)] {
            guard value > 0 else { throw ValidationError("\(name) is \(value); expected a positive number of MiB") }
        }
        guard (1025...65536).contains(self.largePayload) else {
            throw ValidationError("--large-payload is \(self.largePayload); expected 1025 to 65536 bytes")
        }
        guard self.stallSeconds > 0 else { throw ValidationError("--stall-seconds must be positive") }
    }

    func run() async throws {
        let pattern = Pattern()
        var rows: [Row] = []
        let runner = Runner(pattern: pattern, stallLimit: .seconds(self.stallSeconds))
        if self.limits != "aws" {
            rows += try await self.unlimitedRows(runner)
        }
        if self.limits != "unlimited" {
            rows += try await self.awsRows(runner)
        }
        self.printTable(rows)
    }

    func unlimitedRows(_ runner: Runner) async throws -> [Row] {
        let rawBytes = self.rawMib << 20
        let bytes = self.unlimitedMib << 20
        var rows: [Row] = []
        var raw: [Direction: Double] = [:]
        for direction in [Direction.upload, .download] {
            let row = try await runner.raw(direction, bytes: rawBytes, limits: "unlimited")
            raw[direction] = row.megabytesPerSecond
            rows.append(row)
        }
        // The faithful case: 1024-byte messages both ways, as the official client and agent send.
        // The opt-in case: the client's SSMGATE_PAYLOAD_SIZE and an emulator agent that reads as much
        // per message (the real agent reads 1024 bytes at most, so downloads from AWS stay at 1 KiB).
        var largeAgent = LimitsProfile.unlimited
        largeAgent.agentReadChunk = self.largePayload
        let cases: [(String, DataChannelConfiguration, LimitsProfile)] = [
            ("ssmgate, 1024-byte payloads (default)", DataChannelConfiguration(messagesPerSecond: nil), .unlimited),
            ("ssmgate, \(self.largePayload / 1024) KiB payloads (opt-in both ends)",
             DataChannelConfiguration(maximumPayloadSize: self.largePayload, messagesPerSecond: nil), largeAgent),
        ]
        for (name, configuration, profile) in cases {
            try await runner.withEmulator(profile) { ssm in
                for direction in [Direction.upload, .download] {
                    var row = try await runner.session(
                        direction, bytes: bytes, limits: "unlimited", ssm: ssm, configuration: configuration, path: name)
                    row.reference = ("raw", raw[direction]!)
                    rows.append(row)
                }
            }
        }
        return rows
    }

    func awsRows(_ runner: Runner) async throws -> [Row] {
        let bytes = self.awsMib << 20
        let cap = Double(LimitsProfile.aws.agentBytesPerSecond!) / 1_000_000
        var rows: [Row] = []
        try await runner.withEmulator(.aws) { ssm in
            for direction in [Direction.upload, .download] {
                var row = try await runner.session(
                    direction, bytes: bytes, limits: "aws", ssm: ssm, configuration: DataChannelConfiguration(),
                    path: "ssmgate, default client settings")
                row.reference = ("cap", cap)
                rows.append(row)
            }
        }
        return rows
    }
}

// MARK: - Running transfers

struct Runner: Sendable {
    let pattern: Pattern
    let stallLimit: Duration

    /// Client straight to the destination.
    func raw(_ direction: Direction, bytes: Int, limits: String) async throws -> Row {
        try await self.transfer(direction, bytes: bytes, limits: limits, path: "raw loopback TCP (reference)") { port in (port, nil) }
    }

    /// Client → LocalPortForwarder → data channel → emulator (MGS, agent) → destination.
    func session(
        _ direction: Direction, bytes: Int, limits: String, ssm: SSMClient, configuration: DataChannelConfiguration, path: String
    ) async throws -> Row {
        try await self.transfer(direction, bytes: bytes, limits: limits, path: path) { port in
            let session = try await ForwardingSession.start(ssm: ssm, destinationPort: port, configuration: configuration)
            return (session.localPort, session)
        }
    }

    /// Sets up the destination and (through `open`) the path to it, then times one transfer from
    /// the client's connect to the last byte checked at the receiving end.
    func transfer(
        _ direction: Direction, bytes: Int, limits: String, path: String,
        open: (_ destinationPort: Int) async throws -> (port: Int, session: ForwardingSession?)
    ) async throws -> Row {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let done = loop.makePromise(of: Arrival.self)
        let progress = Progress()
        let pattern = self.pattern
        let destination: Destination
        switch direction {
        case .upload: destination = try await .sink(pattern: pattern, expected: bytes, done: done, progress: progress)
        case .download: destination = try await .source(pattern: pattern, total: bytes)
        }
        let (port, session) = try await open(destination.port)
        let cpuBefore = processCPUSeconds()
        let start = ContinuousClock.now
        let client = try await connectClient(port: port) { channel in
            switch direction {
            case .upload:
                try channel.pipeline.syncOperations.addHandler(PatternSender(pattern: pattern, total: bytes))
            case .download:
                try channel.pipeline.syncOperations.addHandler(
                    PatternReceiver(pattern: pattern, expected: bytes, done: done, progress: progress))
            }
        }
        let arrival = try await self.wait(for: done, progress: progress, bytes: bytes)
        let cpu = processCPUSeconds() - cpuBefore
        let statistics = try await session?.statistics()
        try? await client.close()
        try await session?.end()
        await destination.close()
        guard arrival.bytes == bytes else {
            throw TransferError(description: "\(path) \(direction): \(arrival.bytes) bytes arrived, \(bytes) were sent")
        }
        let elapsed = arrival.finished - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return Row(
            limits: limits, path: path, direction: direction, bytes: bytes, seconds: seconds, cpuSeconds: cpu,
            reference: nil, statistics: statistics)
    }

    /// Waits for the receiving end; fails the transfer when no byte arrives for `stallLimit`.
    func wait(for done: EventLoopPromise<Arrival>, progress: Progress, bytes: Int) async throws -> Arrival {
        let limit = self.stallLimit
        let watchdog = Task {
            var last = -1
            var since = ContinuousClock.now
            while !Task.isCancelled {
                try await Task.sleep(for: .milliseconds(250))  // a watchdog poll, not pacing
                let now = progress.bytes.load(ordering: .relaxed)
                if now != last {
                    last = now
                    since = .now
                } else if ContinuousClock.now - since > limit {
                    done.fail(TransferError(description: "no progress for \(limit) after \(now) of \(bytes) bytes"))
                    return
                }
            }
        }
        defer { watchdog.cancel() }
        return try await done.futureResult.get()
    }

    /// An in-process emulator with `limits` and an SSM client for it (key test/test, SigV4 over HTTP).
    func withEmulator(_ limits: LimitsProfile, _ body: (SSMClient) async throws -> Void) async throws {
        let emulator = LocalEmulator(configuration: LocalSSMConfiguration(listenPort: 0, limits: limits))
        try await emulator.start()
        let http = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton))
        let url = URL(string: emulator.server.endpointURL)!
        let ssm = SSMClient(
            configuration: AWSClientConfiguration(
                region: emulator.configuration.region,
                endpoints: AWSServiceEndpoints(ssm: url, ec2: url, kms: url, sts: url, sso: url),
                retry: AWSRetryPolicy(maximumAttempts: 1)),
            credentials: StaticCredentialProvider(AWSCredentials(accessKeyID: "test", secretAccessKey: "test")),
            httpClient: http)
        do {
            try await body(ssm)
        } catch {
            try? await http.shutdown()
            await emulator.stop()
            throw error
        }
        try await http.shutdown()
        await emulator.stop()
    }
}

/// User plus system CPU time of the whole process so far.
func processCPUSeconds() -> Double {
    var usage = rusage()
    #if os(Linux)
    getrusage(RUSAGE_SELF.rawValue, &usage)
    #else
    getrusage(RUSAGE_SELF, &usage)
    #endif
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
