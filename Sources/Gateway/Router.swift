import AWSClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Where one connection goes: the managed node, the document that reaches the destination from it,
/// and the destination itself. Connections with equal routes share pooled sessions.
public struct Route: Sendable, Hashable, CustomStringConvertible {
    public var target: String
    /// The destination as the agent connects to it: nil is the instance itself (localhost).
    public var remoteHost: String?
    public var port: Int
    /// The IAM role the user's sessions run as (nil: the gateway's own credentials).
    public var roleARN: String?

    public init(target: String, remoteHost: String? = nil, port: Int, roleARN: String? = nil) {
        self.target = target
        self.remoteHost = remoteHost
        self.port = port
        self.roleARN = roleARN
    }

    /// The mux-capable document for this route.
    public var document: String {
        self.remoteHost == nil ? "AWS-StartPortForwardingSession" : "AWS-StartPortForwardingSessionToRemoteHost"
    }

    public var parameters: [String: [String]] {
        var parameters = ["portNumber": [String(self.port)], "localPortNumber": ["0"]]
        if let remoteHost = self.remoteHost { parameters["host"] = [remoteHost] }
        return parameters
    }

    public var description: String { "\(self.target)\(self.remoteHost.map { " → \($0)" } ?? ""):\(self.port)" }
}

/// `*.rds.amazonaws.com via i-0123…`: destinations reached through an instance with
/// AWS-StartPortForwardingSessionToRemoteHost.
public struct RemoteHostRoute: Sendable, Hashable {
    public var pattern: String
    public var via: String

    public init(pattern: String, via: String) {
        self.pattern = pattern
        self.via = via
    }
}

/// What the Router knows about a managed node, for access rules and the help text.
public struct TargetInfo: Sendable, Hashable {
    public var id: String
    public var name: String?
    public var tags: [String: String]
    public var pingStatus: String?
    public var agentVersion: String?

    public init(id: String, name: String? = nil, tags: [String: String] = [:], pingStatus: String? = nil, agentVersion: String? = nil) {
        self.id = id
        self.name = name
        self.tags = tags
        self.pingStatus = pingStatus
        self.agentVersion = agentVersion
    }
}

/// The result of resolving a host name: the node, and the remote host when the name is a route.
public struct Resolution: Sendable, Hashable {
    public var target: TargetInfo
    public var remoteHost: String?
}

/// Turns host names into managed nodes: instance ids (`i-*`, `mi-*`), configured aliases,
/// remote-host routes, and Name tags (EC2 DescribeInstances and SSM DescribeInstanceInformation,
/// cached for `cacheTTL`). A `.ssm` suffix (configurable) is stripped first, so `web.ssm` works in
/// ssh configs that match on it.
public final class Router: Sendable {
    public struct Configuration: Sendable {
        public var aliases: [String: String] = [:]
        public var remoteHostRoutes: [RemoteHostRoute] = []
        public var suffix: String? = ".ssm"
        public var cacheTTL: TimeAmount = .seconds(60)

        public init() {}
    }

    let configuration: NIOLockedValueBox<Configuration>
    let directory: InstanceDirectory

    public init(configuration: Configuration, directory: InstanceDirectory) {
        self.configuration = NIOLockedValueBox(configuration)
        self.directory = directory
    }

    /// Takes a reloaded configuration; cached lookups stay.
    public func update(_ configuration: Configuration) {
        self.configuration.withLockedValue { $0 = configuration }
    }

    public func resolve(host rawHost: String) async throws(StreamOpenError) -> Resolution {
        let configuration = self.configuration.withLockedValue { $0 }
        var host = rawHost.lowercased().hasSuffix(".") ? String(rawHost.dropLast()) : rawHost
        if let suffix = configuration.suffix, host.lowercased().hasSuffix(suffix.lowercased()), host.count > suffix.count {
            host = String(host.dropLast(suffix.count))
        }
        if let route = configuration.remoteHostRoutes.first(where: { Glob.matches($0.pattern, host.lowercased()) }) {
            let via = try await self.node(route.via, configuration: configuration, asked: rawHost)
            return Resolution(target: via, remoteHost: host)
        }
        return Resolution(target: try await self.node(host, configuration: configuration, asked: rawHost), remoteHost: nil)
    }

    func node(_ name: String, configuration: Configuration, asked: String) async throws(StreamOpenError) -> TargetInfo {
        let id: String
        if TargetResolver.isInstanceID(name) {
            id = name
        } else if let alias = configuration.aliases[name] {
            guard TargetResolver.isInstanceID(alias) else { return try await self.node(alias, configuration: configuration, asked: asked) }
            id = alias
        } else {
            let matches: [TargetInfo]
            do {
                matches = try await self.directory.nodes(named: name, ttl: configuration.cacheTTL)
            } catch {
                throw StreamOpenError(.sessionFailed, "Cannot look up the Name tag '\(name)': \(error)")
            }
            switch matches.count {
            case 0:
                let hint = await self.directory.lastEC2Failure.map { " (EC2 DescribeInstances failed, so EC2 Name tags are unknown: \($0))" } ?? ""
                throw StreamOpenError(.unknownTarget,
                    "No managed node is called '\(asked)': use an instance id (i-…/mi-…), a configured alias, or a Name tag of a running instance.\(hint)")
            case 1:
                return try Self.checkOnline(matches[0], asked: asked)
            default:
                let ids = matches.map(\.id).sorted().joined(separator: ", ")
                throw StreamOpenError(.ambiguousTarget,
                    "The name '\(asked)' is ambiguous: \(matches.count) instances carry it (\(ids)). Use the instance id or an alias.")
            }
        }
        let info = (try? await self.directory.node(id: id, ttl: configuration.cacheTTL)) ?? TargetInfo(id: id)
        return try Self.checkOnline(info, asked: asked)
    }

    static func checkOnline(_ info: TargetInfo, asked: String) throws(StreamOpenError) -> TargetInfo {
        if let status = info.pingStatus, status != "Online" {
            throw StreamOpenError(.targetOffline,
                "\(info.id)\(info.name.map { " (\($0))" } ?? "") is \(status): its SSM agent is not connected. Check that the instance runs and its agent can reach Systems Manager.")
        }
        return info
    }

    /// Every node the directory knows, for the help text.
    public func knownTargets() async -> [TargetInfo] {
        (try? await self.directory.allNodes(ttl: self.configuration.withLockedValue { $0.cacheTTL })) ?? []
    }

    public var aliases: [String: String] { self.configuration.withLockedValue { $0.aliases } }
}

/// Cached answers of DescribeInstanceInformation (ping status, agent version, on-premises names)
/// and DescribeInstances (tags): one refresh for all callers, at most once per TTL. Only the first
/// lookup waits for AWS: past the TTL the last answer is used while one refresh runs behind it, so
/// a slow or unreachable EC2 API (a VPC with only the SSM endpoints) never stalls a connection twice.
public actor InstanceDirectory {
    struct Snapshot {
        var nodes: [String: TargetInfo]
        var fetched: NIODeadline
    }

    let ssm: SSMClient?
    let ec2: EC2Client?
    var snapshot: Snapshot?
    var refreshing: Task<Snapshot, any Error>?
    /// Why the last EC2 lookup failed (the gateway still works by id and SSM names without it).
    public private(set) var lastEC2Failure: String?
    /// Lookups of AWS started so far (each is one DescribeInstanceInformation and one DescribeInstances).
    public private(set) var refreshes = 0

    public init(ssm: SSMClient?, ec2: EC2Client?) {
        self.ssm = ssm
        self.ec2 = ec2
    }

    public func nodes(named name: String, ttl: TimeAmount) async throws -> [TargetInfo] {
        try await self.current(ttl: ttl).nodes.values.filter { $0.name == name }.sorted { $0.id < $1.id }
    }

    public func node(id: String, ttl: TimeAmount) async throws -> TargetInfo? {
        try await self.current(ttl: ttl).nodes[id]
    }

    public func allNodes(ttl: TimeAmount) async throws -> [TargetInfo] {
        try await self.current(ttl: ttl).nodes.values.sorted { $0.id < $1.id }
    }

    /// Starts the first lookup without waiting for it (the gateway does this when it starts).
    public func prefetch() {
        _ = self.startRefresh()
    }

    func current(ttl: TimeAmount) async throws -> Snapshot {
        if let snapshot {
            if snapshot.fetched + ttl <= .now() { _ = self.startRefresh() }
            return snapshot
        }
        return try await self.startRefresh().value
    }

    /// The running refresh, or a new one; its result replaces the snapshot (a failed one keeps the old).
    private func startRefresh() -> Task<Snapshot, any Error> {
        if let refreshing { return refreshing }
        self.refreshes += 1
        let task = Task {
            defer { self.refreshing = nil }
            let fresh = try await self.fetch()
            self.snapshot = fresh
            return fresh
        }
        self.refreshing = task
        return task
    }

    func fetch() async throws -> Snapshot {
        var nodes: [String: TargetInfo] = [:]
        if let ssm {
            for item in try await ssm.describeInstanceInformation(filters: []) {
                nodes[item.instanceID] = TargetInfo(
                    id: item.instanceID, name: item.name, pingStatus: item.pingStatus, agentVersion: item.agentVersion)
            }
        }
        if let ec2 {
            // Name tags of EC2 instances; a gateway without ec2:DescribeInstances still works by id.
            let instances: [EC2Instance]
            do {
                instances = try await ec2.describeInstances(instanceIDs: [], filters: [("instance-state-name", ["running", "pending", "stopping", "stopped"])])
                self.lastEC2Failure = nil
            } catch {
                instances = []
                self.lastEC2Failure = "\(error)"
            }
            do {
                for instance in instances {
                    var info = nodes[instance.instanceID] ?? TargetInfo(id: instance.instanceID, pingStatus: instance.state == "running" ? nil : "ConnectionLost")
                    info.tags = instance.tags
                    if let name = instance.name { info.name = name }
                    nodes[instance.instanceID] = info
                }
            }
        }
        return Snapshot(nodes: nodes, fetched: .now())
    }
}

/// Shell-style patterns (`*`, `?`), case-insensitive, for remote-host routes and access rules.
public enum Glob {
    public static func matches(_ pattern: String, _ text: String) -> Bool {
        let p = Array(pattern.lowercased().utf8)
        let t = Array(text.lowercased().utf8)
        var pi = 0, ti = 0, star = -1, mark = 0
        while ti < t.count {
            if pi < p.count, p[pi] == UInt8(ascii: "?") || p[pi] == t[ti] {
                pi += 1
                ti += 1
            } else if pi < p.count, p[pi] == UInt8(ascii: "*") {
                star = pi
                mark = ti
                pi += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                ti = mark
            } else {
                return false
            }
        }
        while pi < p.count, p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }
}
