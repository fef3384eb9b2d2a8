import NIOCore
import SSMProtocol

/// Limits and timers of one smux session. Defaults follow `smux.DefaultConfig()`, which both the
/// official client and agent use (reference 8.3), plus the output scheduler's own limits.
public struct SmuxConfiguration: Hashable, Sendable {
    /// smux keepalive timers: a NOP every `interval`; the session is dead when no frame at all
    /// arrived during a whole `timeout` window.
    public struct KeepAlive: Hashable, Sendable {
        public var interval: TimeAmount
        public var timeout: TimeAmount

        public init(interval: TimeAmount, timeout: TimeAmount) {
            self.interval = interval
            self.timeout = timeout
        }

        /// smux DefaultConfig: 10 s / 30 s.
        public static let smuxDefault = KeepAlive(interval: .seconds(10), timeout: .seconds(30))
    }

    /// The version byte written in every frame. Both official peers speak 1 and only 1 is implemented.
    public var version: UInt8
    /// Version bytes accepted on input; any other byte is a protocol error, as in smux. `1...2` also
    /// accepts (and ignores) version-2 UPD window updates, for recognising a v2 peer.
    public var acceptedVersions: ClosedRange<UInt8>
    /// Largest PSH payload written per frame (smux MaxFrameSize 32768; at most 65535, the header's limit).
    public var maximumFrameSize: Int
    /// Bytes a stream may have queued and not yet handed to ``SmuxSession/nextOutbound(maximumBytes:)``.
    /// Writes beyond it are refused so a fast producer feels backpressure instead of growing memory.
    public var perStreamSendBufferLimit: Int
    /// Deficit-round-robin quantum in wire bytes (header included) granted to a stream per turn. It
    /// bounds how long a bulk stream can hold the output before an interactive one gets its turn.
    public var quantum: Int
    /// Live streams (ours and the peer's). A peer SYN beyond it is refused with a FIN; a local open
    /// fails. Mirrors smux's accept backlog of 1024.
    public var maximumStreams: Int
    /// `nil` disables keepalive. Decide with the version gates of reference 8.3: the client disables it
    /// when agentVersion > 3.1.1511.0, the agent when clientVersion > 1.2.331.0.
    public var keepAlive: KeepAlive?

    public init(
        version: UInt8 = 1,
        acceptedVersions: ClosedRange<UInt8>? = nil,
        maximumFrameSize: Int = SmuxFrame.defaultMaximumFrameSize,
        perStreamSendBufferLimit: Int = 65536,
        quantum: Int = 1024,
        maximumStreams: Int = 1024,
        keepAlive: KeepAlive? = .smuxDefault
    ) {
        self.version = version
        self.acceptedVersions = acceptedVersions ?? version...version
        self.maximumFrameSize = maximumFrameSize
        self.perStreamSendBufferLimit = perStreamSendBufferLimit
        self.quantum = quantum
        self.maximumStreams = maximumStreams
        self.keepAlive = keepAlive
    }

    /// Throws a message naming the first value out of range (in the tone of smux `VerifyConfig`).
    public func validate() throws(SmuxSessionError) {
        guard self.version == 1 else {
            throw .invalidConfiguration("version", "\(self.version)", expected: "1 (the only version implemented)")
        }
        guard self.acceptedVersions.contains(self.version), self.acceptedVersions.upperBound <= 2 else {
            throw .invalidConfiguration(
                "acceptedVersions",
                "\(self.acceptedVersions)",
                expected: "a range within 1...2 containing \(self.version)"
            )
        }
        guard (1...SmuxFrame.maximumPayloadLength).contains(self.maximumFrameSize) else {
            throw .invalidConfiguration(
                "maximumFrameSize",
                "\(self.maximumFrameSize)",
                expected: "1...\(SmuxFrame.maximumPayloadLength)"
            )
        }
        guard (1...Int(Int32.max)).contains(self.perStreamSendBufferLimit) else {
            throw .invalidConfiguration(
                "perStreamSendBufferLimit",
                "\(self.perStreamSendBufferLimit)",
                expected: "1...\(Int32.max)"
            )
        }
        guard (SmuxFrame.headerSize + 1...Int(Int32.max)).contains(self.quantum) else {
            throw .invalidConfiguration(
                "quantum",
                "\(self.quantum)",
                expected: "more than the \(SmuxFrame.headerSize)-byte header"
            )
        }
        guard (1...Int(Int32.max)).contains(self.maximumStreams) else {
            throw .invalidConfiguration("maximumStreams", "\(self.maximumStreams)", expected: "1...\(Int32.max)")
        }
        if let keepAlive = self.keepAlive {
            guard keepAlive.interval > .zero else {
                throw .invalidConfiguration(
                    "keepAlive.interval",
                    "\(keepAlive.interval)",
                    expected: "a positive duration"
                )
            }
            guard keepAlive.timeout >= keepAlive.interval else {
                throw .invalidConfiguration(
                    "keepAlive.timeout",
                    "\(keepAlive.timeout)",
                    expected: "at least the interval \(keepAlive.interval)"
                )
            }
        }
    }
}
