import Crypto
import Foundation
import Gateway
import LocalSSM
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The gateway with real clients (OpenSSH ssh/scp/sftp, rsync, curl) against the embedded emulator
/// and a real sshd on loopback. Serialized: each test moves real bytes through real processes.
@Suite("Gateway end to end", .serialized)
struct GatewayEndToEndTests {
    static let environment = ProcessInfo.processInfo.environment

    func tool(_ name: String, package: String) throws -> String {
        guard let path = findExecutable(name) else { throw ToolMissing(tool: package) }
        return path
    }

    @Test("ssh -J, sftp -J and rsync through the gateway with Ed25519, ECDSA and RSA user keys")
    func jumpWithEveryKeyType() async throws {
        let gateway = try await GatewayHarness.start()
        defer { gateway.close() }
        let ssh = try self.tool("ssh", package: "openssh-client")
        for user in ["alice", "bob", "carol"] {
            let result = try await run(ssh, gateway.jumpOptions(as: user) + [gateway.destination, "echo jumped-$((6*7))"], environment: Self.environment)
            #expect(result.status == 0, "ssh -J as \(user): \(result.stderr)")
            #expect(result.stdout.contains("jumped-42"))
        }
        // sftp -J: put and get a file.
        let sftp = try self.tool("sftp", package: "openssh-client")
        let source = gateway.scratch.file("sftp-up.bin")
        let digest = try writeRandomFile(source, bytes: 1 << 20, seed: 7)
        let fetched = gateway.scratch.file("sftp-down.bin")
        let batch = "put \(source) sftp-\(getpid()).bin\nget sftp-\(getpid()).bin \(fetched)\nrm sftp-\(getpid()).bin\n"
        let sftpResult = try await run(sftp, ["-b", "-"] + gateway.jumpOptions(as: "bob") + [gateway.destination], environment: Self.environment, stdin: batch)
        #expect(sftpResult.status == 0, "sftp -J: \(sftpResult.stderr)")
        #expect(try sha256(ofFile: fetched) == digest)
        // rsync -e 'ssh -J …'.
        let rsync = try self.tool("rsync", package: "rsync")
        let tree = gateway.scratch.file("tree")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        let treeDigest = try writeRandomFile(tree + "/data.bin", bytes: 4 << 20, seed: 11)
        let remote = "\(gateway.destination):\(gateway.scratch.file("rsynced"))/"
        let shell = "ssh -F \(gateway.sshConfig) -J gw-carol"
        let rsyncResult = try await run(rsync, ["-a", "-e", shell, tree + "/", remote], environment: Self.environment)
        #expect(rsyncResult.status == 0, "rsync: \(rsyncResult.stderr)")
        #expect(try sha256(ofFile: gateway.scratch.file("rsynced") + "/data.bin") == treeDigest)
        // Every stream has an open and a close line naming its user and key.
        let closes = await gateway.closeLines(atLeast: 5)
        #expect(Set(closes.compactMap { $0["user"] as? String }).isSuperset(of: ["alice", "bob", "carol"]))
        #expect(closes.allSatisfy { ($0["key_fingerprint"] as? String)?.hasPrefix("SHA256:") == true })
        #expect(closes.allSatisfy { $0["front"] as? String == "ssh" && $0["target"] as? String == GatewayHarness.instance })
    }

    @Test("scp -J moves 64 MiB each way intact, and the audit log counts the bytes")
    func scpBothWays() async throws {
        let gateway = try await GatewayHarness.start()
        defer { gateway.close() }
        let scp = try self.tool("scp", package: "openssh-client")
        let size = 64 << 20
        let source = gateway.scratch.file("up.bin")
        let digest = try writeRandomFile(source, bytes: size, seed: 64)
        let remotePath = gateway.scratch.file("remote.bin")
        let up = try await run(scp, gateway.jumpOptions() + [source, "\(gateway.destination):\(remotePath)"], environment: Self.environment)
        #expect(up.status == 0, "scp up: \(up.stderr)")
        #expect(try sha256(ofFile: remotePath) == digest)
        let back = gateway.scratch.file("down.bin")
        let down = try await run(scp, gateway.jumpOptions() + ["\(gateway.destination):\(remotePath)", back], environment: Self.environment)
        #expect(down.status == 0, "scp down: \(down.stderr)")
        #expect(try sha256(ofFile: back) == digest)
        let closes = await gateway.closeLines(atLeast: 2)
        #expect(closes.count == 2)
        let fromClient = closes.compactMap { $0["bytes_from_client"] as? Int }
        let toClient = closes.compactMap { $0["bytes_to_client"] as? Int }
        // SSH framing adds a little; the payload is there in full, in the right direction.
        #expect(fromClient.count == 2 && fromClient[0] > size && fromClient[0] < size + size / 8)
        #expect(toClient.count == 2 && toClient[1] > size && toClient[1] < size + size / 8)
        #expect(closes.allSatisfy { $0["outcome"] as? String == "ok" && $0["document"] as? String == "AWS-StartPortForwardingSession" })
    }

    @Test("A wrong key is refused; a denied, unknown, ambiguous or offline target is refused with a message ssh shows")
    func refusals() async throws {
        let gateway = try await GatewayHarness.start { configuration, _ in
            // bob may reach the instance's ssh only on another port.
            configuration.users[1].rules = [AccessRule(targets: ["name:local"], ports: [1...21])]
            // Two running instances share one Name; a third has lost its agent.
            configuration.localConfiguration?.instances += [
                .init(id: "i-0aaaaaaaaaaaaaaa1", tags: ["Name": "twin"]),
                .init(id: "i-0aaaaaaaaaaaaaaa2", tags: ["Name": "twin"]),
                .init(id: "i-0aaaaaaaaaaaaaaa3", tags: ["Name": "sleepy"], pingStatus: .connectionLost),
            ]
        }
        defer { gateway.close() }
        let ssh = try self.tool("ssh", package: "openssh-client")
        let keygen = try self.tool("ssh-keygen", package: "openssh-client")
        let stranger = gateway.scratch.file("stranger_key")
        _ = try await run(keygen, ["-q", "-t", "ed25519", "-N", "", "-f", stranger], environment: Self.environment)
        // The jump host's own options come from the config: an entry with only the stranger's key.
        let strangerConfig = gateway.scratch.file("stranger_config")
        try """
            Host gw-stranger
              HostName 127.0.0.1
              Port \(gateway.server.bound.ssh!)
              User alice
              IdentityFile \(stranger)
              IdentitiesOnly yes
              StrictHostKeyChecking no
              UserKnownHostsFile /dev/null
              BatchMode yes
            """.write(toFile: strangerConfig, atomically: true, encoding: .utf8)
        let refused = try await run(ssh, ["-F", strangerConfig, "gw-stranger", "true"], environment: Self.environment)
        #expect(refused.status == 255)
        #expect(refused.stderr.contains("Permission denied"), "\(refused.stderr)")
        let denied = try await run(ssh, gateway.jumpOptions(as: "bob") + [gateway.destination, "true"], environment: Self.environment)
        #expect(denied.status == 255)
        #expect(denied.stderr.contains("Access denied"), "ssh should show the denial: \(denied.stderr)")
        let unknown = try await run(ssh, gateway.jumpOptions() + ["-p", "\(gateway.sshd.port)", "\(gateway.sshd.user)@no-such-node", "true"], environment: Self.environment)
        #expect(unknown.status == 255)
        #expect(unknown.stderr.contains("No managed node is called 'no-such-node'"), "\(unknown.stderr)")
        let ambiguous = try await run(ssh, gateway.jumpOptions() + ["-p", "\(gateway.sshd.port)", "\(gateway.sshd.user)@twin", "true"], environment: Self.environment)
        #expect(ambiguous.status == 255)
        #expect(ambiguous.stderr.contains("The name 'twin' is ambiguous: 2 instances carry it (i-0aaaaaaaaaaaaaaa1, i-0aaaaaaaaaaaaaaa2)"), "\(ambiguous.stderr)")
        let offline = try await run(ssh, gateway.jumpOptions() + ["-p", "\(gateway.sshd.port)", "\(gateway.sshd.user)@sleepy", "true"], environment: Self.environment)
        #expect(offline.status == 255)
        #expect(offline.stderr.contains("i-0aaaaaaaaaaaaaaa3 (sleepy) is ConnectionLost"), "\(offline.stderr)")
        let refusedLines = gateway.auditLines().filter { $0["event"] as? String == "refused" }
        #expect(refusedLines.contains { ($0["outcome"] as? String)?.hasPrefix("denied") == true && $0["user"] as? String == "bob" })
        #expect(refusedLines.contains { ($0["outcome"] as? String)?.hasPrefix("unknown_target") == true })
        #expect(refusedLines.contains { ($0["outcome"] as? String)?.hasPrefix("ambiguous_target") == true })
        #expect(refusedLines.contains { ($0["outcome"] as? String)?.hasPrefix("target_offline") == true })
    }

    @Test("A user with role_arn gets sessions of their own, started with AssumeRole as them (RoleSessionName and SourceIdentity); a role that cannot be assumed is refused with AWS's reason")
    func perUserRoles() async throws {
        let gateway = try await GatewayHarness.start { configuration, _ in
            configuration.users[2].roleARN = "arn:aws:iam::111122223333:role/ssmgate-users"  // carol
            configuration.users[1].roleARN = "arn:aws:iam::999999999999:role/elsewhere"  // bob: not the emulator's account
        }
        defer { gateway.close() }
        let ssh = try self.tool("ssh", package: "openssh-client")
        let curl = try self.tool("curl", package: "curl")
        for user in ["alice", "carol"] {
            let result = try await run(ssh, gateway.jumpOptions(as: user) + [gateway.destination, "echo as-\(user)"], environment: Self.environment)
            #expect(result.status == 0, "\(user): \(result.stderr)")
            #expect(result.stdout.contains("as-\(user)"))
        }
        let refused = try await run(ssh, gateway.jumpOptions(as: "bob") + [gateway.destination, "true"], environment: Self.environment)
        #expect(refused.status == 255)
        #expect(refused.stderr.contains("not authorized to perform: sts:AssumeRole"), "\(refused.stderr)")

        let closes = await gateway.closeLines(atLeast: 2)
        let sessions = Dictionary(closes.compactMap { line in (line["user"] as? String).map { ($0, line["session_id"] as? String ?? "") } }, uniquingKeysWith: { first, _ in first })
        // The gateway's own key starts alice's sessions; carol's are the role's, named after her.
        let carolSession = try #require(sessions["carol"])
        #expect(carolSession.hasPrefix("carol-"), "\(sessions)")
        #expect(sessions["alice"].map { !$0.hasPrefix("carol-") && !$0.isEmpty } == true, "\(sessions)")
        let emulator = try #require(gateway.server.bound.emulatorURL)
        let described = try await run(curl, ["-sS", "\(emulator)/admin/sessions/\(carolSession)"], environment: Self.environment)
        let session = try #require(try JSONSerialization.jsonObject(with: Data(described.stdout.utf8)) as? [String: Any], "\(described.stdout)")
        #expect(session["Owner"] as? String == "arn:aws:sts::111122223333:assumed-role/ssmgate-users/carol", "\(session)")
        #expect(session["SourceIdentity"] as? String == "carol", "\(session)")
        let bobLines = gateway.auditLines().filter { $0["user"] as? String == "bob" }
        #expect(bobLines.contains { ($0["outcome"] as? String)?.contains("AssumeRole") == true }, "\(bobLines)")
    }

    @Test("Plain `ssh gw` prints the help text with the reachable targets and exits 0")
    func helpText() async throws {
        let gateway = try await GatewayHarness.start()
        defer { gateway.close() }
        let ssh = try self.tool("ssh", package: "openssh-client")
        let result = try await run(ssh, ["-F", gateway.sshConfig, "gw-alice"], environment: Self.environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("jump host"))
        #expect(result.stdout.contains(GatewayHarness.instance))
    }
}

/// Remaining fronts end to end: SOCKS5, HTTP CONNECT, static forwards (psql), the daemon socket,
/// the pool under 50 parallel connections, and `ssmgate serve --local` as a process.
@Suite("Gateway fronts end to end", .serialized)
struct GatewayFrontsEndToEndTests {
    static let environment = ProcessInfo.processInfo.environment

    @Test("curl through SOCKS5 (hostname and Name tag) and HTTP CONNECT reaches a local HTTP server")
    func curlThroughProxies() async throws {
        guard let curl = findExecutable("curl"), let python = findExecutable("python3") else { throw ToolMissing(tool: "curl and python3") }
        let gateway = try await GatewayHarness.start()
        defer { gateway.close() }
        let webRoot = gateway.scratch.file("web")
        try FileManager.default.createDirectory(atPath: webRoot, withIntermediateDirectories: true)
        let digest = try writeRandomFile(webRoot + "/blob.bin", bytes: 3 << 20, seed: 3)
        let port = try await freePort()
        let web = try SpawnedDaemon(python, ["-m", "http.server", "--bind", "127.0.0.1", "--directory", webRoot, String(port)], logFile: gateway.scratch.file("web.log"))
        defer { web.stop() }
        #expect(await waitForPort(port, within: 15))
        let socks = gateway.server.bound.socks!
        let http = gateway.server.bound.http!
        for (label, arguments) in [
            ("socks5 id", ["--socks5-hostname", "127.0.0.1:\(socks)", "http://\(GatewayHarness.instance):\(port)/blob.bin"]),
            ("socks5 Name tag", ["--socks5-hostname", "127.0.0.1:\(socks)", "http://local:\(port)/blob.bin"]),
            ("socks5 .ssm suffix", ["--socks5-hostname", "127.0.0.1:\(socks)", "http://local.ssm:\(port)/blob.bin"]),
            ("http connect", ["-p", "--proxy", "http://127.0.0.1:\(http)", "http://\(GatewayHarness.instance):\(port)/blob.bin"]),
            ("http connect Name tag", ["-p", "--proxy", "http://127.0.0.1:\(http)", "http://local:\(port)/blob.bin"]),
        ] {
            let output = gateway.scratch.file("curl-\(label.replacingOccurrences(of: " ", with: "-")).bin")
            let result = try await run(curl, ["-sS", "--max-time", "60", "-o", output] + arguments, environment: Self.environment)
            #expect(result.status == 0, "\(label): \(result.stderr)")
            #expect(try sha256(ofFile: output) == digest, "\(label)")
        }
        let unknown = try await run(curl, ["-sS", "--max-time", "30", "--socks5-hostname", "127.0.0.1:\(socks)", "http://nowhere:\(port)/"], environment: Self.environment)
        #expect(unknown.status != 0)
        let closes = await gateway.closeLines(atLeast: 6).filter { $0["outcome"] as? String == "ok" }
        #expect(closes.filter { $0["front"] as? String == "socks5" }.count == 3)
        #expect(closes.filter { $0["front"] as? String == "http-connect" }.count == 2)
        #expect(closes.allSatisfy { ($0["bytes_to_client"] as? Int ?? 0) > 3 << 20 })
    }

    @Test("50 connections at once over one route share pooled sessions and all arrive intact")
    func fiftyConnectionsSharePool() async throws {
        let echo = try await EchoServer()
        let pooled = try await GatewayHarness.start { configuration, _ in
            configuration.forwards = [.init(listen: .init(host: "127.0.0.1", port: 0), target: "local", port: echo.port)]
        }
        defer {
            pooled.close()
            Task { await echo.close() }
        }
        let port = pooled.server.bound.forwards[0]
        let results = try await withThrowingTaskGroup(of: EchoResult.self) { group in
            for index in 0..<50 {
                group.addTask { try await echoThrough(port: port, bytes: 256 << 10, seed: UInt64(index)) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 50)
        #expect(results.allSatisfy { $0.received == $0.sent && $0.receivedSHA256 == $0.sentSHA256 })
        let metrics = try await pooled.metricsText()
        let streams = GatewayHarness.metric(metrics, "ssmgate_pooled_streams_total") ?? 0
        let sessions = GatewayHarness.metric(metrics, "ssmgate_sessions_started_total") ?? 0
        #expect(streams == 50, "\(metrics)")
        #expect(sessions >= 2 && sessions <= 8, "sessions started: \(sessions)")
        // Wait for the close lines (streams close as their echo finishes).
        var closes: [[String: Any]] = []
        for _ in 0..<300 {
            closes = pooled.auditLines().filter { $0["event"] as? String == "close" }
            if closes.count == 50 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(closes.count == 50)
        #expect(closes.allSatisfy { $0["bytes_from_client"] as? Int == 256 << 10 && $0["bytes_to_client"] as? Int == 256 << 10 })
        let used = Set(closes.compactMap { $0["session_id"] as? String }).count
        #expect(used >= 2 && used <= Int(sessions), "streams used \(used) of \(sessions) sessions")
    }

    @Test("Placement: a burst onto a warm route spreads two streams per session; connections past their EOF do not count as load")
    func placementSpreadsBurstsAndIgnoresLingeringStreams() async throws {
        let echo = try await EchoServer()
        let gateway = try await GatewayHarness.start { configuration, _ in
            configuration.forwards = [.init(listen: .init(host: "127.0.0.1", port: 0), target: "local", port: echo.port)]
            configuration.pool.linger = .seconds(8)  // longer than the sequential part below takes
        }
        defer {
            gateway.close()
            Task { await echo.close() }
        }
        let port = gateway.server.bound.forwards[0]

        // Sequential connections that send their EOF and then wait (as `ssh` does at the end of a
        // session): the gateway holds each stream open for the destination's answer, but none of
        // them is load, so one session carries them all and no other is started.
        var halfClosed: [any Channel] = []
        for _ in 0..<6 {
            halfClosed.append(try await PlacementProbe.connect(port: port, halfClose: true))
        }
        let afterSequential = try await gateway.metricsText()
        #expect(GatewayHarness.metric(afterSequential, "ssmgate_sessions_started_total") == 1, "\(afterSequential)")
        for channel in halfClosed { try? await channel.close() }
        _ = await gateway.closeLines(atLeast: 6)

        // 16 connections at once onto that warm, now idle session: it takes two, and the other
        // fourteen wait for the seven sessions the Pool starts, two each.
        let burst = try await withThrowingTaskGroup(of: (any Channel).self) { group in
            for _ in 0..<16 { group.addTask { try await PlacementProbe.connect(port: port, halfClose: false) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        for channel in burst { try? await channel.close() }
        let closes = await gateway.closeLines(atLeast: 22)
        #expect(closes.count == 22)
        let perSession = Dictionary(grouping: closes.dropFirst(6).compactMap { $0["session_id"] as? String }, by: { $0 }).mapValues(\.count)
        #expect(perSession.count == 8, "\(perSession)")
        #expect(perSession.values.allSatisfy { $0 <= 2 }, "\(perSession)")
    }

    @Test("An agent restart under a pooled session: the open stream gets a clean close, and later connections start a new session and arrive intact")
    func agentRestartUnderPooledSession() async throws {
        let setup = try await EchoForwardGateway.start()
        defer { setup.close() }
        let (gateway, curl, emulator, port) = (setup.gateway, setup.curl, setup.emulator, setup.port)
        let held = try await setup.connect()
        let endedInTime = try await held.executeThenClose { inbound, outbound in
            var replies = inbound.makeAsyncIterator()
            try await outbound.write(ByteBuffer(string: "x"))
            #expect(try await replies.next().map { String(buffer: $0) } == "x")
            let killed = try await run(curl, ["-sS", "-X", "POST", "-d", #"{"restartAfterMs": 1000}"#,
                                              "\(emulator)/admin/agents/\(GatewayHarness.instance)/kill"], environment: Self.environment)
            #expect(killed.status == 0 && killed.stdout.contains("restartAfterMs"), "\(killed.stdout)\(killed.stderr)")
            // The gateway ends the connection whose session died (the client reads its EOF): no
            // hang. Bounded here: past 30 s the test closes it itself.
            let watchdog = held.channel.eventLoop.scheduleTask(in: .seconds(30)) { held.channel.close(promise: nil) }
            defer { watchdog.cancel() }
            let killedAt = Date()
            while let extra = try? await replies.next() { #expect(extra.readableBytes == 0, "no bytes after the session died") }
            return Date().timeIntervalSince(killedAt) < 29
        }
        #expect(endedInTime, "the stream on the dead session was not ended within 30 s")
        let heldClose = try #require(await gateway.closeLines(atLeast: 1).first)
        #expect(heldClose["outcome"] as? String != "ok", "the record should name what ended it: \(heldClose)")

        // While the agent is away, StartSession fails (TargetNotConnected) and the connection is
        // refused; once it is back, a connection gets a new session and its bytes arrive intact.
        var result: EchoResult?
        let deadline = Date().addingTimeInterval(30)
        while result == nil, Date() < deadline {
            result = try? await echoThrough(port: port, bytes: 1 << 20, seed: 7)
            if result == nil { try await Task.sleep(for: .milliseconds(250)) }
        }
        let echoed = try #require(result, "no connection succeeded within 30 s of the agent's restart")
        #expect(echoed.received == echoed.sent && echoed.receivedSHA256 == echoed.sentSHA256)
        let closes = await gateway.closeLines(atLeast: 2)
        let last = try #require(closes.last)
        #expect(last["outcome"] as? String == "ok" && last["bytes_to_client"] as? Int == 1 << 20, "\(last)")
        #expect(last["session_id"] as? String != heldClose["session_id"] as? String, "\(closes)")
    }

    @Test(
        "The service drops a pooled session's WebSocket between transfers: the Pool's channel resumes it, the held connection and a new one echo intact on the same session",
        .timeLimit(.minutes(2)))
    func pooledSessionResumesAfterWebSocketDrop() async throws {
        let setup = try await EchoForwardGateway.start()
        defer { setup.close() }
        let (gateway, curl, emulator, port) = (setup.gateway, setup.curl, setup.emulator, setup.port)
        let held = try await setup.connect()
        let session = try await held.executeThenClose { inbound, outbound in
            var replies = inbound.makeAsyncIterator()
            try await outbound.write(ByteBuffer(string: "before"))
            #expect(try await replies.next().map { String(buffer: $0) } == "before")
            let session = try #require(gateway.auditLines().first { $0["event"] as? String == "open" }?["session_id"] as? String)
            let drop = try await run(curl, ["-sS", "-X", "POST", "-d", #"{"side": "client"}"#, "\(emulator)/admin/sessions/\(session)/drop"],
                                     environment: Self.environment)
            #expect(drop.status == 0 && drop.stdout.contains(#""dropped""#), "\(drop.stdout)\(drop.stderr)")
            // The same connection, after the drop: 1 MiB out and back, byte for byte.
            var sent = SHA256()
            var payload = ByteBuffer()
            for _ in 0..<(1 << 17) { payload.writeInteger(UInt64.random(in: .min ... .max)) }
            payload.withUnsafeReadableBytes { sent.update(bufferPointer: $0) }
            try await outbound.write(payload)
            var received = SHA256()
            var count = 0
            while count < payload.readableBytes, let chunk = try await replies.next() {
                count += chunk.readableBytes
                chunk.withUnsafeReadableBytes { received.update(bufferPointer: $0) }
            }
            #expect(count == payload.readableBytes && received.finalize() == sent.finalize())
            return session
        }
        let after = try await echoThrough(port: port, bytes: 4 << 20, seed: 12)
        #expect(after.received == 4 << 20 && after.receivedSHA256 == after.sentSHA256)
        let view = try await run(curl, ["-sS", "\(emulator)/admin/sessions/\(session)"], environment: Self.environment)
        #expect(view.stdout.contains(#""ClientConnections":2"#), "the client side reconnected once: \(view.stdout)")
        let closes = await gateway.closeLines(atLeast: 2)
        #expect(closes.allSatisfy { $0["outcome"] as? String == "ok" && $0["session_id"] as? String == session }, "\(closes)")
        #expect(closes.map { $0["bytes_to_client"] as? Int } == [6 + (1 << 20), 4 << 20] || closes.map { $0["bytes_to_client"] as? Int } == [4 << 20, 6 + (1 << 20)], "\(closes)")
        let metrics = try await gateway.metricsText()
        #expect(GatewayHarness.metric(metrics, "ssmgate_sessions_started_total") == 1, "both streams stayed on the one session: \(metrics)")
    }

    // A drop at full speed loses what the service had in flight to the gateway; the agent resends
    // only its oldest unacknowledged message, once per round-trip timeout, so how long recovery
    // takes depends on how much was lost. Either way the transfer must end: intact, or closed with
    // the reason (after the data channel's loss-recovery timeout, 30 s), never hung.
    @Test(
        "The service drops a pooled session's WebSocket mid-transfer: the echo completes intact or its stream is closed with the reason, never hangs; the next connection works",
        .timeLimit(.minutes(2)))
    func pooledSessionDropMidTransferNeverHangs() async throws {
        let setup = try await EchoForwardGateway.start()
        defer { setup.close() }
        let (gateway, curl, emulator, port) = (setup.gateway, setup.curl, setup.emulator, setup.port)
        let dropped = NIOLockedValueBox<CommandResult?>(nil)
        let transfer = Task {
            try await echoThrough(port: port, bytes: 16 << 20, seed: 11) { received in
                // Once, a quarter of the way in: the client side of the session's WebSocket goes.
                guard received > 4 << 20, dropped.withLockedValue({ $0 == nil }) else { return }
                dropped.withLockedValue { $0 = CommandResult(status: -1, stdout: "", stderr: "") }
                Thread.detachNewThread {  // off the client's event loop
                    let session = gateway.auditLines().first { $0["event"] as? String == "open" }?["session_id"] as? String ?? "?"
                    let result = try? runBlocking(curl, ["-sS", "-X", "POST", "-d", #"{"side": "client"}"#, "\(emulator)/admin/sessions/\(session)/drop"],
                                                  environment: Self.environment)
                    dropped.withLockedValue { $0 = result ?? CommandResult(status: -2, stdout: "", stderr: "curl did not run") }
                }
            }
        }
        let result = try await transfer.value
        for _ in 0..<100 where dropped.withLockedValue({ $0?.status ?? -1 }) == -1 { try await Task.sleep(for: .milliseconds(100)) }
        let drop = try #require(dropped.withLockedValue { $0 })
        #expect(drop.status == 0 && !drop.stdout.contains("Exception"), "\(drop.stdout)\(drop.stderr)")
        let first = try #require(await gateway.closeLines(atLeast: 1).first)
        if result.received == 16 << 20 {
            #expect(result.receivedSHA256 == result.sentSHA256)
            #expect(first["outcome"] as? String == "ok" && first["bytes_to_client"] as? Int == 16 << 20, "\(first)")
        } else {
            // What did arrive is a prefix, counted right, and the record says why it ended.
            #expect(first["bytes_to_client"] as? Int == result.received, "\(first)")
            #expect((first["outcome"] as? String)?.contains("lost in transit") == true, "\(first)")
        }
        let next = try await echoThrough(port: port, bytes: 1 << 20, seed: 13)
        #expect(next.received == 1 << 20 && next.receivedSHA256 == next.sentSHA256)
    }

    @Test("An agent too old for mux: each connection gets a basic-mode session of its own, ssh -J and three parallel echoes arrive intact")
    func basicModeAgentThroughTheGateway() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        let gateway = try await GatewayHarness.start { configuration, _ in
            configuration.localConfiguration?.instances[0].agentVersion = "3.0.196.0"
            configuration.forwards = [.init(listen: .init(host: "127.0.0.1", port: 0), target: "local", port: echo.port)]
        }
        defer { gateway.close() }
        let port = gateway.server.bound.forwards[0]
        let results = try await withThrowingTaskGroup(of: EchoResult.self) { group in
            for seed in 0..<3 { group.addTask { try await echoThrough(port: port, bytes: 256 << 10, seed: UInt64(30 + seed)) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.allSatisfy { $0.received == 256 << 10 && $0.receivedSHA256 == $0.sentSHA256 })
        guard let ssh = findExecutable("ssh") else { throw ToolMissing(tool: "openssh-client") }
        let jumped = try await run(ssh, gateway.jumpOptions() + [gateway.destination, "echo basic-$((6*7))"], environment: Self.environment)
        #expect(jumped.status == 0 && jumped.stdout.contains("basic-42"), "\(jumped.stderr)")
        let closes = await gateway.closeLines(atLeast: 4)
        #expect(closes.count == 4 && closes.allSatisfy { $0["outcome"] as? String == "ok" }, "\(closes)")
        let echoes = closes.filter { $0["port"] as? Int == echo.port }
        #expect(echoes.map { $0["bytes_to_client"] as? Int } == [256 << 10, 256 << 10, 256 << 10], "\(closes)")
        #expect(Set(closes.compactMap { $0["session_id"] as? String }).count == 4, "one session per connection: \(closes)")
        let metrics = try await gateway.metricsText()
        #expect(GatewayHarness.metric(metrics, "ssmgate_pooled_streams_total") == 0, "no connection rode a mux session: \(metrics)")
        // Dedicated sessions count too (the Pool may also have started one more before it knew the
        // agent's version; that one is ended unused).
        #expect((GatewayHarness.metric(metrics, "ssmgate_sessions_started_total") ?? 0) >= 4, "\(metrics)")
    }

    @Test("A pooled session nobody uses for pool.idle_seconds is terminated; the next connection starts a new one")
    func idlePooledSessionIsTerminated() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        let gateway = try await GatewayHarness.start { configuration, _ in
            configuration.pool.idleTimeout = .seconds(1)
            configuration.forwards = [.init(listen: .init(host: "127.0.0.1", port: 0), target: "local", port: echo.port)]
        }
        defer { gateway.close() }
        guard let curl = findExecutable("curl") else { throw ToolMissing(tool: "curl") }
        let emulator = try #require(gateway.server.bound.emulatorURL)
        let port = gateway.server.bound.forwards[0]
        let first = try await echoThrough(port: port, bytes: 64 << 10, seed: 51)
        #expect(first.received == 64 << 10 && first.receivedSHA256 == first.sentSHA256)
        let session = try #require(await gateway.closeLines(atLeast: 1).first?["session_id"] as? String)
        // The stream ended; one idle second later the Pool ends the session (bounded wait: 15 s).
        var pooled: Double? = nil
        for _ in 0..<150 {
            pooled = GatewayHarness.metric(try await gateway.metricsText(), "ssmgate_pooled_sessions")
            if pooled == 0 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(pooled == 0, "the idle session was not closed")
        var view = ""
        for _ in 0..<50 {
            view = try await run(curl, ["-sS", "\(emulator)/admin/sessions/\(session)"], environment: Self.environment).stdout
            if !view.contains("ClientConnections") { break }  // its relay is gone: terminated
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(view.contains(session) && !view.contains("ClientConnections"), "the service still relays it: \(view)")
        let second = try await echoThrough(port: port, bytes: 64 << 10, seed: 52)
        #expect(second.received == 64 << 10 && second.receivedSHA256 == second.sentSHA256)
        let closes = await gateway.closeLines(atLeast: 2)
        #expect(closes.count == 2 && closes[1]["session_id"] as? String != session, "\(closes)")
    }

    @Test("psql runs queries through a static forward and through AWS-StartPortForwardingSessionToRemoteHost")
    func psqlThroughForwards() async throws {
        let postgres = try await PostgresServer.start()
        defer { postgres.stop() }
        let gateway = try await GatewayHarness.start { configuration, _ in
            configuration.forwards = [
                .init(listen: .init(host: "127.0.0.1", port: 0), target: "local", port: postgres.port),
                .init(listen: .init(host: "127.0.0.1", port: 0), target: "local", remoteHost: "127.0.0.1", port: postgres.port),
            ]
        }
        defer { gateway.close() }
        guard let psql = findExecutable("psql") else { throw ToolMissing(tool: "postgresql-client") }
        for port in gateway.server.bound.forwards {
            let result = try await run(
                psql, ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", "postgres", "-At", "-c",
                       "create table if not exists t(x int); insert into t values (\(port)); select sum(x) > 0, count(*) >= 1 from t;"],
                environment: Self.environment.merging(["PGCONNECT_TIMEOUT": "30"]) { $1 })
            #expect(result.status == 0, "psql via \(port): \(result.stderr)")
            #expect(result.stdout.contains("t|t"), "\(result.stdout)")
        }
        let documents = Set(await gateway.closeLines(atLeast: 2).compactMap { $0["document"] as? String })
        #expect(documents == ["AWS-StartPortForwardingSession", "AWS-StartPortForwardingSessionToRemoteHost"])
    }

    @Test("`ssmgate proxy` as ProxyCommand uses the running daemon's pool through its socket")
    func proxyThroughDaemonSocket() async throws {
        let gateway = try await GatewayHarness.start()
        defer { gateway.close() }
        let ssmgate = try ssmgateExecutable()
        guard let ssh = findExecutable("ssh") else { throw ToolMissing(tool: "openssh-client") }
        var environment = Self.environment
        environment["SSMGATE_DAEMON_SOCKET"] = gateway.server.bound.daemonSocket!
        // No AWS settings at all: only the daemon can serve this.
        for name in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SSM", "AWS_ACCESS_KEY_ID"] { environment[name] = nil }
        let result = try await run(
            ssh, gateway.sshd.clientOptions(proxy: "\(ssmgate) proxy %h %p") + ["-p", "\(gateway.sshd.port)", gateway.destination, "echo via-daemon"],
            environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("via-daemon"))
        #expect(await gateway.closeLines(atLeast: 1).contains { $0["front"] as? String == "daemon" })
        let refused = try await run(
            ssh, gateway.sshd.clientOptions(proxy: "\(ssmgate) proxy %h %p") + ["-p", "\(gateway.sshd.port)", "\(gateway.sshd.user)@no-such-node", "true"],
            environment: environment)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("No managed node is called"), "\(refused.stderr)")
    }

    @Test("Where IAM allows only AWS-StartSSHSession, ssh -J falls back to it")
    func fallbackToSSHDocument() async throws {
        let gateway = try await GatewayHarness.start { configuration, _ in
            var local = configuration.localConfiguration!
            local.credentials = [.init(accessKeyID: "test", secretAccessKey: "test", allowedDocuments: ["AWS-StartSSHSession"])]
            configuration.localConfiguration = local
        }
        defer { gateway.close() }
        guard let ssh = findExecutable("ssh") else { throw ToolMissing(tool: "openssh-client") }
        for _ in 0..<2 {
            let result = try await run(ssh, gateway.jumpOptions() + [gateway.destination, "echo fallback"], environment: Self.environment)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.contains("fallback"), "\(gateway.auditLines())")
        }
        let closes = await gateway.closeLines(atLeast: 2)
        #expect(closes.count == 2)
        #expect(closes.allSatisfy { $0["document"] as? String == "AWS-StartSSHSession" })
    }

    @Test("`ssmgate serve --local` starts with the defaults' shape, takes the user's own key, and stops on SIGTERM")
    func serveLocalProcess() async throws {
        let ssmgate = try ssmgateExecutable()
        guard let ssh = findExecutable("ssh"), let keygen = findExecutable("ssh-keygen") else { throw ToolMissing(tool: "openssh-client") }
        let sshd = try await SSHServer.start()
        defer { sshd.stop() }
        let home = try ScratchDirectory("serve-home")
        defer { home.remove() }
        try FileManager.default.createDirectory(atPath: home.file(".ssh"), withIntermediateDirectories: true)
        _ = try await run(keygen, ["-q", "-t", "ed25519", "-N", "", "-f", home.file(".ssh/id_ed25519")], environment: Self.environment)
        let ports = try await (freePort(), freePort(), freePort(), freePort())
        var environment = Self.environment
        environment["HOME"] = home.path
        environment["SSMGATE_DAEMON_SOCKET"] = home.file("daemon.sock")
        let process = try BackgroundProcess(ssmgate, [
            "serve", "--local", "--limits", "unlimited", "--ssh-listen", "127.0.0.1:\(ports.0)", "--socks-listen", "127.0.0.1:\(ports.1)",
            "--http-listen", "127.0.0.1:\(ports.2)", "--metrics-listen", "127.0.0.1:\(ports.3)", "--audit-log", home.file("audit.jsonl"),
        ], environment: environment)
        defer { process.cleanUp() }
        #expect(await process.waitForOutput(containing: "SSH jump host", within: 60), "\(process.text)")
        #expect(process.text.contains("127.0.0.1:\(ports.1)") && process.text.contains("/metrics"))
        let config = try writeJumpConfig(home.file("ssh_config"), gatewayPort: ports.0, gatewayKey: home.file(".ssh/id_ed25519"), sshd: sshd)
        let result = try await run(ssh, ["-F", config, "-J", "gw", "-p", "\(sshd.port)", "\(sshd.user)@local", "echo served"], environment: Self.environment)
        #expect(result.status == 0, "\(result.stderr)\n\(process.text)")
        #expect(result.stdout.contains("served"))
        process.signalGroup(SIGTERM)
        let status = await process.waitForExit(within: 30)
        #expect(status == 0, "\(process.text)")
    }
}

/// The harness with one static forward to a local echo server, and what the fault tests use with it.
struct EchoForwardGateway {
    let gateway: GatewayHarness
    let echo: EchoServer
    /// The forward's port.
    let port: Int
    /// The embedded emulator's endpoint (its admin API).
    let emulator: String
    let curl: String

    static func start() async throws -> EchoForwardGateway {
        guard let curl = findExecutable("curl") else { throw ToolMissing(tool: "curl") }
        let echo = try await EchoServer()
        do {
            let gateway = try await GatewayHarness.start { configuration, _ in
                configuration.forwards = [.init(listen: .init(host: "127.0.0.1", port: 0), target: "local", port: echo.port)]
            }
            let emulator = try #require(gateway.server.bound.emulatorURL)
            return EchoForwardGateway(gateway: gateway, echo: echo, port: gateway.server.bound.forwards[0], emulator: emulator, curl: curl)
        } catch {
            await echo.close()
            throw error
        }
    }

    /// A connection through the forward, held by the test.
    func connect() async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: self.port) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
    }

    /// For `defer`.
    func close() {
        self.gateway.close()
        let echo = self.echo
        Task { await echo.close() }
    }
}

/// An ssh_config for a `serve` process: `gw` is the gateway (as `user`, or the login name), every
/// other host the test sshd. The client's own messages (a refusal's reason) stay at INFO.
func writeJumpConfig(_ path: String, gatewayPort: Int, gatewayKey: String, sshd: SSHServer, user: String? = nil) throws -> String {
    try """
        Host gw
          HostName 127.0.0.1
          Port \(gatewayPort)
          \(user.map { "User \($0)" } ?? "")
          IdentityFile \(gatewayKey)
        Host *
          IdentitiesOnly yes
          IdentityFile \(sshd.userKey)
          StrictHostKeyChecking no
          UserKnownHostsFile /dev/null
          BatchMode yes
        """.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

extension GatewayEndToEndTests {

    @Test("SIGHUP reloads users and rules from the file (flags still apply) without dropping open streams; a bad file keeps the running configuration")
    func serveReloadsOnSIGHUP() async throws {
        let ssmgate = try ssmgateExecutable()
        let ssh = try self.tool("ssh", package: "openssh-client")
        let keygen = try self.tool("ssh-keygen", package: "openssh-client")
        let sshd = try await SSHServer.start()
        defer { sshd.stop() }
        let echo = try await EchoServer()
        let home = try ScratchDirectory("reload-home")
        defer {
            home.remove()
            Task { await echo.close() }
        }
        _ = try await run(keygen, ["-q", "-t", "ed25519", "-N", "", "-f", home.file("alice")], environment: Self.environment)
        let aliceKey = try String(contentsOfFile: home.file("alice.pub"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let (sshPort, forwardPort) = try await (freePort(), freePort())
        let configFile = home.file("gateway.yaml")
        func writeConfiguration(allowedPorts: String, ruleKey: String = "allow") throws {
            // The held connection ends with a FIN; its stream lingers (the destination might still
            // answer) for linger_seconds, then ends with its own FIN.
            try """
                pool: {linger_seconds: 1}
                forwards:
                  - {listen: "127.0.0.1:\(forwardPort)", target: local, port: \(echo.port)}
                users:
                  alice:
                    keys: ["\(aliceKey)"]
                    \(ruleKey):
                      - {targets: ["*"], ports: [\(allowedPorts)]}
                  anonymous:
                    allow: [{targets: ["local"], ports: [\(echo.port)]}]
                """.write(toFile: configFile, atomically: true, encoding: .utf8)
        }
        try writeConfiguration(allowedPorts: "\(sshd.port)")
        var environment = Self.environment
        environment["SSMGATE_DAEMON_SOCKET"] = home.file("daemon.sock")
        let process = try BackgroundProcess(ssmgate, [
            "serve", "--local", "--limits", "unlimited", "--config", configFile, "--ssh-listen", "127.0.0.1:\(sshPort)",
            "--socks-listen", "off", "--http-listen", "off", "--metrics-listen", "off", "--audit-log", home.file("audit.jsonl"),
        ], environment: environment)
        defer { process.cleanUp() }
        #expect(await process.waitForOutput(containing: "SSH jump host", within: 60), "\(process.text)")
        let sshConfig = try writeJumpConfig(home.file("ssh_config"), gatewayPort: sshPort, gatewayKey: home.file("alice"), sshd: sshd, user: "alice")
        let jump = ["-F", sshConfig, "-J", "gw", "-p", "\(sshd.port)", "\(sshd.user)@local"]
        let allowed = try await run(ssh, jump + ["echo before"], environment: Self.environment)
        #expect(allowed.status == 0 && allowed.stdout.contains("before"), "\(allowed.stderr)\n\(process.text)")

        // One connection through the forward stays open across both reloads.
        let held = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: forwardPort) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
        try await held.executeThenClose { inbound, outbound in
            var replies = inbound.makeAsyncIterator()
            func roundTrip(_ text: String) async throws -> String {
                try await outbound.write(ByteBuffer(string: text))
                var answer = ""
                while answer.utf8.count < text.utf8.count, let chunk = try await replies.next() { answer += String(buffer: chunk) }
                return answer
            }
            #expect(try await roundTrip("ping one\n") == "ping one\n")

            // alice may now reach only ports 1-21: the new rule applies to the next connection.
            try writeConfiguration(allowedPorts: "\"1-21\"")
            process.signalGroup(SIGHUP)
            #expect(await process.waitForOutput(containing: "configuration reloaded", within: 20), "\(process.text)")
            #expect(!process.text.contains("listener addresses changed"), "the flags' listeners must not read as a change: \(process.text)")
            let denied = try await run(ssh, jump + ["echo after"], environment: Self.environment)
            #expect(denied.status == 255)
            #expect(denied.stderr.contains("Access denied"), "\(denied.stderr)")
            #expect(try await roundTrip("ping two\n") == "ping two\n")

            // A file with a mistake: the error names the key and line, and the running configuration stays.
            try writeConfiguration(allowedPorts: "\(sshd.port)", ruleKey: "allw")
            process.signalGroup(SIGHUP)
            #expect(await process.waitForOutput(containing: "configuration not reloaded", within: 20), "\(process.text)")
            #expect(process.text.contains("users.alice.allw"), "\(process.text)")
            let stillDenied = try await run(ssh, jump + ["echo after"], environment: Self.environment)
            #expect(stillDenied.status == 255 && stillDenied.stderr.contains("Access denied"), "\(stillDenied.stderr)")
            #expect(try await roundTrip("ping three\n") == "ping three\n")
        }
        func forwardCloses() -> (text: String, lines: [[String: Any]]) {
            let audit = (try? String(contentsOfFile: home.file("audit.jsonl"), encoding: .utf8)) ?? ""
            let lines = audit.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            return (audit, lines.filter { $0["event"] as? String == "close" && $0["front"] as? String == "forward" })
        }
        for _ in 0..<100 where forwardCloses().lines.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        let (audit, closes) = forwardCloses()
        #expect(closes.count == 1, "\(audit)")
        #expect(closes.first?["bytes_from_client"] as? Int == 29 && closes.first?["bytes_to_client"] as? Int == 29, "\(audit)")
        #expect(closes.first?["outcome"] as? String == "ok", "\(audit)")
        process.signalGroup(SIGTERM)
        #expect(await process.waitForExit(within: 30) == 0, "\(process.text)")
    }
}

/// A client for placement tests: sends one byte and waits for its echo (the stream is open and
/// placed), optionally sends its EOF right after the byte, and stays connected until closed.
final class PlacementProbe: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let echoed: EventLoopPromise<Void>
    let halfClose: Bool
    var settled = false

    init(echoed: EventLoopPromise<Void>, halfClose: Bool) {
        self.echoed = echoed
        self.halfClose = halfClose
    }

    static func connect(port: Int, halfClose: Bool) async throws -> any Channel {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let echoed = loop.makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PlacementProbe(echoed: echoed, halfClose: halfClose))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        do {
            try await echoed.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return channel
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: [0x2A])), promise: nil)
        if self.halfClose { context.close(mode: .output, promise: nil) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.settled, self.unwrapInboundIn(data).readableBytes > 0 else { return }
        self.settled = true
        self.echoed.succeed()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !self.settled {
            self.settled = true
            self.echoed.fail(ChannelError.eof)
        }
        context.fireChannelInactive()
    }
}
