import AWSClient
import Foundation
import LocalSSM
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `ssmgate serve`: the fronts, the core and (with `--local`) the embedded emulator, started from
/// one configuration; reloadable (SIGHUP) and drainable (SIGTERM).
public final class GatewayServer: Sendable {
    public struct Bound: Sendable {
        public var ssh: Int?
        public var socks: Int?
        public var http: Int?
        public var metrics: Int?
        public var forwards: [Int] = []
        public var daemonSocket: String?
        /// The embedded emulator's endpoint, with `--local`.
        public var emulatorURL: String?
    }

    public let core: GatewayCore
    public let bound: Bound
    let listeners: NIOLockedValueBox<[any Channel]>
    let sshFront: SSHFront?
    let emulator: LocalEmulator?
    let context: AWSContext
    let logger: Logger
    let configuration: NIOLockedValueBox<GatewayConfiguration>

    init(core: GatewayCore, bound: Bound, listeners: [any Channel], sshFront: SSHFront?, emulator: LocalEmulator?, context: AWSContext,
         configuration: GatewayConfiguration, logger: Logger) {
        self.core = core
        self.bound = bound
        self.listeners = NIOLockedValueBox(listeners)
        self.sshFront = sshFront
        self.emulator = emulator
        self.context = context
        self.configuration = NIOLockedValueBox(configuration)
        self.logger = logger
    }

    /// The environment the embedded emulator needs (endpoint and its test credentials).
    static func emulatorEnvironment(_ emulator: LocalEmulator, base: [String: String]) -> [String: String] {
        var environment = base.filter { !$0.key.hasPrefix("AWS_") }
        let credential = emulator.configuration.credentials.first
        environment["AWS_ACCESS_KEY_ID"] = credential?.accessKeyID ?? "test"
        environment["AWS_SECRET_ACCESS_KEY"] = credential?.secretAccessKey ?? "test"
        environment["AWS_REGION"] = emulator.configuration.region
        environment["AWS_CONFIG_FILE"] = "/dev/null"
        environment["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"
        environment["AWS_EC2_METADATA_DISABLED"] = "true"
        // Every service (SSM, EC2, STS, KMS) goes to the emulator.
        environment["AWS_ENDPOINT_URL"] = emulator.server.endpointURL
        return environment
    }

    public static func start(
        configuration: GatewayConfiguration, environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger = Logger(label: "ssmgate.gateway")
    ) async throws -> GatewayServer {
        var emulator: LocalEmulator?
        var environment = environment
        var endpointURL = configuration.endpointURL
        if configuration.local {
            var local = configuration.localConfiguration ?? LocalSSMConfiguration()
            if configuration.localConfiguration == nil {
                local.listenHost = "127.0.0.1"
                local.listenPort = 0
                if let profile = LimitsProfile(named: configuration.localLimits) { local.limits = profile }
            }
            let started = LocalEmulator(configuration: local)
            try await started.start()
            emulator = started
            environment = Self.emulatorEnvironment(started, base: environment)
            endpointURL = nil
            // The client paces itself to the service's message rate only where the emulator imposes one.
            if local.limits.name == LimitsProfile.unlimited.name, environment["SSMGATE_MESSAGES_PER_SECOND"] == nil {
                environment["SSMGATE_MESSAGES_PER_SECOND"] = "unlimited"
            }
        }
        let context = try AWSContext(
            profile: configuration.local ? nil : configuration.profile, region: configuration.local ? nil : configuration.region,
            endpointURL: endpointURL, environment: environment)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let metrics = GatewayMetrics()
        let audit = try AuditLog(path: configuration.auditLog)
        let directory = InstanceDirectory(ssm: context.ssm, ec2: context.ec2)
        // The first client should not wait for DescribeInstanceInformation / DescribeInstances.
        Task { await directory.prefetch() }
        let router = Router(configuration: Self.routerConfiguration(configuration), directory: directory)
        var pool = configuration.pool
        pool.idleTimeout = min(pool.idleTimeout, configuration.sessionIdleTimeout - .seconds(30))
        let users = UserDirectory(users: configuration.users)
        let core = GatewayCore(loop: loop, router: router, users: users, poolSettings: pool, context: context,
                               metrics: metrics, audit: audit, logger: logger)
        var bound = Bound(emulatorURL: emulator?.server.endpointURL)
        var listeners: [any Channel] = []
        var sshFront: SSHFront?
        do {
            let passwordCheck: PasswordCheck = { user, password in core.users.authenticate(user: user, password: password) }
            if let ssh = configuration.ssh {
                let front = SSHFront(
                    configuration: SSHFront.Configuration(bindHost: ssh.host, port: ssh.port, hostKeyDirectory: configuration.hostKeyDirectory),
                    services: core, eventLoopGroup: loop)
                bound.ssh = try front.start()
                sshFront = front
            }
            if let socks = configuration.socks {
                let front = SOCKS5Front(
                    services: core, options: .init(allowNoAuth: !configuration.proxyAuthentication, passwordCheck: passwordCheck), group: loop)
                let channel = try await front.bind(host: socks.host, port: socks.port).get()
                listeners.append(channel)
                bound.socks = channel.localAddress?.port
            }
            if let http = configuration.http {
                let front = HTTPConnectFront(
                    services: core, options: .init(passwordCheck: configuration.proxyAuthentication ? passwordCheck : nil), group: loop)
                let channel = try await front.bind(host: http.host, port: http.port).get()
                listeners.append(channel)
                bound.http = channel.localAddress?.port
            }
            for forward in configuration.forwards {
                let target = forward.remoteHost ?? forward.target
                let front = StaticForwardFront(
                    services: core, options: .init(targetHost: target, targetPort: forward.port), group: loop)
                let channel = try await front.bind(host: forward.listen.host, port: forward.listen.port).get()
                listeners.append(channel)
                bound.forwards.append(channel.localAddress?.port ?? forward.listen.port)
            }
            if let metricsListener = configuration.metrics {
                let channel = try await metrics.serve(host: metricsListener.host, port: metricsListener.port, group: loop)
                listeners.append(channel)
                bound.metrics = channel.localAddress?.port
            }
            if let path = configuration.daemonSocket {
                let front = DaemonSocketFront(services: core, path: path, user: NSUserName(), group: loop)
                listeners.append(try await front.bind())
                bound.daemonSocket = path
            }
        } catch {
            sshFront?.shutdown()
            for listener in listeners { try? await listener.close() }
            await emulator?.stop()
            await context.shutdown()
            throw error
        }
        return GatewayServer(core: core, bound: bound, listeners: listeners, sshFront: sshFront, emulator: emulator, context: context,
                             configuration: configuration, logger: logger)
    }

    /// The configured routes plus one per forward with a remote host (that host via the forward's target).
    static func routerConfiguration(_ configuration: GatewayConfiguration) -> Router.Configuration {
        var router = configuration.router
        for forward in configuration.forwards {
            guard let remoteHost = forward.remoteHost else { continue }
            router.remoteHostRoutes.insert(RemoteHostRoute(pattern: remoteHost, via: forward.target), at: 0)
        }
        return router
    }

    /// SIGHUP: users, access rules, aliases, routes and pool sizes from the new configuration; open
    /// streams and sessions stay. Listener addresses need a restart (logged when they differ).
    public func reload(_ fresh: GatewayConfiguration) {
        let old = self.configuration.withLockedValue { old in
            defer { old = fresh }
            return old
        }
        if old.ssh != fresh.ssh || old.socks != fresh.socks || old.http != fresh.http || old.forwards != fresh.forwards {
            self.logger.warning("listener addresses changed in the configuration; they take effect after a restart")
        }
        var pool = fresh.pool
        pool.idleTimeout = min(pool.idleTimeout, fresh.sessionIdleTimeout - .seconds(30))
        self.core.update(users: UserDirectory(users: fresh.users), router: Self.routerConfiguration(fresh), pool: pool)
        self.core.audit.reopen()
        self.logger.notice("configuration reloaded", metadata: ["users": "\(fresh.users.count)"])
    }

    /// SIGTERM: stop accepting, let open streams finish for up to `drainTime`, then close the rest.
    public func drainAndStop(drainTime: TimeAmount) async {
        self.sshFront?.stopAccepting()
        for listener in self.listeners.withLockedValue({ $0 }) { try? await listener.close() }
        let deadline = NIODeadline.now() + drainTime
        while NIODeadline.now() < deadline {
            let counts = try? await self.core.poolCounts().get()
            if (counts?.streams ?? 0) == 0, (self.sshFront?.openChannels ?? 0) == 0 { break }
            // Polling the counters while draining; nothing here paces data.
            try? await Task.sleep(for: .milliseconds(200))
        }
        try? await self.core.shutdownPool().get()
        self.sshFront?.shutdown()
        if let path = self.bound.daemonSocket { try? FileManager.default.removeItem(atPath: path) }
        await self.emulator?.stop()
        await self.context.shutdown()
    }

    /// What `serve` prints on start: each listener and one example command for it.
    public func banner(instance: String = "i-0123456789abcdef0") -> String {
        var lines: [String] = ["ssmgate gateway running\(self.emulator != nil ? " on the embedded Session Manager emulator (\(self.bound.emulatorURL ?? ""))" : "")"]
        let target = self.emulator?.configuration.instances.first?.id ?? instance
        if let port = self.bound.ssh {
            lines.append("  SSH jump host   127.0.0.1:\(port)    ssh -J 127.0.0.1:\(port) \(NSUserName())@\(target)   (or scp -J / sftp -J / rsync -e 'ssh -J 127.0.0.1:\(port)')")
        }
        if let port = self.bound.socks {
            lines.append("  SOCKS5          127.0.0.1:\(port)    curl --socks5-hostname 127.0.0.1:\(port) http://\(target):8080/")
        }
        if let port = self.bound.http {
            lines.append("  HTTP CONNECT    127.0.0.1:\(port)    curl -p --proxy http://127.0.0.1:\(port) http://\(target):8080/")
        }
        for port in self.bound.forwards {
            lines.append("  forward         127.0.0.1:\(port)    (see forwards: in the configuration)")
        }
        if let port = self.bound.metrics {
            lines.append("  metrics         127.0.0.1:\(port)    curl http://127.0.0.1:\(port)/metrics")
        }
        if let path = self.bound.daemonSocket {
            lines.append("  daemon socket   \(path)    ssh -o ProxyCommand='ssmgate proxy %h %p' \(NSUserName())@\(target)")
        }
        return lines.joined(separator: "\n")
    }
}
