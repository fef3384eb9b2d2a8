import Foundation
import Yams

/// Everything the emulator serves: where it listens, whose keys it accepts, and which instances exist.
///
/// With no file the defaults are what tests and first-time users rely on: `127.0.0.1:4587`,
/// `us-east-1`, access key `test`/`test`, and one online instance `i-0123456789abcdef0`
/// named `local` whose agent reaches this machine.
public struct LocalSSMConfiguration: Sendable, Equatable {
    public var listenHost: String
    public var listenPort: Int
    public var region: String
    public var accountID: String
    public var credentials: [Credential]
    public var instances: [Instance]
    public var limits: LimitsProfile
    /// The file's own limit figures, already applied to `limits`; kept so `--limits` can re-apply them.
    public var limitsOverrides = LimitsOverrides()
    /// Faults in force from the start; the admin endpoint changes them at run time.
    public var faults = FaultConfiguration()

    public struct Credential: Sendable, Equatable {
        public var accessKeyID: String
        public var secretAccessKey: String
        /// IAM-style user name shown in session ids and AccessDenied messages.
        public var userName: String
        /// Documents StartSession may use with this key; nil allows all.
        public var allowedDocuments: [String]?
        /// Temporary credentials (from AssumeRole) carry a session token that every request must present.
        public var sessionToken: String?
        /// Who the key acts as in session owners; nil means the IAM user `userName`.
        public var principalARN: String?
        /// The SourceIdentity an AssumeRole set, which AWS stamps on every CloudTrail event of the session.
        public var sourceIdentity: String?

        public init(
            accessKeyID: String, secretAccessKey: String, userName: String? = nil, allowedDocuments: [String]? = nil,
            sessionToken: String? = nil, principalARN: String? = nil, sourceIdentity: String? = nil
        ) {
            self.accessKeyID = accessKeyID
            self.secretAccessKey = secretAccessKey
            self.userName = userName ?? accessKeyID
            self.allowedDocuments = allowedDocuments
            self.sessionToken = sessionToken
            self.principalARN = principalARN
            self.sourceIdentity = sourceIdentity
        }
    }

    public struct Instance: Sendable, Equatable {
        public enum PingStatus: String, Sendable, Equatable, CaseIterable {
            case online = "Online"
            case connectionLost = "ConnectionLost"
            case inactive = "Inactive"
        }

        public var id: String
        public var tags: [String: String]
        public var platformType: String
        public var platformName: String
        public var platformVersion: String
        public var pingStatus: PingStatus
        public var agentVersion: String
        /// Where the agent's `localhost` points; the destination of port sessions without a host.
        public var localhostAddress: String
        public var ipAddress: String

        public var name: String? { self.tags["Name"] }
        public var isManagedInstance: Bool { self.id.hasPrefix("mi-") }

        public init(
            id: String, tags: [String: String] = [:], platformType: String = "Linux", platformName: String = "Debian GNU/Linux",
            platformVersion: String = "12", pingStatus: PingStatus = .online, agentVersion: String = LocalSSMConfiguration.currentAgentVersion,
            localhostAddress: String = "127.0.0.1", ipAddress: String = "127.0.0.1"
        ) {
            self.id = id
            self.tags = tags
            self.platformType = platformType
            self.platformName = platformName
            self.platformVersion = platformVersion
            self.pingStatus = pingStatus
            self.agentVersion = agentVersion
            self.localhostAddress = localhostAddress
            self.ipAddress = ipAddress
        }
    }

    /// The agent release the default instance reports: mux-capable, smux keepalive off for current clients.
    public static let currentAgentVersion = "3.3.987.0"
    public static let defaultInstanceID = "i-0123456789abcdef0"

    public init(
        listenHost: String = "127.0.0.1", listenPort: Int = 4587, region: String = "us-east-1", accountID: String = "111122223333",
        credentials: [Credential] = [Credential(accessKeyID: "test", secretAccessKey: "test")],
        instances: [Instance] = [Instance(id: LocalSSMConfiguration.defaultInstanceID, tags: ["Name": "local"])],
        limits: LimitsProfile = .aws, faults: FaultConfiguration = FaultConfiguration()
    ) {
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.region = region
        self.accountID = accountID
        self.credentials = credentials
        self.instances = instances
        self.limits = limits
        self.faults = faults
    }

    public func instance(_ id: String) -> Instance? { self.instances.first { $0.id == id } }
    public func credential(_ accessKeyID: String) -> Credential? { self.credentials.first { $0.accessKeyID == accessKeyID } }
}

/// A configuration file that could not be used: says which file, which key and what was expected.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var key: String
    public var problem: String

    public init(file: String, key: String, problem: String) {
        self.file = file
        self.key = key
        self.problem = problem
    }

    public var description: String { "\(self.file): \(self.key.isEmpty ? "" : "'\(self.key)': ")\(self.problem)" }
}

extension LocalSSMConfiguration {
    /// Reads a YAML file. Unknown keys are errors, so a typo never silently falls back to a default.
    public static func load(file path: String) throws(ConfigurationError) -> LocalSSMConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(file: path, key: "", problem: "cannot be read (\(error.localizedDescription))")
        }
        return try self.parse(yaml: text, file: path)
    }

    public static func parse(yaml text: String, file: String = "<config>") throws(ConfigurationError) -> LocalSSMConfiguration {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationError(file: file, key: "", problem: "is not valid YAML: \(error)")
        }
        var config = LocalSSMConfiguration()
        guard let root else { return config }
        let reader = YAMLReader(file: file)
        let top = try reader.mapping(root, key: "")
        try reader.allowOnly(["listen", "region", "account", "credentials", "instances", "limits", "faults"], in: top, key: "")
        if let listen = top["listen"] {
            let value = try reader.string(listen, key: "listen")
            guard let (host, port) = parseHostPort(value) else {
                throw reader.error("listen", listen, "is '\(value)'; expected HOST:PORT, e.g. 127.0.0.1:4587")
            }
            config.listenHost = host
            config.listenPort = port
        }
        if let region = top["region"] { config.region = try reader.string(region, key: "region") }
        if let account = top["account"] { config.accountID = try reader.string(account, key: "account") }
        if let limits = top["limits"] {
            (config.limits, config.limitsOverrides) = try Self.readLimits(limits, reader: reader)
        }
        if let faults = top["faults"] {
            config.faults = try FaultConfiguration.read(faults, key: "faults", reader: reader)
        }
        if let credentials = top["credentials"] {
            config.credentials = []
            for (index, item) in try reader.sequence(credentials, key: "credentials").enumerated() {
                let key = "credentials[\(index)]"
                let entry = try reader.mapping(item, key: key)
                try reader.allowOnly(["accessKeyId", "secretAccessKey", "userName", "allowedDocuments"], in: entry, key: key)
                config.credentials.append(Credential(
                    accessKeyID: try reader.requiredString(entry, "accessKeyId", in: key),
                    secretAccessKey: try reader.requiredString(entry, "secretAccessKey", in: key),
                    userName: try entry["userName"].map { node throws(ConfigurationError) in try reader.string(node, key: "\(key).userName") },
                    allowedDocuments: try entry["allowedDocuments"].map { node throws(ConfigurationError) in
                        try reader.sequence(node, key: "\(key).allowedDocuments").map { item throws(ConfigurationError) in
                            try reader.string(item, key: "\(key).allowedDocuments")
                        }
                    }
                ))
            }
        }
        if let instances = top["instances"] {
            config.instances = []
            for (index, item) in try reader.sequence(instances, key: "instances").enumerated() {
                let key = "instances[\(index)]"
                let entry = try reader.mapping(item, key: key)
                try reader.allowOnly(
                    ["id", "name", "tags", "platformType", "platformName", "platformVersion", "pingStatus", "agentVersion", "localhost", "ipAddress"],
                    in: entry, key: key)
                let id = try reader.requiredString(entry, "id", in: key)
                guard id.range(of: #"^(i-[0-9a-f]{8}([0-9a-f]{9})?|mi-[0-9a-f]{17})$"#, options: .regularExpression) != nil else {
                    throw reader.error("\(key).id", entry["id"]!, "is '\(id)'; expected an EC2 id (i- and 8 or 17 hex digits) or a managed-instance id (mi- and 17 hex digits)")
                }
                var instance = Instance(id: id)
                if let tags = entry["tags"] {
                    for (name, value) in try reader.mapping(tags, key: "\(key).tags") {
                        instance.tags[name] = try reader.string(value, key: "\(key).tags.\(name)")
                    }
                }
                if let name = entry["name"] { instance.tags["Name"] = try reader.string(name, key: "\(key).name") }
                if let value = entry["platformType"] { instance.platformType = try reader.string(value, key: "\(key).platformType") }
                if let value = entry["platformName"] { instance.platformName = try reader.string(value, key: "\(key).platformName") }
                if let value = entry["platformVersion"] { instance.platformVersion = try reader.string(value, key: "\(key).platformVersion") }
                if let value = entry["agentVersion"] { instance.agentVersion = try reader.string(value, key: "\(key).agentVersion") }
                if let value = entry["localhost"] { instance.localhostAddress = try reader.string(value, key: "\(key).localhost") }
                if let value = entry["ipAddress"] { instance.ipAddress = try reader.string(value, key: "\(key).ipAddress") }
                if let value = entry["pingStatus"] {
                    instance.pingStatus = try reader.choice(value, key: "\(key).pingStatus", as: Instance.PingStatus.self)
                }
                guard !config.instances.contains(where: { $0.id == id }) else {
                    throw reader.error("\(key).id", entry["id"]!, "'\(id)' is listed twice")
                }
                config.instances.append(instance)
            }
        }
        return config
    }
}

extension LocalSSMConfiguration {
    /// `limits: aws`, or a mapping: `profile` and the figures to set over it.
    static func readLimits(_ node: Node, reader: YAMLReader) throws(ConfigurationError) -> (LimitsProfile, LimitsOverrides) {
        func profile(_ node: Node, key: String) throws(ConfigurationError) -> LimitsProfile {
            let value = try reader.string(node, key: key)
            guard let profile = LimitsProfile(named: value) else { throw reader.error(key, node, "is '\(value)'; expected aws or unlimited") }
            return profile
        }
        if case .scalar = node { return (try profile(node, key: "limits"), LimitsOverrides()) }
        let entries = try reader.mapping(node, key: "limits")
        try reader.allowOnly(
            ["profile", "idleTimeoutSeconds", "webSocketLifetimeSeconds", "startSessionDelayMs", "webSocketOpenDelayMs", "agentStartDelayMs"],
            in: entries, key: "limits")
        var overrides = LimitsOverrides()
        if let value = entries["idleTimeoutSeconds"] {
            overrides.idleTimeoutSeconds = try reader.integer(value, key: "limits.idleTimeoutSeconds", in: 1...86_400)
        }
        if let value = entries["webSocketLifetimeSeconds"] {
            if case .scalar(let scalar) = value, scalar.string == "never" {
                overrides.webSocketLifetimeSeconds = .some(nil)
            } else {
                overrides.webSocketLifetimeSeconds = try reader.integer(value, key: "limits.webSocketLifetimeSeconds", in: 1...86_400)
            }
        }
        if let value = entries["startSessionDelayMs"] {
            overrides.startSessionDelayMilliseconds = try reader.integer(value, key: "limits.startSessionDelayMs", in: 0...60_000)
        }
        if let value = entries["webSocketOpenDelayMs"] {
            overrides.webSocketOpenDelayMilliseconds = try reader.integer(value, key: "limits.webSocketOpenDelayMs", in: 0...60_000)
        }
        if let value = entries["agentStartDelayMs"] {
            overrides.agentStartDelayMilliseconds = try reader.integer(value, key: "limits.agentStartDelayMs", in: 0...60_000)
        }
        let base = try entries["profile"].map { node throws(ConfigurationError) in try profile(node, key: "limits.profile") } ?? .aws
        return (base.applying(overrides), overrides)
    }
}

/// `host:port`, `[v6]:port`; nil when malformed.
public func parseHostPort(_ text: String) -> (String, Int)? {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
        return nil
    }
    var host = String(text[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    guard !host.isEmpty else { return nil }
    return (host, port)
}

/// Typed access to a composed YAML tree, with errors that carry the file, key and line.
public struct YAMLReader: Sendable {
    public init(file: String) { self.file = file }

    public let file: String

    public func error(_ key: String, _ node: Node, _ problem: String) -> ConfigurationError {
        ConfigurationError(file: "\(self.file):\(node.mark?.line ?? 0)", key: key, problem: problem)
    }

    public func mapping(_ node: Node, key: String) throws(ConfigurationError) -> [(String, Node)] {
        guard case .mapping(let mapping) = node else { throw self.error(key, node, "expected a mapping (key: value lines)") }
        var result: [(String, Node)] = []
        for (name, value) in mapping {
            guard let text = name.string else { throw self.error(key, name, "keys must be strings") }
            result.append((text, value))
        }
        return result
    }

    public func sequence(_ node: Node, key: String) throws(ConfigurationError) -> [Node] {
        guard case .sequence(let sequence) = node else { throw self.error(key, node, "expected a list (lines starting with '-')") }
        return Array(sequence)
    }

    public func string(_ node: Node, key: String) throws(ConfigurationError) -> String {
        guard case .scalar(let scalar) = node else { throw self.error(key, node, "expected a single value") }
        return scalar.string
    }

    /// `null`, `~` or nothing: "not set" (JSON bodies of the admin endpoint use `null`).
    public func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node else { return false }
        return ["null", "~", ""].contains(scalar.string)
    }

    /// One of an enumeration's raw values; the error lists them all.
    public func choice<T: RawRepresentable & CaseIterable>(_ node: Node, key: String, as: T.Type) throws(ConfigurationError) -> T
    where T.RawValue == String {
        let text = try self.string(node, key: key)
        guard let value = T(rawValue: text) else {
            let names = T.allCases.map(\.rawValue)
            let list = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names.last! : names.joined()
            throw self.error(key, node, "is '\(text)'; expected \(list)")
        }
        return value
    }

    public func integer(_ node: Node, key: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        let text = try self.string(node, key: key)
        guard let value = Int(text), range.contains(value) else {
            throw self.error(key, node, "is '\(text)'; expected a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    /// A fraction of frames: 0 to 1 (`0.01` is one frame in a hundred).
    public func fraction(_ node: Node, key: String) throws(ConfigurationError) -> Double {
        let text = try self.string(node, key: key)
        guard let value = Double(text), value >= 0, value <= 1 else {
            throw self.error(key, node, "is '\(text)'; expected a fraction from 0 to 1, e.g. 0.01")
        }
        return value
    }

    public func requiredString(_ mapping: [(String, Node)], _ name: String, in key: String) throws(ConfigurationError) -> String {
        guard let node = mapping[name] else {
            throw ConfigurationError(file: self.file, key: "\(key).\(name)", problem: "is missing")
        }
        return try self.string(node, key: "\(key).\(name)")
    }

    public func allowOnly(_ names: Set<String>, in mapping: [(String, Node)], key: String) throws(ConfigurationError) {
        for (name, node) in mapping where !names.contains(name) {
            let path = key.isEmpty ? name : "\(key).\(name)"
            throw self.error(path, node, "unknown key; expected one of \(names.sorted().joined(separator: ", "))")
        }
    }
}

extension Array where Element == (String, Node) {
    public subscript(name: String) -> Node? { self.first { $0.0 == name }?.1 }
}
