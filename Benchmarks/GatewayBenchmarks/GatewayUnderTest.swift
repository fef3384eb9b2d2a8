import Foundation
import Gateway
import Logging
import NIOCore
import NIOPosix

/// `ssmgate local` in a process of its own, so this process's CPU and memory are the gateway's
/// (and the load generator's) alone.
struct Emulator: Sendable {
    let process: ChildProcess
    let url: String
    let limits: String

    static func start(executable: String, limits: String) async throws -> Emulator {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw BenchmarkError("no ssmgate at \(executable): build it (swift build -c release --product ssmgate --scratch-path .build-release) or pass --ssmgate")
        }
        let process = try ChildProcess.spawn(
            executable, ["local", "--limits", limits, "--listen", "127.0.0.1:0"], name: "emulator-\(limits)")
        do {
            let output = try await process.waitForOutput(timeout: .seconds(30)) { $0.contains("listening on http") }
            guard let range = output.range(of: #"http://[0-9.]+:[0-9]+"#, options: .regularExpression) else {
                throw BenchmarkError("cannot find the emulator's URL in its output:\n\(output)")
            }
            return Emulator(process: process, url: String(output[range]), limits: limits)
        } catch {
            await process.stop()
            throw error
        }
    }

    func stop() async {
        await self.process.stop()
    }
}

/// The gateway as `ssmgate serve` assembles it: AWSContext → Router → GatewayCore (Pool), with
/// static-forward fronts; the core, its Pool's sessions and every front share one event loop.
final class GatewayUnderTest: Sendable {
    let loop: any EventLoop
    let context: AWSContext
    let router: Router
    let core: GatewayCore
    let audit: AuditLog
    let logger: Logger

    private init(loop: any EventLoop, context: AWSContext, router: Router, core: GatewayCore, audit: AuditLog, logger: Logger) {
        self.loop = loop
        self.context = context
        self.router = router
        self.core = core
        self.audit = audit
        self.logger = logger
    }

    /// The core is built on its loop (its Pool is bound to it).
    static func makeCore(loop: any EventLoop, router: Router, poolSettings: PoolSettings, context: AWSContext, audit: AuditLog, logger: Logger)
        async throws -> GatewayCore
    {
        try await loop.submit {
            GatewayCore(
                loop: loop, router: router,
                users: UserDirectory(users: [GatewayUser(name: "*", keys: [], rules: [.everything])]),
                poolSettings: poolSettings, context: context, metrics: GatewayMetrics(), audit: audit, logger: logger)
        }.get()
    }

    static func start(loop: any EventLoop, emulatorURL: String, poolSettings: PoolSettings = PoolSettings(), unlimitedClientRate: Bool)
        async throws -> GatewayUnderTest
    {
        var environment = [
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
            "HOME": NSTemporaryDirectory(),
            // Every service at the emulator, EC2 (Name tags) included: `endpointURL` alone is SSM's.
            "AWS_ENDPOINT_URL": emulatorURL,
        ]
        if unlimitedClientRate {
            // The data channel's own pacing (900 messages/s, kept under the service's limit) off:
            // against the unlimited emulator the gateway's cost is what is measured, not that limiter.
            environment["SSMGATE_MESSAGES_PER_SECOND"] = "unlimited"
        }
        let context = try AWSContext(profile: nil, region: nil, endpointURL: emulatorURL, environment: environment)
        let router = Router(configuration: Router.Configuration(), directory: InstanceDirectory(ssm: context.ssm, ec2: context.ec2))
        var logger = Logger(label: "ssmgate.bench")
        logger.logLevel = .error
        let audit = try AuditLog(path: "/dev/null")
        let core = try await Self.makeCore(loop: loop, router: router, poolSettings: poolSettings, context: context, audit: audit, logger: logger)
        return GatewayUnderTest(loop: loop, context: context, router: router, core: core, audit: audit, logger: logger)
    }

    /// A second core (its own Pool) on the same loop, context and router.
    func sibling(poolSettings: PoolSettings) async throws -> GatewayUnderTest {
        let core = try await Self.makeCore(
            loop: self.loop, router: self.router, poolSettings: poolSettings, context: self.context, audit: self.audit, logger: self.logger)
        return GatewayUnderTest(loop: self.loop, context: self.context, router: self.router, core: core, audit: self.audit, logger: self.logger)
    }

    /// A static forward on 127.0.0.1 (a free port) to `port` on the emulator's instance.
    func forward(to port: Int) async throws -> Forward {
        var options = StaticForwardFront.Options(targetHost: Self.instanceID, targetPort: port, openTimeout: .seconds(60))
        options.logger = self.logger
        let front = StaticForwardFront(services: self.core, options: options, group: self.loop)
        let listener = try await front.bind(host: "127.0.0.1", port: 0).get()
        return Forward(front: front, listener: listener)
    }

    func poolCounts() async throws -> (sessions: Int, streams: Int) {
        try await self.core.poolCounts().get()
    }

    /// CPU seconds of the gateway's event-loop thread so far.
    func loopCPUSeconds() async throws -> Double {
        try await self.loop.submit { threadCPUSeconds() }.get()
    }

    /// Ends the pooled sessions (they are terminated through the emulator's API).
    func shutdownPool() async {
        try? await self.core.shutdownPool().get()
    }

    static let instanceID = "i-0123456789abcdef0"
}

struct Forward: Sendable {
    let front: StaticForwardFront
    let listener: any Channel
    var port: Int { self.listener.localAddress!.port! }

    func close() async {
        try? await self.listener.close()
    }
}
