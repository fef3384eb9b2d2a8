import Foundation
import NIOCore
import NIOWebSocket
import SSMProtocol
import Synchronization

/// The Message Gateway Service: pairs a session's client and agent WebSockets and relays their
/// frames, and holds each agent's control channel, over which sessions are started.
///
/// It reads frame headers only (to route control messages and notice the agent's
/// `Terminating`); session data passes through as the same `ByteBuffer`, never copied.
public final class MGS: Sendable {
    let registry: SessionRegistry
    private let controlChannels = Mutex<[String: any Channel]>([:])
    private let controlTokens = Mutex<[String: String]>([:])
    private let relays = Mutex<[String: SessionRelay]>([:])
    /// Frames held for a side that is not connected; beyond this the oldest are dropped (both peers resend).
    static let pendingFrameLimit = 4096

    init(registry: SessionRegistry) {
        self.registry = registry
    }

    // MARK: Control channel

    func issueControlToken(instanceID: String) -> String {
        let token = SessionRegistry.randomToken()
        self.controlTokens.withLock { $0[token] = instanceID }
        return token
    }

    func attachControlChannel(instanceID: String, token: String, channel: any Channel) -> Bool {
        guard self.controlTokens.withLock({ $0[token] }) == instanceID else { return false }
        let previous = self.controlChannels.withLock { channels in
            let old = channels[instanceID]
            channels[instanceID] = channel
            return old
        }
        if let previous, previous !== channel { previous.close(promise: nil) }
        return true
    }

    func detachControlChannel(instanceID: String, channel: any Channel) {
        self.controlChannels.withLock { channels in
            if channels[instanceID] === channel { channels[instanceID] = nil }
        }
    }

    public func isAgentConnected(_ instanceID: String) -> Bool {
        self.controlChannels.withLock { $0[instanceID] != nil }
    }

    /// Sends `interactive_shell` to the target's agent, as MGS does on StartSession.
    func deliverStartSession(_ session: SessionRegistry.Session, document: SessionDocument) -> Bool {
        guard let channel = self.controlChannels.withLock({ $0[session.target] }) else { return false }
        let relay = SessionRelay(sessionID: session.id, target: session.target, mgs: self)
        self.relays.withLock { $0[session.id] = relay }
        let content = JSONValue.object([
            ("DocumentName", .string(session.documentName)),
            ("DocumentContent", .object([
                ("schemaVersion", .string("1.0")),
                ("description", .string("Session document \(session.documentName)")),
                ("sessionType", .string(session.sessionType)),
                ("inputs", .object([("kmsKeyId", .string("")), ("runAsEnabled", .bool(false)), ("runAsDefaultUser", .string(""))])),
                ("parameters", .object([])),
                ("properties", session.properties),
            ])),
            ("SessionId", .string(session.id)),
            ("Parameters", .object(session.parameters.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })),
            ("RunAsUser", .string("")),
            ("SessionOwner", .string(session.owner)),
        ])
        let payload = JSONValue.object([
            ("Content", .string(content.text)),
            ("TaskId", .string(session.id)),
            ("Topic", .string("aws.ssm.sendCommand")),
            ("SchemaVersion", .integer(1)),
        ])
        let message = AgentMessage(
            messageType: .interactiveShell, createdDate: Self.nowMilliseconds(), sequenceNumber: 0, flags: .control,
            messageID: .random(), payloadType: .undefined, payload: payload.encoded)
        guard let frame = try? message.encoded() else { return false }
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, data: frame), promise: nil)
        return true
    }

    /// Answers what the agent sends on its control channel (task results want an acknowledgement).
    func handleControlFrame(_ data: ByteBuffer, from channel: any Channel) {
        guard let message = try? AgentMessage.decode(data, options: .init(verifiesDigest: false)),
            message.messageType == .agentTaskComplete,
            let payload = try? JSONValue(parsing: message.payload)
        else { return }
        let ack = JSONValue.object([
            ("SchemaVersion", .integer(1)),
            ("MessageId", .string(message.messageID.description)),
            ("TaskId", .string(payload["TaskId"]?.stringValue ?? "")),
            ("Topic", .string(payload["Topic"]?.stringValue ?? "")),
        ])
        let reply = AgentMessage(
            messageType: .agentTaskAcknowledge, createdDate: Self.nowMilliseconds(), sequenceNumber: 0, flags: .control,
            messageID: .random(), payloadType: .undefined, payload: ack.encoded)
        if let frame = try? reply.encoded() {
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, data: frame), promise: nil)
        }
        // The agent is done with the session: tell the client (a failure's reason becomes the output it prints).
        if let sessionID = payload["TaskId"]?.stringValue {
            let failed = payload["FinalTaskStatus"]?.stringValue == "Failed"
            self.sessionEnded(sessionID, output: failed ? (payload["Output"]?.stringValue ?? "") : "")
        }
    }

    // MARK: Data channels

    func relay(_ sessionID: String) -> SessionRelay? {
        self.relays.withLock { $0[sessionID] }
    }

    /// Ends a session on both sides with `channel_closed`.
    func closeSession(_ sessionID: String, output: String) {
        guard let relay = self.relays.withLock({ $0.removeValue(forKey: sessionID) }) else { return }
        relay.close(output: output)
        if let control = self.controlChannels.withLock({ $0[relay.target] }), let frame = relay.channelClosedFrame(output: output, agentForm: true) {
            control.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, data: frame), promise: nil)
        }
    }

    func sessionEnded(_ sessionID: String, output: String = "") {
        if self.registry.terminate(sessionID) {
            self.closeSession(sessionID, output: output)
        }
    }

    static func nowMilliseconds() -> UInt64 {
        UInt64((Date().timeIntervalSince1970 * 1000).rounded())
    }
}

/// One session's pair of WebSockets and the frames waiting for a side that is away.
final class SessionRelay: Sendable {
    let sessionID: String
    let target: String
    unowned let mgs: MGS

    struct Side {
        var channel: (any Channel)?
        var pending: [ByteBuffer] = []
        var droppedFrames = 0
    }

    struct State {
        var client = Side()
        var agent = Side()
        var closed = false
        var agentTerminating = false
    }

    private let state = Mutex(State())

    init(sessionID: String, target: String, mgs: MGS) {
        self.sessionID = sessionID
        self.target = target
        self.mgs = mgs
    }

    /// Connects one side; frames held for it are flushed in order. A newer connection of the
    /// same side (a resume) replaces the old one.
    func attach(_ role: SessionRegistry.Role, channel: any Channel) -> Bool {
        let (pending, previous, accepted) = self.state.withLock { state -> ([ByteBuffer], (any Channel)?, Bool) in
            guard !state.closed else { return ([], nil, false) }
            switch role {
            case .client:
                let old = state.client.channel
                state.client.channel = channel
                defer { state.client.pending = [] }
                return (state.client.pending, old, true)
            case .agent:
                let old = state.agent.channel
                state.agent.channel = channel
                defer { state.agent.pending = [] }
                return (state.agent.pending, old, true)
            }
        }
        guard accepted else { return false }
        if let previous, previous !== channel { previous.close(promise: nil) }
        for frame in pending {
            channel.write(WebSocketFrame(fin: true, opcode: .binary, data: frame), promise: nil)
        }
        channel.flush()
        if role == .agent { self.mgs.registry.markConnected(self.sessionID) }
        return true
    }

    func detach(_ role: SessionRegistry.Role, channel: any Channel) {
        let endSession = self.state.withLock { state -> Bool in
            switch role {
            case .client:
                if state.client.channel === channel { state.client.channel = nil }
                return false
            case .agent:
                guard state.agent.channel === channel else { return false }
                state.agent.channel = nil
                return state.agentTerminating
            }
        }
        if endSession { self.mgs.sessionEnded(self.sessionID) }
    }

    /// Passes a frame to the other side, or holds it until that side (re)connects.
    func forward(_ frame: ByteBuffer, from role: SessionRegistry.Role) {
        if role == .agent, let header = try? AgentMessage.decode(frame, options: .init(verifiesDigest: false)),
            header.messageType == .agentSessionState
        {
            // Meant for the service, not the client.
            if let state = try? AgentSessionState(decoding: header.payload), state.sessionState == AgentSessionState.terminating {
                self.state.withLock { $0.agentTerminating = true }
            }
            return
        }
        let destination = self.state.withLock { state -> (any Channel)? in
            guard !state.closed else { return nil }
            switch role {
            case .client:
                if let channel = state.agent.channel { return channel }
                Self.hold(frame, in: &state.agent)
            case .agent:
                if let channel = state.client.channel { return channel }
                Self.hold(frame, in: &state.client)
            }
            return nil
        }
        destination?.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, data: frame), promise: nil)
    }

    private static func hold(_ frame: ByteBuffer, in side: inout Side) {
        if side.pending.count >= MGS.pendingFrameLimit {
            side.pending.removeFirst()
            side.droppedFrames += 1
        }
        side.pending.append(frame)
    }

    func channelClosedFrame(output: String, agentForm: Bool) -> ByteBuffer? {
        let payload = ChannelClosed(
            messageID: MessageID.random().description,
            createdDate: ISO8601DateFormatter().string(from: Date()),
            destinationID: self.target, sessionID: self.sessionID,
            output: agentForm ? nil : output)
        let message = AgentMessage(
            messageType: .channelClosed, createdDate: MGS.nowMilliseconds(), sequenceNumber: 0, flags: .control,
            messageID: .random(), payloadType: .undefined, payload: payload.encoded())
        return try? message.encoded()
    }

    /// Sends `channel_closed` to both sides and closes their sockets.
    func close(output: String) {
        let (client, agent) = self.state.withLock { state -> ((any Channel)?, (any Channel)?) in
            state.closed = true
            defer {
                state.client = Side()
                state.agent = Side()
            }
            return (state.client.channel, state.agent.channel)
        }
        for (channel, agentForm) in [(client, false), (agent, true)] {
            guard let channel, let frame = self.channelClosedFrame(output: output, agentForm: agentForm) else { continue }
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, data: frame)).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }
}
