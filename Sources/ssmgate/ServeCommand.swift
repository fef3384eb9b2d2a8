import ArgumentParser
import Dispatch
import Foundation
import Gateway
import LocalSSM
import Logging
import NIOCore

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the gateway: SSH jump host, SOCKS5, HTTP CONNECT and static forwards over pooled sessions.",
        discussion: """
            ssmgate serve --local      # everything on this machine, on the embedded Session Manager emulator
            ssmgate serve --config gateway.yaml
            With no configuration file the users are the keys in ~/.ssh/authorized_keys and ~/.ssh/*.pub, \
            allowed every target. SIGHUP reloads the configuration; SIGTERM drains streams, then stops.
            """
    )

    @Option(name: .long, help: "The gateway's YAML configuration (listeners, users and access, routes, forwards, pool).")
    var config: String?

    @Flag(name: .long, help: "Run the Session Manager emulator in-process and use it (no AWS account needed).")
    var local = false

    @Option(name: .long, help: "With --local: the emulator's limits, aws (default) or unlimited.")
    var limits: String?

    @Option(name: .customLong("ssh-listen"), help: "SSH front HOST:PORT, or off (default 127.0.0.1:2222).")
    var sshListen: String?

    @Option(name: .customLong("socks-listen"), help: "SOCKS5 front HOST:PORT, or off (default 127.0.0.1:1080).")
    var socksListen: String?

    @Option(name: .customLong("http-listen"), help: "HTTP CONNECT front HOST:PORT, or off (default 127.0.0.1:3128).")
    var httpListen: String?

    @Option(name: .customLong("metrics-listen"), help: "Prometheus /metrics HOST:PORT, or off (default 127.0.0.1:9464).")
    var metricsListen: String?

    @Option(name: .customLong("daemon-socket"), help: "Unix socket for `ssmgate proxy`, or off.")
    var daemonSocket: String?

    @Option(name: .customLong("audit-log"), help: "Audit log file (JSON lines); default standard error.")
    var auditLog: String?

    @Option(name: .customLong("host-key-dir"), help: "Where the SSH host keys are kept (created on first start).")
    var hostKeyDirectory: String?

    @Option(name: .long, help: "Named AWS profile.")
    var profile: String?

    @Option(name: .long, help: "AWS region.")
    var region: String?

    @Option(name: .customLong("endpoint-url"), help: "SSM/EC2 endpoint (e.g. a separately running `ssmgate local`).")
    var endpointURL: String?

    func loadConfiguration() throws -> GatewayConfiguration {
        var configuration = GatewayConfiguration()
        if let config {
            do {
                configuration = try GatewayConfiguration.load(file: config)
            } catch {
                throw ValidationError(error.description)
            }
        }
        if self.local { configuration.local = true }
        if let limits {
            guard LimitsProfile(named: limits) != nil else { throw ValidationError("--limits '\(limits)' is not a profile: use aws or unlimited") }
            configuration.localLimits = limits
        }
        for (flag, value, assign) in [
            ("--ssh-listen", self.sshListen, { (c: inout GatewayConfiguration, l: GatewayConfiguration.Listener?) in c.ssh = l }),
            ("--socks-listen", self.socksListen, { c, l in c.socks = l }),
            ("--http-listen", self.httpListen, { c, l in c.http = l }),
            ("--metrics-listen", self.metricsListen, { c, l in c.metrics = l }),
        ] as [(String, String?, (inout GatewayConfiguration, GatewayConfiguration.Listener?) -> Void)] {
            guard let value else { continue }
            if value == "off" {
                assign(&configuration, nil)
                continue
            }
            guard let (host, port) = parseHostPort(value) else {
                throw ValidationError("\(flag) '\(value)' is not HOST:PORT (for example 127.0.0.1:2222) or off")
            }
            assign(&configuration, .init(host: host, port: port))
        }
        if let daemonSocket { configuration.daemonSocket = daemonSocket == "off" ? nil : daemonSocket }
        if let auditLog { configuration.auditLog = auditLog == "-" ? nil : auditLog }
        if let hostKeyDirectory { configuration.hostKeyDirectory = hostKeyDirectory }
        if let profile { configuration.profile = profile }
        if let region { configuration.region = region }
        if let endpointURL { configuration.endpointURL = endpointURL }
        if configuration.users.isEmpty {
            let home = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
            configuration.users = GatewayConfiguration.localUsers(home: home)
        }
        return configuration
    }

    func run() async throws {
        let configuration = try self.loadConfiguration()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = ProcessInfo.processInfo.environment["SSMGATE_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .notice
            return handler
        }
        let server: GatewayServer
        do {
            server = try await GatewayServer.start(configuration: configuration)
        } catch {
            throw CommandFailure(message: "ssmgate serve: \(error)", exitCode: 1)
        }
        if configuration.users.allSatisfy({ $0.keys.isEmpty }), configuration.ssh != nil {
            Console.error("note: no SSH user keys are configured (none in ~/.ssh/authorized_keys or ~/.ssh/*.pub); create one with ssh-keygen -t ed25519\n")
        }
        for warning in configuration.warnings { Console.error("note: \(warning)\n") }
        print(server.banner())
        fflush(nil)
        let stop = AsyncStream<Void>.makeStream()
        // The file is read again with the same flags over it (listeners, --local, --audit-log), so
        // only what the file changed differs; without a file this re-reads the user's own keys.
        let reloads = SignalRelay(signals: [SIGHUP]) {
            do {
                let fresh = try self.loadConfiguration()
                for warning in fresh.warnings { Console.error("note: \(warning)\n") }
                server.reload(fresh)
            } catch {
                Console.error("ssmgate: configuration not reloaded, the running one stays: \(error)\n")
            }
        }
        let terminations = SignalRelay(signals: [SIGTERM, SIGINT]) { stop.continuation.yield() }
        for await _ in stop.stream { break }
        reloads.cancel()
        terminations.cancel()
        Console.error("ssmgate: stopping; draining open streams for up to \(configuration.drainTime.nanoseconds / 1_000_000_000) s\n")
        await server.drainAndStop(drainTime: configuration.drainTime)
    }
}
