import AWSClient
import DataChannel
import Foundation
import Gateway
import LocalSSM
import NIOCore
import NIOPosix
import Synchronization
import TestSupport
import Testing

@Suite("Gateway configuration, routing and access rules")
struct GatewayUnitTests {
    @Test("The data channel's measurement settings from the environment: window follows the pacing; bad values are named")
    func dataChannelEnvironment() throws {
        let plain = try AWSContext.dataChannelConfiguration(environment: [:])
        #expect(plain.sendWindow == 512)
        #expect(plain.messagesPerSecond == 900)
        #expect(plain.maximumPayloadSize == 1024)
        let unpaced = try AWSContext.dataChannelConfiguration(environment: ["SSMGATE_MESSAGES_PER_SECOND": "unlimited"])
        #expect(unpaced.messagesPerSecond == nil)
        #expect(unpaced.sendWindow == DataChannelConfiguration.unpacedSendWindow)
        let chosen = try AWSContext.dataChannelConfiguration(environment: [
            "SSMGATE_MESSAGES_PER_SECOND": "unlimited", "SSMGATE_SEND_WINDOW": "300", "SSMGATE_PAYLOAD_SIZE": "4096",
        ])
        #expect(chosen.sendWindow == 300)
        #expect(chosen.maximumPayloadSize == 4096)
        #expect(try AWSContext.dataChannelConfiguration(environment: ["SSMGATE_MESSAGES_PER_SECOND": "500"]).messagesPerSecond == 500)
        for (name, value) in [("SSMGATE_SEND_WINDOW", "0"), ("SSMGATE_PAYLOAD_SIZE", "big"), ("SSMGATE_MESSAGES_PER_SECOND", "fast")] {
            let error = try #require(throws: AWSConfigurationError.self) { try AWSContext.dataChannelConfiguration(environment: [name: value]) }
            #expect(error.description.contains("\(name) is '\(value)'"), "\(error)")
        }
    }

    @Test("A full configuration parses; defaults fill the rest")
    func parsesConfiguration() throws {
        let yaml = """
            listen: {ssh: "0.0.0.0:2200", socks: off, http: "127.0.0.1:3129"}
            aws: {profile: gw, region: eu-west-1}
            audit_log: /tmp/audit.jsonl
            suffix: .aws
            aliases: {web: i-0123456789abcdef0}
            routes:
              - {match: "*.rds.amazonaws.com", via: web}
            forwards:
              - {listen: "127.0.0.1:15432", target: web, remote_host: db.rds.amazonaws.com, port: 5432}
            pool: {sessions_per_route: 4, streams_per_session: 3, idle_seconds: 60}
            users:
              alice:
                keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2bnMbhlnMPv3S8PlPxXNcObZrF8oYQzdJ8VLm3QkF8 alice@laptop"]
                role_arn: arn:aws:iam::123456789012:role/alice
                allow:
                  - {targets: ["name:web-*"], ports: [22, "8000-8100"]}
            """
        let configuration = try GatewayConfiguration.parse(yaml: yaml, file: "gw.yaml")
        #expect(configuration.ssh == .init(host: "0.0.0.0", port: 2200))
        #expect(configuration.socks == nil)
        #expect(configuration.http == .init(host: "127.0.0.1", port: 3129))
        #expect(configuration.metrics == .init(host: "127.0.0.1", port: 9464))
        #expect(configuration.profile == "gw" && configuration.region == "eu-west-1")
        #expect(configuration.router.suffix == ".aws")
        #expect(configuration.router.remoteHostRoutes == [RemoteHostRoute(pattern: "*.rds.amazonaws.com", via: "web")])
        #expect(configuration.forwards.first?.remoteHost == "db.rds.amazonaws.com")
        #expect(configuration.pool.sessionsPerRoute == 4 && configuration.pool.streamsPerSession == 3)
        let alice = try #require(configuration.users.first)
        #expect(alice.roleARN == "arn:aws:iam::123456789012:role/alice")
        #expect(alice.rules == [AccessRule(targets: ["name:web-*"], ports: [22...22, 8000...8100])])
    }

    @Test("The instance directory asks AWS once per TTL; past it the last answer serves while one refresh runs behind")
    func directoryRefreshesBehindStaleAnswers() async throws {
        try await withEmulator { emulator in
            let context = try AWSContext(profile: nil, region: nil, endpointURL: nil, environment: [
                "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_ENDPOINT_URL": emulator.server.endpointURL, "HOME": NSTemporaryDirectory(),
            ])
            let directory = InstanceDirectory(ssm: context.ssm, ec2: context.ec2)
            // Long enough that the second call lands inside it with every suite starting at once
            // (300 ms failed once in a clean-clone CI run: the task waited longer than that).
            let ttl = TimeAmount.seconds(3)
            let first = try await directory.node(id: LocalSSMConfiguration.defaultInstanceID, ttl: ttl)
            #expect(first?.pingStatus == "Online" && first?.name == "local" && first?.tags["Name"] == "local", "\(String(describing: first))")
            #expect(await directory.lastEC2Failure == nil)
            _ = try await directory.nodes(named: "local", ttl: ttl)
            #expect(await directory.refreshes == 1, "within the TTL the cached answer serves")
            try await Task.sleep(for: .milliseconds(3300))
            // Past the TTL: the answer comes at once from the last snapshot, and one refresh starts.
            let stale = try await directory.node(id: LocalSSMConfiguration.defaultInstanceID, ttl: ttl)
            _ = try await directory.allNodes(ttl: ttl)
            #expect(stale == first)
            #expect(await directory.refreshes == 2, "one refresh for every caller past the TTL")
            await context.shutdown()
        }
    }

    @Test("A forward that no rule lets anyone use is pointed out, with the rule to add")
    func warnsOfForwardsNobodyMayUse() throws {
        let forwards = """
            forwards:
              - {listen: "127.0.0.1:15432", target: web, remote_host: db.rds.amazonaws.com, port: 5432}
            """
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2bnMbhlnMPv3S8PlPxXNcObZrF8oYQzdJ8VLm3QkF8 alice@laptop"
        let onlyAlice = try GatewayConfiguration.parse(yaml: forwards + "\nusers:\n  alice:\n    keys: [\"\(key)\"]", file: "gw.yaml")
        #expect(onlyAlice.warnings == [
            "forward 127.0.0.1:15432 → db.rds.amazonaws.com:5432: its connections run as user 'anonymous', which has no rules, so every one will be refused; "
                + "add under users: anonymous: {allow: [{targets: [\"host:db.rds.amazonaws.com\"], ports: [5432]}]}",
        ])
        let withAnonymous = try GatewayConfiguration.parse(
            yaml: forwards + "\nusers:\n  anonymous:\n    allow: [{targets: [\"host:db.rds.amazonaws.com\"], ports: [5432]}]", file: "gw.yaml")
        #expect(withAnonymous.warnings.isEmpty)
        #expect(try GatewayConfiguration.parse(yaml: "users:\n  alice:\n    keys: [\"\(key)\"]", file: "gw.yaml").warnings.isEmpty)
    }

    @Test("Bad configuration names the file, line and key, and says what was expected", arguments: [
        ("listen: {ssh: nowhere}", "gw.yaml:1", "listen.ssh"),
        ("pool:\n  sessions_per_rout: 3", "gw.yaml:2", "pool.sessions_per_rout"),
        ("users:\n  bob:\n    keys: [\"not a key\"]", "gw.yaml:3", "users.bob.keys"),
        ("users:\n  bob:\n    allow:\n      - {targets: [\"*\"], ports: [\"9-2\"]}", "gw.yaml:4", "users.bob.allow[0].ports"),
        ("users:\n  bob:\n    role_arn: admin", "gw.yaml:3", "users.bob.role_arn"),
        ("tls: true", "gw.yaml:1", "tls"),
    ])
    func rejectsBadConfiguration(yaml: String, location: String, key: String) {
        #expect {
            _ = try GatewayConfiguration.parse(yaml: yaml, file: "gw.yaml")
        } throws: { error in
            guard let error = error as? ConfigurationError else { return false }
            return error.file == location && error.key == key && !error.problem.isEmpty
        }
    }

    @Test("Ids, aliases, the .ssm suffix and remote-host routes resolve without any AWS call")
    func routes() async throws {
        var configuration = Router.Configuration()
        configuration.aliases = ["web": "i-0123456789abcdef0", "db-bastion": "web"]
        configuration.remoteHostRoutes = [RemoteHostRoute(pattern: "*.rds.amazonaws.com", via: "db-bastion")]
        let router = Router(configuration: configuration, directory: InstanceDirectory(ssm: nil, ec2: nil))
        #expect(try await router.resolve(host: "mi-0123456789abcdef0").target.id == "mi-0123456789abcdef0")
        #expect(try await router.resolve(host: "web").target.id == "i-0123456789abcdef0")
        #expect(try await router.resolve(host: "web.ssm").target.id == "i-0123456789abcdef0")
        let remote = try await router.resolve(host: "prod.abc.eu-west-1.rds.amazonaws.com")
        #expect(remote.target.id == "i-0123456789abcdef0" && remote.remoteHost == "prod.abc.eu-west-1.rds.amazonaws.com")
        await #expect {
            _ = try await router.resolve(host: "nothing-here")
        } throws: { ($0 as? StreamOpenError)?.kind == .unknownTarget }
    }

    @Test("Access rules match ids, Name and tag globs, remote hosts and port ranges")
    func accessRules() {
        let web = TargetInfo(id: "i-0abc", name: "web-1", tags: ["Env": "dev"])
        let user = GatewayUser(name: "alice", keys: [], rules: [
            AccessRule(targets: ["name:web-*"], ports: [22...22]),
            AccessRule(targets: ["tag:Env=prod"]),
            AccessRule(targets: ["host:*.rds.amazonaws.com"], ports: [5432...5432]),
        ])
        #expect(user.allows(web, remoteHost: nil, typedHost: "web-1", port: 22))
        #expect(!user.allows(web, remoteHost: nil, typedHost: "web-1", port: 80))
        #expect(user.allows(TargetInfo(id: "i-9", tags: ["Env": "prod"]), remoteHost: nil, typedHost: "i-9", port: 80))
        #expect(user.allows(web, remoteHost: "db.rds.amazonaws.com", typedHost: "db.rds.amazonaws.com", port: 5432))
        #expect(!user.allows(TargetInfo(id: "i-9"), remoteHost: "db.internal", typedHost: "db.internal", port: 5432))
        #expect(Glob.matches("i-0*", "i-0123") && !Glob.matches("i-0?", "i-012") && Glob.matches("*", ""))
    }

    @Test("Key fingerprints match ssh-keygen -l")
    func fingerprints() async throws {
        guard let keygen = findExecutable("ssh-keygen") else { throw ToolMissing(tool: "openssh-client") }
        let scratch = try ScratchDirectory("fingerprint")
        defer { scratch.remove() }
        for type in ["ed25519", "ecdsa", "rsa"] {
            let file = scratch.file("key-\(type)")
            _ = try await run(keygen, ["-q", "-t", type, "-N", "", "-f", file], environment: ProcessInfo.processInfo.environment)
            let listed = try await run(keygen, ["-l", "-f", file + ".pub"], environment: ProcessInfo.processInfo.environment)
            let expected = listed.stdout.split(separator: " ")[1]
            let key = try #require(AuthorizedKey.load(file: file + ".pub").first)
            #expect(key.fingerprint == String(expected))
        }
    }

    @Test("The daemon socket is bound owner-only without touching the process umask, and never over a file that is not a socket")
    func daemonSocketLeavesTheUmaskAlone() async throws {
        let scratch = try ScratchDirectory("daemon-umask")
        defer { scratch.remove() }
        @Sendable func umaskNow() -> String? {
            // From /proc: reading it through umask(2) would change it.
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("Umask:") }.map(String.init)
        }
        let original = try #require(umaskNow())
        // Another thread watches the umask all through the binds (the old code set it across an await).
        let seen = Mutex<Set<String>>([])
        let stop = Atomic(false)
        let watcher = Thread {
            while !stop.load(ordering: .relaxed) {
                if let value = umaskNow() { seen.withLock { _ = $0.insert(value) } }
            }
        }
        watcher.start()
        // A new path each time: a child another test spawns meanwhile may briefly hold the last listener.
        for index in 0..<20 {
            let path = scratch.file("run/daemon-\(index).sock")
            let front = DaemonSocketFront(services: LoopbackServices(), path: path, user: "tester", group: MultiThreadedEventLoopGroup.singleton)
            let channel = try await front.bind()
            var info = stat()
            #expect(lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK && info.st_mode & 0o777 == 0o600)
            #expect(DaemonSocketClient.isAlive(path: path))
            try await channel.close()
        }
        stop.store(true, ordering: .relaxed)
        while !watcher.isFinished { try await Task.sleep(for: .milliseconds(5)) }
        #expect(seen.withLock { $0 } == [original])
        // Only the sockets are left in their directory (no temporary name).
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: scratch.file("run"))) == Set((0..<20).map { "daemon-\($0).sock" }))

        // A regular file at the path is not replaced.
        let file = scratch.file("not-a-socket")
        #expect(FileManager.default.createFile(atPath: file, contents: Data("keep me".utf8)))
        let front = DaemonSocketFront(services: LoopbackServices(), path: file, user: "tester", group: MultiThreadedEventLoopGroup.singleton)
        let error = await #expect(throws: DaemonSocketError.self) { try await front.bind() }
        #expect(error?.description.contains("is not a socket") == true)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me")
    }
}
