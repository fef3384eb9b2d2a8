/// How closely the emulator reproduces the service's limits.
///
/// `aws` (the default) is what users meet on AWS; `unlimited` removes pacing and caps so a
/// client's own efficiency can be measured. Figures and their sources are in the README.
public struct LimitsProfile: Sendable, Equatable {
    public var name: String
    /// Largest payload the simulated agent reads from a destination per data message.
    public var agentReadChunk: Int
    /// Agent pacing per session and direction, bytes per second; nil means none.
    public var agentBytesPerSecond: Int?
    /// MGS data messages per second per session and direction; nil means none.
    public var messagesPerSecond: Int?
    /// Sessions per instance.
    public var maximumSessionsPerInstance: Int?
    /// Session idle timeout, seconds.
    public var idleTimeoutSeconds: Int
    /// The service closes data-channel WebSockets this often, seconds; nil means never.
    public var webSocketLifetimeSeconds: Int?
    /// Delay before StartSession answers, milliseconds.
    public var startSessionDelayMilliseconds: Int
    /// Delay before MGS answers a data- or control-channel WebSocket upgrade, milliseconds.
    public var webSocketOpenDelayMilliseconds: Int
    /// Delay between the agent receiving a session and opening its data channel (the real agent
    /// starts a session-worker process first), milliseconds.
    public var agentStartDelayMilliseconds: Int

    public static let aws = LimitsProfile(
        name: "aws", agentReadChunk: 1024, agentBytesPerSecond: 1_000_000, messagesPerSecond: 1000,
        maximumSessionsPerInstance: 1000, idleTimeoutSeconds: 20 * 60, webSocketLifetimeSeconds: 60 * 60,
        startSessionDelayMilliseconds: 300, webSocketOpenDelayMilliseconds: 50, agentStartDelayMilliseconds: 200)

    public static let unlimited = LimitsProfile(
        name: "unlimited", agentReadChunk: 1024, agentBytesPerSecond: nil, messagesPerSecond: nil,
        maximumSessionsPerInstance: nil, idleTimeoutSeconds: 20 * 60, webSocketLifetimeSeconds: nil,
        startSessionDelayMilliseconds: 0, webSocketOpenDelayMilliseconds: 0, agentStartDelayMilliseconds: 0)

    public init?(named name: String) {
        switch name {
        case "aws": self = .aws
        case "unlimited": self = .unlimited
        default: return nil
        }
    }

    init(
        name: String, agentReadChunk: Int, agentBytesPerSecond: Int?, messagesPerSecond: Int?, maximumSessionsPerInstance: Int?,
        idleTimeoutSeconds: Int, webSocketLifetimeSeconds: Int?, startSessionDelayMilliseconds: Int,
        webSocketOpenDelayMilliseconds: Int, agentStartDelayMilliseconds: Int
    ) {
        self.name = name
        self.agentReadChunk = agentReadChunk
        self.agentBytesPerSecond = agentBytesPerSecond
        self.messagesPerSecond = messagesPerSecond
        self.maximumSessionsPerInstance = maximumSessionsPerInstance
        self.idleTimeoutSeconds = idleTimeoutSeconds
        self.webSocketLifetimeSeconds = webSocketLifetimeSeconds
        self.startSessionDelayMilliseconds = startSessionDelayMilliseconds
        self.webSocketOpenDelayMilliseconds = webSocketOpenDelayMilliseconds
        self.agentStartDelayMilliseconds = agentStartDelayMilliseconds
    }

    /// The profile with the configuration file's own figures put over it.
    public func applying(_ overrides: LimitsOverrides) -> LimitsProfile {
        var profile = self
        if let value = overrides.idleTimeoutSeconds { profile.idleTimeoutSeconds = value }
        if let value = overrides.webSocketLifetimeSeconds { profile.webSocketLifetimeSeconds = value }
        if let value = overrides.startSessionDelayMilliseconds { profile.startSessionDelayMilliseconds = value }
        if let value = overrides.webSocketOpenDelayMilliseconds { profile.webSocketOpenDelayMilliseconds = value }
        if let value = overrides.agentStartDelayMilliseconds { profile.agentStartDelayMilliseconds = value }
        return profile
    }
}

/// Figures a configuration file sets over its profile (so `--limits` can change the profile and keep them).
public struct LimitsOverrides: Sendable, Equatable {
    public var idleTimeoutSeconds: Int?
    /// `.some(nil)`: never.
    public var webSocketLifetimeSeconds: Int??
    public var startSessionDelayMilliseconds: Int?
    public var webSocketOpenDelayMilliseconds: Int?
    public var agentStartDelayMilliseconds: Int?

    public init() {}
}
