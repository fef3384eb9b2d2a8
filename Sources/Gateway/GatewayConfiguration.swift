import Foundation
import LocalSSM
import NIOCore
import Yams

/// Everything `ssmgate serve` runs with: listeners, AWS settings or the embedded emulator, users
/// and their access, routes, forwards, pool sizes. Loaded from YAML; unknown keys and bad values
/// are errors that name the key and line.
public struct GatewayConfiguration: Sendable {
    public struct Listener: Sendable, Hashable {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    public struct Forward: Sendable, Hashable {
        public var listen: Listener
        public var target: String
        public var remoteHost: String?
        public var port: Int

        public init(listen: Listener, target: String, remoteHost: String? = nil, port: Int) {
            self.listen = listen
            self.target = target
            self.remoteHost = remoteHost
            self.port = port
        }
    }

    public var ssh: Listener? = Listener(host: "127.0.0.1", port: 2222)
    public var socks: Listener? = Listener(host: "127.0.0.1", port: 1080)
    public var http: Listener? = Listener(host: "127.0.0.1", port: 3128)
    public var metrics: Listener? = Listener(host: "127.0.0.1", port: 9464)
    /// The unix socket `ssmgate proxy` uses to reach this daemon's pool.
    public var daemonSocket: String? = GatewayConfiguration.defaultDaemonSocket()
    public var hostKeyDirectory = GatewayConfiguration.defaultStateDirectory() + "/host_keys"
    /// nil: standard error.
    public var auditLog: String?
    public var profile: String?
    public var region: String?
    public var endpointURL: String?
    /// Run the emulator in-process and use it (`--local`).
    public var local = false
    public var localLimits = "aws"
    /// The embedded emulator's own settings (instances, credentials); nil: its defaults.
    public var localConfiguration: LocalSSMConfiguration?
    public var router = Router.Configuration()
    public var forwards: [Forward] = []
    public var pool = PoolSettings()
    /// The account's session idle timeout (Session Manager preferences); idle pooled sessions close before it.
    public var sessionIdleTimeout: TimeAmount = .minutes(20)
    /// On SIGTERM: stop accepting, let streams finish for this long, then close them.
    public var drainTime: TimeAmount = .seconds(30)
    public var users: [GatewayUser] = []
    /// SOCKS5 / HTTP proxy: require a configured user's password (else connections are "anonymous").
    public var proxyAuthentication = false

    public init() {}

    /// Valid but probably not meant: printed at start and on reload. A forward's clients run as
    /// "anonymous" and only see a reset when refused, so a forward nobody may use is said here.
    public var warnings: [String] {
        guard !self.forwards.isEmpty, !self.users.contains(where: { $0.name == "anonymous" || $0.name == "*" }) else { return [] }
        return self.forwards.map { forward in
            let destination = "\(forward.remoteHost ?? forward.target):\(forward.port)"
            let pattern = forward.remoteHost.map { "host:\($0)" } ?? forward.target
            return "forward \(forward.listen.host):\(forward.listen.port) → \(destination): its connections run as user 'anonymous', "
                + "which has no rules, so every one will be refused; add under users: "
                + "anonymous: {allow: [{targets: [\"\(pattern)\"], ports: [\(forward.port)]}]}"
        }
    }

    /// `SSMGATE_DAEMON_SOCKET`, else `$XDG_RUNTIME_DIR/ssmgate.sock`, else `~/.ssmgate/daemon.sock`.
    public static func defaultDaemonSocket(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let explicit = environment["SSMGATE_DAEMON_SOCKET"], !explicit.isEmpty { return explicit }
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { return runtime + "/ssmgate.sock" }
        return defaultStateDirectory(environment: environment) + "/daemon.sock"
    }

    public static func defaultStateDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        (environment["HOME"] ?? NSHomeDirectory()) + "/.ssmgate"
    }

    /// The users of a first run: the running user's keys (~/.ssh/authorized_keys and ~/.ssh/*.pub),
    /// any login name, every target.
    public static func localUsers(home: String) -> [GatewayUser] {
        var keys = AuthorizedKey.load(file: home + "/.ssh/authorized_keys")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: home + "/.ssh")) ?? []
        for file in files.sorted() where file.hasSuffix(".pub") {
            keys += AuthorizedKey.load(file: home + "/.ssh/" + file)
        }
        var unique: [AuthorizedKey] = []
        for key in keys where !unique.contains(where: { $0.base64 == key.base64 }) { unique.append(key) }
        return [GatewayUser(name: "*", keys: unique, rules: [.everything])]
    }

    // MARK: YAML

    public static func load(file path: String) throws(ConfigurationError) -> GatewayConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(file: path, key: "", problem: "cannot be read (\(error.localizedDescription)); check the path given to --config")
        }
        return try self.parse(yaml: text, file: path)
    }

    public static func parse(yaml text: String, file: String = "<config>") throws(ConfigurationError) -> GatewayConfiguration {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationError(file: file, key: "", problem: "is not valid YAML: \(error)")
        }
        var config = GatewayConfiguration()
        guard let root else { return config }
        let reader = YAMLReader(file: file)
        let top = try reader.mapping(root, key: "")
        try reader.allowOnly([
            "listen", "aws", "local", "host_key_directory", "audit_log", "suffix", "name_cache_seconds", "aliases",
            "routes", "forwards", "pool", "session_idle_timeout_seconds", "drain_seconds", "users", "proxy_authentication",
        ], in: top, key: "")
        if let listen = top["listen"] {
            let entries = try reader.mapping(listen, key: "listen")
            try reader.allowOnly(["ssh", "socks", "http", "metrics", "daemon_socket"], in: entries, key: "listen")
            for (name, node) in entries {
                let key = "listen.\(name)"
                if name == "daemon_socket" {
                    config.daemonSocket = reader.isNull(node) || (try? reader.string(node, key: key)) == "off" ? nil : try reader.string(node, key: key)
                    continue
                }
                let listener = try Self.listener(reader, node, key: key)
                switch name {
                case "ssh": config.ssh = listener
                case "socks": config.socks = listener
                case "http": config.http = listener
                default: config.metrics = listener
                }
            }
        }
        if let aws = top["aws"] {
            let entries = try reader.mapping(aws, key: "aws")
            try reader.allowOnly(["profile", "region", "endpoint_url"], in: entries, key: "aws")
            config.profile = try entries["profile"].map { node throws(ConfigurationError) in try reader.string(node, key: "aws.profile") }
            config.region = try entries["region"].map { node throws(ConfigurationError) in try reader.string(node, key: "aws.region") }
            config.endpointURL = try entries["endpoint_url"].map { node throws(ConfigurationError) in try reader.string(node, key: "aws.endpoint_url") }
        }
        if let local = top["local"] {
            if case .mapping = local {
                let entries = try reader.mapping(local, key: "local")
                try reader.allowOnly(["limits"], in: entries, key: "local")
                config.local = true
                if let limits = entries["limits"] {
                    config.localLimits = try reader.string(limits, key: "local.limits")
                    guard LimitsProfile(named: config.localLimits) != nil else {
                        throw reader.error("local.limits", limits, "is '\(config.localLimits)'; expected aws or unlimited")
                    }
                }
            } else {
                let text = try reader.string(local, key: "local")
                guard let flag = Bool(text) else { throw reader.error("local", local, "is '\(text)'; expected true, false, or a mapping with limits") }
                config.local = flag
            }
        }
        if let node = top["host_key_directory"] { config.hostKeyDirectory = try reader.string(node, key: "host_key_directory") }
        if let node = top["audit_log"] {
            let value = try reader.string(node, key: "audit_log")
            config.auditLog = value == "stderr" || value == "-" ? nil : value
        }
        if let node = top["suffix"] {
            config.router.suffix = reader.isNull(node) ? nil : try reader.string(node, key: "suffix")
        }
        if let node = top["name_cache_seconds"] {
            config.router.cacheTTL = .seconds(Int64(try reader.integer(node, key: "name_cache_seconds", in: 0...86_400)))
        }
        if let node = top["aliases"] {
            for (name, value) in try reader.mapping(node, key: "aliases") {
                config.router.aliases[name] = try reader.string(value, key: "aliases.\(name)")
            }
        }
        if let node = top["routes"] {
            for (index, item) in try reader.sequence(node, key: "routes").enumerated() {
                let key = "routes[\(index)]"
                let entries = try reader.mapping(item, key: key)
                try reader.allowOnly(["match", "via"], in: entries, key: key)
                config.router.remoteHostRoutes.append(RemoteHostRoute(
                    pattern: try reader.requiredString(entries, "match", in: key), via: try reader.requiredString(entries, "via", in: key)))
            }
        }
        if let node = top["forwards"] {
            for (index, item) in try reader.sequence(node, key: "forwards").enumerated() {
                let key = "forwards[\(index)]"
                let entries = try reader.mapping(item, key: key)
                try reader.allowOnly(["listen", "target", "remote_host", "port"], in: entries, key: key)
                guard let listenNode = entries["listen"] else { throw ConfigurationError(file: file, key: "\(key).listen", problem: "is missing (e.g. 127.0.0.1:15432)") }
                guard let portNode = entries["port"] else { throw ConfigurationError(file: file, key: "\(key).port", problem: "is missing (the destination port)") }
                guard let listen = try Self.listener(reader, listenNode, key: "\(key).listen") else {
                    throw reader.error("\(key).listen", listenNode, "a forward needs an address to listen on (e.g. 127.0.0.1:15432)")
                }
                config.forwards.append(Forward(
                    listen: listen,
                    target: try reader.requiredString(entries, "target", in: key),
                    remoteHost: try entries["remote_host"].map { node throws(ConfigurationError) in try reader.string(node, key: "\(key).remote_host") },
                    port: try reader.integer(portNode, key: "\(key).port", in: 1...65535)))
            }
        }
        if let node = top["pool"] {
            let entries = try reader.mapping(node, key: "pool")
            try reader.allowOnly(["sessions_per_route", "total_sessions", "streams_per_session", "idle_seconds", "linger_seconds"], in: entries, key: "pool")
            if let n = entries["sessions_per_route"] { config.pool.sessionsPerRoute = try reader.integer(n, key: "pool.sessions_per_route", in: 1...64) }
            if let n = entries["total_sessions"] { config.pool.totalSessions = try reader.integer(n, key: "pool.total_sessions", in: 1...4096) }
            if let n = entries["streams_per_session"] { config.pool.streamsPerSession = try reader.integer(n, key: "pool.streams_per_session", in: 1...1024) }
            if let n = entries["idle_seconds"] { config.pool.idleTimeout = .seconds(Int64(try reader.integer(n, key: "pool.idle_seconds", in: 1...86_400))) }
            if let n = entries["linger_seconds"] { config.pool.linger = .seconds(Int64(try reader.integer(n, key: "pool.linger_seconds", in: 0...3600))) }
        }
        if let n = top["session_idle_timeout_seconds"] {
            config.sessionIdleTimeout = .seconds(Int64(try reader.integer(n, key: "session_idle_timeout_seconds", in: 60...3600)))
        }
        if let n = top["drain_seconds"] { config.drainTime = .seconds(Int64(try reader.integer(n, key: "drain_seconds", in: 0...3600))) }
        if let n = top["proxy_authentication"] {
            let text = try reader.string(n, key: "proxy_authentication")
            guard let flag = Bool(text) else { throw reader.error("proxy_authentication", n, "is '\(text)'; expected true or false") }
            config.proxyAuthentication = flag
        }
        if let node = top["users"] {
            config.users = try Self.users(reader, node)
        }
        return config
    }

    static func listener(_ reader: YAMLReader, _ node: Node, key: String) throws(ConfigurationError) -> Listener? {
        if reader.isNull(node) { return nil }
        let text = try reader.string(node, key: key)
        if text == "off" { return nil }
        guard let (host, port) = parseHostPort(text) else {
            throw reader.error(key, node, "is '\(text)'; expected HOST:PORT (e.g. 127.0.0.1:2222) or off")
        }
        return Listener(host: host, port: port)
    }

    static func users(_ reader: YAMLReader, _ node: Node) throws(ConfigurationError) -> [GatewayUser] {
        var users: [GatewayUser] = []
        for (name, value) in try reader.mapping(node, key: "users") {
            let key = "users.\(name)"
            let entries = try reader.mapping(value, key: key)
            try reader.allowOnly(["keys", "keys_file", "allow", "role_arn", "password_sha256"], in: entries, key: key)
            var keys: [AuthorizedKey] = []
            if let list = entries["keys"] {
                for item in try reader.sequence(list, key: "\(key).keys") {
                    let line = try reader.string(item, key: "\(key).keys")
                    guard let parsed = AuthorizedKey(line: line) else {
                        throw reader.error("\(key).keys", item, "is not a public key line (`ssh-ed25519 AAAA… comment`, as in authorized_keys)")
                    }
                    keys.append(parsed)
                }
            }
            if let fileNode = entries["keys_file"] {
                let path = (try reader.string(fileNode, key: "\(key).keys_file") as NSString).expandingTildeInPath
                guard FileManager.default.isReadableFile(atPath: path) else {
                    throw reader.error("\(key).keys_file", fileNode, "cannot read \(path)")
                }
                keys += AuthorizedKey.load(file: path)
            }
            var rules: [AccessRule] = []
            if let allow = entries["allow"] {
                for (index, item) in try reader.sequence(allow, key: "\(key).allow").enumerated() {
                    let ruleKey = "\(key).allow[\(index)]"
                    let rule = try reader.mapping(item, key: ruleKey)
                    try reader.allowOnly(["targets", "ports"], in: rule, key: ruleKey)
                    guard let targetsNode = rule["targets"] else { throw reader.error(ruleKey, item, "needs targets (e.g. [\"*\"] or [\"name:web-*\"])") }
                    var targets: [String] = []
                    for target in try reader.sequence(targetsNode, key: "\(ruleKey).targets") {
                        targets.append(try reader.string(target, key: "\(ruleKey).targets"))
                    }
                    var ports: [ClosedRange<Int>] = []
                    if let portsNode = rule["ports"] {
                        for port in try reader.sequence(portsNode, key: "\(ruleKey).ports") {
                            let text = try reader.string(port, key: "\(ruleKey).ports")
                            let bounds = text.split(separator: "-").map { Int($0.trimmingCharacters(in: .whitespaces)) }
                            guard (1...2).contains(bounds.count), let low = bounds.first!, let high = bounds.last!, 1 <= low, low <= high, high <= 65535 else {
                                throw reader.error("\(ruleKey).ports", port, "is '\(text)'; expected a port (22) or a range (8000-8100)")
                            }
                            ports.append(low...high)
                        }
                    }
                    rules.append(AccessRule(targets: targets, ports: ports))
                }
            }
            let role = try entries["role_arn"].map { node throws(ConfigurationError) in try reader.string(node, key: "\(key).role_arn") }
            if let role, !role.hasPrefix("arn:") {
                throw reader.error("\(key).role_arn", entries["role_arn"]!, "is '\(role)'; expected an IAM role ARN (arn:aws:iam::123456789012:role/name)")
            }
            let password = try entries["password_sha256"].map { node throws(ConfigurationError) in try reader.string(node, key: "\(key).password_sha256") }
            if let password, password.count != 64 || !password.allSatisfy(\.isHexDigit) {
                throw reader.error("\(key).password_sha256", entries["password_sha256"]!, "expected 64 hex digits (printf %s 'secret' | sha256sum)")
            }
            users.append(GatewayUser(name: name, keys: keys, rules: rules, roleARN: role, passwordSHA256: password))
        }
        return users
    }
}
