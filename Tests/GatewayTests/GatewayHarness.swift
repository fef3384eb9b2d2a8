import Foundation
import Gateway
import LocalSSM
import Logging
import NIOCore
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A gateway on the embedded emulator with every listener on a free loopback port, three users
/// (one per SSH key type), a scratch directory for keys, host keys, the audit log and the daemon
/// socket, and an ssh_config that names the gateway `gw` for `-J`.
final class GatewayHarness: Sendable {
    static let instance = LocalSSMConfiguration.defaultInstanceID
    let scratch: ScratchDirectory
    let server: GatewayServer
    let sshd: SSHServer
    /// Login name → private key file.
    let userKeys: [String: String]

    static func start(
        sshdKeyType: String = "ed25519", customize: (inout GatewayConfiguration, ScratchDirectory) throws -> Void = { _, _ in }
    ) async throws -> GatewayHarness {
        let sshd = try await SSHServer.start(keyType: sshdKeyType)
        do {
            let scratch = try ScratchDirectory("gateway")
            guard let keygen = findExecutable("ssh-keygen") else { throw ToolMissing(tool: "openssh-client") }
            var users: [GatewayUser] = []
            var keys: [String: String] = [:]
            for (user, type, bits) in [("alice", "ed25519", ""), ("bob", "ecdsa", "256"), ("carol", "rsa", "3072")] {
                let file = scratch.file("\(user)_key")
                var arguments = ["-q", "-t", type, "-N", "", "-C", "\(user)@test", "-f", file]
                if !bits.isEmpty { arguments += ["-b", bits] }
                let made = try await run(keygen, arguments, environment: ProcessInfo.processInfo.environment)
                guard made.status == 0 else { throw ToolMissing(tool: "ssh-keygen (\(made.stderr))") }
                let line = try String(contentsOfFile: file + ".pub", encoding: .utf8)
                users.append(GatewayUser(name: user, keys: [AuthorizedKey(line: line)!], rules: [.everything]))
                keys[user] = file
            }
            var configuration = GatewayConfiguration()
            configuration.local = true
            var local = LocalSSMConfiguration()
            local.listenHost = "127.0.0.1"
            local.listenPort = 0
            local.limits = .unlimited
            configuration.localConfiguration = local
            configuration.ssh = .init(host: "127.0.0.1", port: 0)
            configuration.socks = .init(host: "127.0.0.1", port: 0)
            configuration.http = .init(host: "127.0.0.1", port: 0)
            configuration.metrics = .init(host: "127.0.0.1", port: 0)
            configuration.daemonSocket = scratch.file("daemon.sock")
            configuration.hostKeyDirectory = scratch.file("host_keys")
            configuration.auditLog = scratch.file("audit.jsonl")
            // Connections through SOCKS, HTTP CONNECT and forwards without credentials run as "anonymous".
            // The daemon socket's streams run as the user who runs the gateway.
            configuration.users = users + [
                GatewayUser(name: "anonymous", keys: [], rules: [.everything]), GatewayUser(name: NSUserName(), keys: [], rules: [.everything]),
            ]
            configuration.drainTime = .seconds(2)
            // A client's EOF keeps its stream open until the destination closes or this passes.
            configuration.pool.linger = .seconds(2)
            try customize(&configuration, scratch)
            var logger = Logger(label: "ssmgate.test")
            logger.logLevel = .warning
            let server = try await GatewayServer.start(configuration: configuration, logger: logger)
            let harness = GatewayHarness(scratch: scratch, server: server, sshd: sshd, userKeys: keys)
            try harness.writeSSHConfig()
            return harness
        } catch {
            sshd.stop()
            throw error
        }
    }

    init(scratch: ScratchDirectory, server: GatewayServer, sshd: SSHServer, userKeys: [String: String]) {
        self.scratch = scratch
        self.server = server
        self.sshd = sshd
        self.userKeys = userKeys
    }

    func stop() async {
        await self.server.drainAndStop(drainTime: .milliseconds(100))
        self.sshd.stop()
        self.scratch.remove()
    }

    /// For `defer`: the sshd (another process) stops now, so it never outlives the test run; the
    /// in-process gateway drains in a task.
    func close() {
        self.sshd.stop()
        Task { await self.server.drainAndStop(drainTime: .milliseconds(100)) }
    }

    /// `ssh -F <this>`: `gw-USER` is the gateway as USER; every other host is the real sshd's user key.
    var sshConfig: String { self.scratch.file("ssh_config") }

    func writeSSHConfig() throws {
        var text = ""
        for (user, key) in self.userKeys.sorted(by: { $0.key < $1.key }) {
            text += """
                Host gw-\(user)
                  HostName 127.0.0.1
                  Port \(self.server.bound.ssh!)
                  User \(user)
                  IdentityFile \(key)

                """
        }
        text += """
            Host *
              Port \(self.sshd.port)
              IdentitiesOnly yes
              IdentityFile \(self.sshd.userKey)
              StrictHostKeyChecking no
              UserKnownHostsFile /dev/null
              LogLevel INFO
              BatchMode yes
              ConnectTimeout 20

            """
        try text.write(toFile: self.sshConfig, atomically: true, encoding: .utf8)
    }

    /// ssh/scp/sftp arguments that jump through the gateway as `user` to the sshd on the instance.
    func jumpOptions(as user: String = "alice") -> [String] {
        ["-F", self.sshConfig, "-J", "gw-\(user)"]
    }

    var destination: String { "\(self.sshd.user)@\(Self.instance)" }

    /// The audit log's lines, parsed.
    func auditLines() -> [[String: Any]] {
        let text = (try? String(contentsOfFile: self.scratch.file("audit.jsonl"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
    }

    /// The audit log's close lines, once there are at least `count` (streams close after the
    /// destination does, or the linger time), waiting at most `seconds`.
    func closeLines(atLeast count: Int, within seconds: Double = 30) async -> [[String: Any]] {
        let deadline = Date().addingTimeInterval(seconds)
        var closes: [[String: Any]] = []
        repeat {
            closes = self.auditLines().filter { $0["event"] as? String == "close" }
            if closes.count >= count { break }
            try? await Task.sleep(for: .milliseconds(100))
        } while Date() < deadline
        return closes
    }

    /// `GET /metrics` as text.
    func metricsText() async throws -> String {
        guard let curl = findExecutable("curl") else { throw ToolMissing(tool: "curl") }
        return try await run(curl, ["-s", "--max-time", "10", "http://127.0.0.1:\(self.server.bound.metrics!)/metrics"],
                             environment: ProcessInfo.processInfo.environment).stdout
    }

    /// A sample's value from the metrics text (first line that starts with `name`).
    static func metric(_ text: String, _ name: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") || line.hasPrefix(name + "{") {
            return Double(line.split(separator: " ").last ?? "")
        }
        return nil
    }
}
