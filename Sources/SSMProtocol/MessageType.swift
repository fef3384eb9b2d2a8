/// The 32-byte, space-padded type name at offset 4 of every AgentMessage.
public enum MessageType: String, Hashable, Sendable, CaseIterable {
    case inputStreamData = "input_stream_data"
    case outputStreamData = "output_stream_data"
    case acknowledge = "acknowledge"
    case channelClosed = "channel_closed"
    case startPublication = "start_publication"
    case pausePublication = "pause_publication"
    case agentSessionState = "agent_session_state"
    case interactiveShell = "interactive_shell"
    case agentTaskComplete = "agent_task_complete"
    case agentTaskAcknowledge = "agent_task_acknowledge"
    case agentTaskReply = "agent_task_reply"
    case agentJob = "agent_job"
    case agentJobAcknowledge = "agent_job_ack"
    case agentJobReply = "agent_job_reply"
    case agentJobReplyAcknowledge = "agent_job_reply_ack"

    /// Width of the field on the wire.
    public static let fieldLength = 32

    /// Stream messages consume sequence numbers and are acknowledged; everything else rides at seq 0.
    public var isStreamData: Bool {
        self == .inputStreamData || self == .outputStreamData
    }

    /// MGS flow-control messages, which the official client accepts without validating their header.
    public var isPublicationControl: Bool {
        self == .startPublication || self == .pausePublication
    }

    /// Matches the trimmed bytes of the wire field against the known names without allocating.
    static func match(_ bytes: UnsafeRawBufferPointer) -> MessageType? {
        for (name, type) in Self.wireNames where name.count == bytes.count {
            let equal = name.withUnsafeBytes { $0.hasSameBytes(as: bytes) }
            if equal { return type }
        }
        return nil
    }

    /// Each name's bytes, made once: this runs for every frame each way.
    static let wireNames: [(name: [UInt8], type: MessageType)] = Self.allCases.map { (Array($0.rawValue.utf8), $0) }
}

/// What a stream message's payload holds (offset 112).
public enum PayloadType: UInt32, Hashable, Sendable, CaseIterable {
    case undefined = 0
    case output = 1
    case error = 2
    case size = 3
    case parameter = 4
    case handshakeRequest = 5
    case handshakeResponse = 6
    case handshakeComplete = 7
    case encryptionChallengeRequest = 8
    case encryptionChallengeResponse = 9
    case flag = 10
    case standardError = 11
    case exitCode = 12
}

/// Header flags (offset 56). Nobody acts on them on receipt; senders set them as the official peers do.
public struct AgentMessageFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let syn = AgentMessageFlags(rawValue: 1)
    public static let fin = AgentMessageFlags(rawValue: 2)
    /// What acknowledgements and other unsequenced messages carry.
    public static let control: AgentMessageFlags = [.syn, .fin]
}
