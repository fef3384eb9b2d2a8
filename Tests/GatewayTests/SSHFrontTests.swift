import Foundation
import Gateway
import Logging
import NIOCore
import NIOPosix
import Testing
import TestSupport

/// The SSH front with the real OpenSSH client (`ssh -J`, `scp -J`, `sftp -J`, `rsync -e`) and a
/// real sshd behind it; LoopbackServices turns each direct-tcpip channel into a TCP connection.
@Suite("SSHFront", .serialized)
struct SSHFrontTests {
    @Test("ssh -J runs a command on the sshd behind the gateway, with Ed25519, ECDSA and RSA gateway keys", .timeLimit(.minutes(2)))
    func jumpWithEachKeyType() async throws {
        try await GatewayFixture.with(withSSHD: true) { fixture in
            for jump in ["gw-ed25519", "gw-ecdsa", "gw-rsa"] {
                let result = try await fixture.ssh(["-J", jump, "target", "echo", "hello-through-\(jump)"])
                #expect(result.status == 0, "\(jump): \(result.stderr)")
                #expect(result.stdout == "hello-through-\(jump)\n")
            }
            let records = try await fixture.waitForRecords(3)
            #expect(records.allSatisfy { $0.outcome == "ok" && $0.request.identity.user == "alice" && $0.request.identity.front == .ssh })
            #expect(records.allSatisfy { $0.request.identity.keyFingerprint?.hasPrefix("SHA256:") == true })
            #expect(records.allSatisfy { $0.request.identity.sourceAddress.hasPrefix("127.0.0.1:") })
        }
    }

    @Test("A key the services do not know is refused (exit 255)", .timeLimit(.minutes(1)))
    func wrongKeyRefused() async throws {
        try await GatewayFixture.with(withSSHD: false) { fixture in
            let result = try await fixture.ssh(["gw-unknown", "true"])
            #expect(result.status == 255)
            #expect(result.stderr.contains("Permission denied"), "\(result.stderr)")
            #expect(fixture.front.openSessions >= 0)
        }
    }

    @Test("A denied destination: the ssh client shows the gateway's reason", .timeLimit(.minutes(1)))
    func deniedHostShowsReason() async throws {
        try await GatewayFixture.with(withSSHD: true) { fixture in
            let result = try await fixture.ssh(["-J", "gw-ed25519", "forbidden", "true"])
            #expect(result.status == 255)
            #expect(result.stderr.contains("administratively prohibited: alice may not reach forbidden.example:"), "\(result.stderr)")
            let records = try await fixture.waitForRecords(1)
            #expect(records.first?.outcome == "denied")
        }
    }

    @Test("A destination nobody listens on: connect failed, with the reason", .timeLimit(.minutes(1)))
    func unreachableShowsReason() async throws {
        try await GatewayFixture.with(withSSHD: false) { fixture in
            let result = try await fixture.ssh(["-W", "127.0.0.1:\(fixture.closedPort)", "gw-ed25519"])
            #expect(result.status == 255)
            #expect(result.stderr.contains("connect failed: Cannot connect to 127.0.0.1:\(fixture.closedPort)"), "\(result.stderr)")
        }
    }

    @Test("Plain ssh to the gateway prints the help text and exits 0 (shell and exec)", .timeLimit(.minutes(1)))
    func sessionChannelShowsHelp() async throws {
        try await GatewayFixture.with(withSSHD: false) { fixture in
            let shell = try await fixture.ssh(["gw-ed25519"])
            #expect(shell.status == 0, "\(shell.stderr)")
            #expect(shell.stdout.contains("Hello alice: this is a loopback test gateway."))
            let exec = try await fixture.ssh(["-tt", "gw-ed25519", "ls"])
            #expect(exec.status == 0, "\(exec.stderr)")
            #expect(exec.stdout.contains("Hello alice"))
        }
    }

    @Test("Each cipher, kex, MAC and host key algorithm of OpenSSH's defaults that libssh 0.10 has negotiates", .timeLimit(.minutes(3)))
    func algorithmsNegotiate() async throws {
        try await GatewayFixture.with(withSSHD: false) { fixture in
            let options = [
                "Ciphers=chacha20-poly1305@openssh.com", "Ciphers=aes256-gcm@openssh.com", "Ciphers=aes128-gcm@openssh.com",
                "Ciphers=aes128-ctr", "Ciphers=aes192-ctr", "Ciphers=aes256-ctr",
                "KexAlgorithms=curve25519-sha256", "KexAlgorithms=curve25519-sha256@libssh.org", "KexAlgorithms=ecdh-sha2-nistp256",
                "KexAlgorithms=ecdh-sha2-nistp384", "KexAlgorithms=ecdh-sha2-nistp521", "KexAlgorithms=diffie-hellman-group16-sha512",
                "KexAlgorithms=diffie-hellman-group18-sha512", "KexAlgorithms=diffie-hellman-group14-sha256",
                "KexAlgorithms=diffie-hellman-group-exchange-sha256",
                "HostKeyAlgorithms=ssh-ed25519", "HostKeyAlgorithms=ecdsa-sha2-nistp256", "HostKeyAlgorithms=rsa-sha2-512",
                "HostKeyAlgorithms=rsa-sha2-256",
                "Ciphers=aes128-ctr -o MACs=hmac-sha2-256-etm@openssh.com", "Ciphers=aes128-ctr -o MACs=hmac-sha2-512-etm@openssh.com",
                "Ciphers=aes128-ctr -o MACs=hmac-sha1-etm@openssh.com", "Ciphers=aes128-ctr -o MACs=hmac-sha2-256",
                "Ciphers=aes128-ctr -o MACs=hmac-sha2-512", "Ciphers=aes128-ctr -o MACs=hmac-sha1",
            ]
            for option in options {
                let split = option.components(separatedBy: " -o ").flatMap { ["-o", $0] }
                let result = try await fixture.ssh(split + ["gw-ed25519", "x"])
                #expect(result.status == 0, "\(option): \(result.stderr)")
                #expect(result.stdout.contains("Hello alice"), "\(option)")
            }
        }
    }

    @Test("scp -J moves 64 MiB up and down intact, and the records count the bytes", .timeLimit(.minutes(4)))
    func scpBothWays() async throws {
        try await GatewayFixture.with(withSSHD: true) { fixture in
            let size = 64 << 20
            let local = fixture.scratch.file("up.bin")
            let digest = try writeRandomFile(local, bytes: size, seed: 42)
            let remote = fixture.scratch.file("remote.bin")
            let back = fixture.scratch.file("down.bin")
            var started = Date()
            let up = try await fixture.tool("scp", ["-q", "-J", "gw-ed25519", local, "target:\(remote)"], timeout: 180)
            let upSeconds = Date().timeIntervalSince(started)
            #expect(up.status == 0, "\(up.stderr)")
            #expect(try sha256(ofFile: remote) == digest)
            started = Date()
            let down = try await fixture.tool("scp", ["-q", "-J", "gw-ed25519", "target:\(remote)", back], timeout: 180)
            let downSeconds = Date().timeIntervalSince(started)
            #expect(down.status == 0, "\(down.stderr)")
            #expect(try sha256(ofFile: back) == digest)
            print("SSHFront scp 64 MiB: up \(String(format: "%.2f", upSeconds)) s, down \(String(format: "%.2f", downSeconds)) s")
            let records = try await fixture.waitForRecords(2)
            #expect(records.allSatisfy { $0.outcome == "ok" })
            // The SSH stream to sshd carries the file plus encryption and protocol overhead.
            #expect(records[0].bytesFromClient > size && records[0].bytesFromClient < size + size / 8)
            #expect(records[1].bytesToClient > size && records[1].bytesToClient < size + size / 8)
            #expect(records.allSatisfy { $0.route?.document == "loopback" })
            #expect(fixture.front.openChannels == 0)
        }
    }

    @Test("sftp -J puts and gets a file", .timeLimit(.minutes(2)))
    func sftpPutGet() async throws {
        try await GatewayFixture.with(withSSHD: true) { fixture in
            let local = fixture.scratch.file("sftp-up.bin")
            let digest = try writeRandomFile(local, bytes: 3 << 20, seed: 7)
            let remote = fixture.scratch.file("sftp-remote.bin")
            let back = fixture.scratch.file("sftp-down.bin")
            let batch = fixture.scratch.file("batch")
            try "put \(local) \(remote)\nget \(remote) \(back)\n".write(toFile: batch, atomically: true, encoding: .utf8)
            let result = try await fixture.tool("sftp", ["-q", "-J", "gw-ecdsa", "-b", batch, "target"], timeout: 60)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(try sha256(ofFile: remote) == digest)
            #expect(try sha256(ofFile: back) == digest)
        }
    }

    @Test("rsync -e 'ssh -J gw' copies a file", .timeLimit(.minutes(2)))
    func rsyncThroughJump() async throws {
        try await GatewayFixture.with(withSSHD: true) { fixture in
            guard findExecutable("rsync") != nil else { throw ToolMissing(tool: "rsync") }
            let local = fixture.scratch.file("rsync-up.bin")
            let digest = try writeRandomFile(local, bytes: 5 << 20, seed: 9)
            let remote = fixture.scratch.file("rsync-remote.bin")
            let result = try await fixture.tool(
                "rsync", ["-e", "ssh -F \(fixture.config) -J gw-rsa", local, "target:\(remote)"], timeout: 60, useConfig: false)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(try sha256(ofFile: remote) == digest)
        }
    }

    @Test("ssh -W half-close: the client's EOF reaches the destination, whose answer still comes back", .timeLimit(.minutes(1)))
    func halfCloseThroughW() async throws {
        try await GatewayFixture.with(withSSHD: false) { fixture in
            let echo = try await EchoServer()
            defer { Task { await echo.close() } }
            let input = String(repeating: "0123456789abcdef", count: 40_000) + "\n"  // 640 KB: more than a window
            let result = try await fixture.ssh(["-W", "127.0.0.1:\(echo.port)", "gw-ed25519"], stdin: input)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == input)
            let records = try await fixture.waitForRecords(1)
            #expect(records.first?.bytesFromClient == input.utf8.count)
            #expect(records.first?.bytesToClient == input.utf8.count)
        }
    }

    @Test("shutdown ends open sessions and joins their threads; the client sees the connection close", .timeLimit(.minutes(1)))
    func shutdownWithOpenSession() async throws {
        try await GatewayFixture.with(withSSHD: true) { fixture in
            let client = Task { try await fixture.ssh(["-J", "gw-ed25519", "target", "sleep", "20"]) }
            let deadline = Date().addingTimeInterval(10)
            while fixture.front.openChannels == 0, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
            #expect(fixture.front.openSessions == 1)
            #expect(fixture.front.openChannels == 1)
            // An idle session blocks in poll(2): the CPU it costs is printed (a measurement, not a
            // test: other suites share the process and the cores).
            let idleCPU = try await offPool { () -> Double in
                let before = processCPUSeconds()
                usleep(1_000_000)
                return processCPUSeconds() - before
            }
            print("SSHFront idle session: \(String(format: "%.3f", idleCPU)) s CPU in 1 s (whole test process)")
            let front = fixture.front
            let started = Date()
            // Bounded by the test's time limit: shutdown must return, not hang.
            try await offPool { front.shutdown() }
            #expect(front.openSessions == 0)
            #expect(front.openChannels == 0)
            let result = try await client.value
            #expect(result.status == 255)
            // The client was cut off by the shutdown, not by its `sleep 20` ending.
            #expect(Date().timeIntervalSince(started) < 19)
            let records = try await fixture.waitForRecords(1)
            #expect(records.first?.outcome == "gateway_stopping")
        }
    }

    @Test("Host keys are created 0600 on first start and reused on the next", .timeLimit(.minutes(1)))
    func hostKeysPersist() async throws {
        let directory = try ScratchDirectory("ssh-front-keys")
        defer { directory.remove() }
        let services = LoopbackServices()
        let keyDirectory = directory.file("keys")
        let first = try await offPool { () throws -> [String: Data] in
            let front = SSHFront(configuration: .init(hostKeyDirectory: keyDirectory), services: services, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
            _ = try front.start()
            front.shutdown()
            var keys: [String: Data] = [:]
            for name in ["ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key"] {
                keys[name] = FileManager.default.contents(atPath: "\(keyDirectory)/\(name)")
            }
            return keys
        }
        #expect(first.count == 3)
        for name in first.keys {
            let attributes = try FileManager.default.attributesOfItem(atPath: "\(keyDirectory)/\(name)")
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        }
        try await offPool {
            let front = SSHFront(configuration: .init(hostKeyDirectory: keyDirectory), services: services, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
            _ = try front.start()
            front.shutdown()
        }
        for (name, data) in first {
            #expect(FileManager.default.contents(atPath: "\(keyDirectory)/\(name)") == data)
        }
    }
}

// MARK: - Fixture

/// User plus system CPU time of this process so far.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// Runs blocking work (key generation, joining threads) off the cooperative pool.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// A started SSH front on loopback, gateway user keys of each type, an ssh_config naming them,
/// and (optionally) a real sshd as the target.
final class GatewayFixture: Sendable {
    let scratch: ScratchDirectory
    let services: LoopbackServices
    let front: SSHFront
    let port: Int
    let config: String
    let sshd: SSHServer?
    let closedPort: Int

    static func with(withSSHD: Bool, _ body: (GatewayFixture) async throws -> Void) async throws {
        let scratch = try ScratchDirectory("ssh-front")
        defer { scratch.remove() }
        guard let keygen = findExecutable("ssh-keygen") else { throw ToolMissing(tool: "openssh-client") }
        var keys: [LoopbackServices.AuthorizedKey] = []
        for (name, arguments) in [("ed25519", ["-t", "ed25519"]), ("ecdsa", ["-t", "ecdsa", "-b", "256"]), ("rsa", ["-t", "rsa", "-b", "3072"]), ("unknown", ["-t", "ed25519"])] {
            let path = scratch.file("gw_\(name)")
            let result = try await run(keygen, ["-q", "-N", "", "-f", path] + arguments, environment: ProcessInfo.processInfo.environment)
            guard result.status == 0 else { throw ToolMissing(tool: "ssh-keygen (\(result.stderr))") }
            let fields = try String(contentsOfFile: path + ".pub", encoding: .utf8).split(separator: " ")
            if name != "unknown" { keys.append(.init(type: String(fields[0]), base64: String(fields[1]), user: "alice")) }
        }
        let services = LoopbackServices(keys: keys, deniedHosts: ["forbidden.example"])
        let hostKeys = scratch.file("hostkeys")
        var logger = Logger(label: "ssmgate.ssh.test", factory: { StreamLogHandler.standardError(label: $0) })
        logger.logLevel = ProcessInfo.processInfo.environment["SSMGATE_TEST_DEBUG"] == nil ? .warning : .debug
        let front = SSHFront(
            configuration: .init(hostKeyDirectory: hostKeys), services: services, eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: logger)
        let port = try await offPool { try front.start() }
        let sshd = withSSHD ? try await SSHServer.start() : nil
        let closedPort = try await freePort()
        var config = ""
        for (alias, key) in [("gw-ed25519", "ed25519"), ("gw-ecdsa", "ecdsa"), ("gw-rsa", "rsa"), ("gw-unknown", "unknown")] {
            config += """
                Host \(alias)
                  HostName 127.0.0.1
                  Port \(port)
                  User alice
                  IdentityFile \(scratch.file("gw_\(key)"))
                  # OpenSSH logs a refused channel ("open failed: …: <reason>") at INFO, its default.
                  LogLevel INFO

                """
        }
        if let sshd {
            for (alias, host) in [("target", "127.0.0.1"), ("forbidden", "forbidden.example")] {
                config += """
                    Host \(alias)
                      HostName \(host)
                      Port \(sshd.port)
                      User \(sshd.user)
                      IdentityFile \(sshd.userKey)

                    """
            }
        }
        config += """
            Host *
              IdentitiesOnly yes
              StrictHostKeyChecking no
              UserKnownHostsFile /dev/null
              BatchMode yes
              LogLevel ERROR
              ConnectTimeout 10

            """
        let configPath = scratch.file("ssh_config")
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let fixture = GatewayFixture(
            scratch: scratch, services: services, front: front, port: port, config: configPath, sshd: sshd, closedPort: closedPort)
        do {
            try await body(fixture)
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    private init(scratch: ScratchDirectory, services: LoopbackServices, front: SSHFront, port: Int, config: String, sshd: SSHServer?, closedPort: Int) {
        self.scratch = scratch
        self.services = services
        self.front = front
        self.port = port
        self.config = config
        self.sshd = sshd
        self.closedPort = closedPort
    }

    func stop() async {
        let front = self.front
        _ = try? await offPool { front.shutdown() }
        #expect(front.openSessions == 0)
        #expect(front.openChannels == 0)
        self.sshd?.stop()
    }

    func ssh(_ arguments: [String], timeout: Int = 30, stdin: String? = nil) async throws -> CommandResult {
        try await self.tool("ssh", arguments, timeout: timeout, stdin: stdin)
    }

    /// Runs an OpenSSH tool with our ssh_config, bounded by coreutils `timeout`.
    func tool(_ name: String, _ arguments: [String], timeout: Int, useConfig: Bool = true, stdin: String? = nil) async throws -> CommandResult {
        guard let executable = findExecutable(name), let timeoutTool = findExecutable("timeout") else { throw ToolMissing(tool: name) }
        let configArguments = useConfig ? ["-F", self.config] : []
        return try await run(
            timeoutTool, ["-k", "5", "\(timeout)", executable] + configArguments + arguments,
            environment: ProcessInfo.processInfo.environment, stdin: stdin)
    }

    /// The streams finished so far, once there are at least `count` (the session thread records
    /// a stream a moment after the client has exited).
    func waitForRecords(_ count: Int) async throws -> [StreamRecord] {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let records = self.services.finished
            if records.count >= count { return records }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("only \(self.services.finished.count) of \(count) stream records arrived")
        return self.services.finished
    }
}
