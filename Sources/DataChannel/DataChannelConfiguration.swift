import NIOCore

/// Tunables of a client data channel. The defaults look like the official client to the service
/// (1024-byte messages, a realistic ClientVersion) and stay under the service's message-rate limit.
public struct DataChannelConfiguration: Sendable, Hashable {
    /// Reported in OpenDataChannel and the handshake. Agents take protocol decisions from it
    /// (mux ≥ 1.1.70, smux keepalive off > 1.2.331.0, no upgrade hints > 1.2.295), so it must be
    /// a current release number.
    public var clientVersion: String
    /// Largest payload per data message. The official peers use 1024; larger is opt-in.
    public var maximumPayloadSize: Int
    /// Stream messages sent but not yet acknowledged; producing stops at this many. 512 is far more
    /// than AWS's pace needs (about 1000 messages a second) and bounds the burst a resume resends
    /// under the service's rate limit; without that limit see `unpacedSendWindow`.
    public var sendWindow: Int
    /// The window for a client that does not pace itself (an unlimited emulator): the round trip
    /// under load, not the service's rate, is then what bounds one stream (on two shared cores 512
    /// held it near 85 MB/s, 2048 near 105, 4096 near 115; the official client allows 10,000).
    public static let unpacedSendWindow = 4096
    /// Data messages per second this client sends, kept under the service's limit (~1000/s);
    /// nil disables the limiter (for measuring against an unlimited emulator).
    public var messagesPerSecond: Int?
    /// Messages that may go out back to back before the rate applies.
    public var messageBurst: Int
    /// Reconnect attempts after a dropped WebSocket (each ResumeSession + dial), and initial dials.
    public var reconnectAttempts: Int
    /// First reconnect delay; it doubles per attempt up to `maximumReconnectDelay` (plus jitter).
    public var initialReconnectDelay: TimeAmount
    public var maximumReconnectDelay: TimeAmount
    /// WebSocket ping cadence (the official client: right after connect, then every 5 minutes).
    public var pingInterval: TimeAmount
    /// Give up when the oldest unacknowledged message has waited this long (the official client:
    /// 3000 resends, about 5 minutes).
    public var acknowledgementTimeout: TimeAmount
    /// Out-of-order messages kept while a gap fills.
    public var incomingCapacity: Int
    /// How long messages lost in transit (a gap below messages that did arrive) may take to be
    /// resent before the channel gives up. The agent resends only its oldest unacknowledged
    /// message, one per round-trip timeout, so a WebSocket drop that lost hundreds of messages
    /// would otherwise crawl for minutes with every stream on the channel frozen.
    public var lossRecoveryTimeout: TimeAmount
    public var connectTimeout: TimeAmount
    /// Largest WebSocket frame accepted from the service.
    public var maximumFrameSize: Int

    public init(
        clientVersion: String = DataChannelConfiguration.defaultClientVersion,
        maximumPayloadSize: Int = 1024,
        sendWindow: Int = 512,
        messagesPerSecond: Int? = 900,
        messageBurst: Int = 100,
        reconnectAttempts: Int = 8,
        initialReconnectDelay: TimeAmount = .milliseconds(100),
        maximumReconnectDelay: TimeAmount = .seconds(5),
        pingInterval: TimeAmount = .minutes(5),
        acknowledgementTimeout: TimeAmount = .minutes(5),
        incomingCapacity: Int = 10_000,
        lossRecoveryTimeout: TimeAmount = .seconds(30),
        connectTimeout: TimeAmount = .seconds(15),
        maximumFrameSize: Int = 1 << 20
    ) {
        self.clientVersion = clientVersion
        self.maximumPayloadSize = maximumPayloadSize
        self.sendWindow = sendWindow
        self.messagesPerSecond = messagesPerSecond
        self.messageBurst = messageBurst
        self.reconnectAttempts = reconnectAttempts
        self.initialReconnectDelay = initialReconnectDelay
        self.maximumReconnectDelay = maximumReconnectDelay
        self.pingInterval = pingInterval
        self.acknowledgementTimeout = acknowledgementTimeout
        self.incomingCapacity = incomingCapacity
        self.lossRecoveryTimeout = lossRecoveryTimeout
        self.connectTimeout = connectTimeout
        self.maximumFrameSize = maximumFrameSize
    }

    /// A release number above every gate of the agent and of awscli (> 1.2.497.0 puts the
    /// StartSession response in the environment, not in argv).
    public static let defaultClientVersion = "1.2.707.0"
}
