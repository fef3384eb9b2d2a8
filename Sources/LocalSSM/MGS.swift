import Dispatch
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
    let limits: LimitsProfile
    private let controlChannels = Mutex<[String: any Channel]>([:])
    private let controlTokens = Mutex<[String: String]>([:])
    private let relays = Mutex<[String: SessionRelay]>([:])
    /// Frames held for a side that is not connected; beyond this the oldest are dropped (both peers resend).
    static let pendingFrameLimit = 4096

    init(registry: SessionRegistry, limits: LimitsProfile = .aws) {
        self.registry = registry
        self.limits = limits
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
        let relay = SessionRelay(sessionID: session.id, target: session.target, mgs: self, messagesPerSecond: self.limits.messagesPerSecond)
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

    /// Fault injection: closes one side's WebSocket of a session as a network failure would (no
    /// `channel_closed`); the session stays, ready for the side to reconnect (ResumeSession for a client).
    @discardableResult
    public func dropWebSocket(sessionID: String, client: Bool) -> Bool {
        guard let relay = self.relay(sessionID) else { return false }
        return relay.dropSide(client ? .client : .agent)
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
        /// Data messages this side may still send (nil: no limit).
        var bucket: TokenBucket?
        /// Over the limit: told to pause; its frames wait in `held` and leave at the allowed rate.
        var paused = false
        var held = CircularBuffer<ByteBuffer>()
        var refusedWhilePaused = 0
    }

    struct State {
        var client = Side()
        var agent = Side()
        var closed = false
        var agentTerminating = false
    }

    private let state = Mutex(State())

    /// Data messages per second per direction; nil: no limit.
    let messagesPerSecond: Int?

    init(sessionID: String, target: String, mgs: MGS, messagesPerSecond: Int?) {
        self.sessionID = sessionID
        self.target = target
        self.mgs = mgs
        self.messagesPerSecond = messagesPerSecond
        if let rate = messagesPerSecond {
            self.state.withLock { state in
                state.client.bucket = TokenBucket(rate: Double(rate), capacity: Double(rate))
                state.agent.bucket = TokenBucket(rate: Double(rate), capacity: Double(rate))
            }
        }
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

    func dropSide(_ role: SessionRegistry.Role) -> Bool {
        let channel = self.state.withLock { state -> (any Channel)? in
            switch role {
            case .client: return state.client.channel
            case .agent: return state.agent.channel
            }
        }
        channel?.close(promise: nil)
        return channel != nil
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

    enum RateDecision { case pass, hold(startDraining: Bool), drop, close }

    /// The service's data-message rate limit. A sender over it is told `pause_publication`; what it
    /// already sent waits (bounded) and leaves at the allowed rate, in order; `start_publication`
    /// follows once the queue is empty and the bucket half full. A sender that keeps going past the
    /// queue for five seconds' worth of messages is disconnected.
    func rateDecision(for role: SessionRegistry.Role, frame: ByteBuffer, now: UInt64) -> RateDecision {
        guard let rate = self.messagesPerSecond else { return .pass }
        return self.state.withLock { state in
            switch role {
            case .client: return Self.decide(&state.client, frame: frame, rate: rate, now: now)
            case .agent: return Self.decide(&state.agent, frame: frame, rate: rate, now: now)
            }
        }
    }

    static func decide(_ side: inout Side, frame: ByteBuffer, rate: Int, now: UInt64) -> RateDecision {
        guard var bucket = side.bucket else { return .pass }
        defer { side.bucket = bucket }
        if side.held.isEmpty, !side.paused, bucket.take(1, now: now) { return .pass }
        if side.held.count < rate * 2 {
            side.held.append(frame)
            let first = !side.paused
            side.paused = true
            return .hold(startDraining: first)
        }
        side.refusedWhilePaused += 1
        return side.refusedWhilePaused > rate * 5 ? .close : .drop
    }

    /// Sends held frames as the bucket allows; ends the pause when all are out and the bucket is half full.
    func drainHeld(_ role: SessionRegistry.Role, sender: any Channel) {
        let now = DispatchTime.now().uptimeNanoseconds
        let (frames, destination, resume, wait, closed) = self.state.withLock { state -> ([ByteBuffer], (any Channel)?, Bool, UInt64, Bool) in
            func drain(_ side: inout Side, to other: inout Side) -> ([ByteBuffer], (any Channel)?, Bool, UInt64) {
                guard var bucket = side.bucket else { return ([], nil, false, 0) }
                var out: [ByteBuffer] = []
                while !side.held.isEmpty, bucket.take(1, now: now) { out.append(side.held.removeFirst()) }
                var resume = false
                bucket.refill(now: now)
                if side.held.isEmpty, side.paused, bucket.tokens >= bucket.capacity / 2 {
                    side.paused = false
                    side.refusedWhilePaused = 0
                    resume = true
                }
                side.bucket = bucket
                let wait = side.held.isEmpty ? UInt64(100_000_000) : max(bucket.delay(until: 1), 1_000_000)
                if other.channel == nil {
                    for frame in out { Self.hold(frame, in: &other) }
                    return ([], nil, resume, wait)
                }
                return (out, other.channel, resume, wait)
            }
            guard !state.closed else { return ([], nil, false, 0, true) }
            switch role {
            case .client:
                let (out, channel, resume, wait) = drain(&state.client, to: &state.agent)
                return (out, channel, resume, wait, false)
            case .agent:
                let (out, channel, resume, wait) = drain(&state.agent, to: &state.client)
                return (out, channel, resume, wait, false)
            }
        }
        guard !closed else { return }
        if let destination, !frames.isEmpty {
            for frame in frames { destination.write(WebSocketFrame(fin: true, opcode: .binary, data: frame), promise: nil) }
            destination.flush()
        }
        if resume {
            sender.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, data: Self.publicationFrame(.startPublication)), promise: nil)
        } else {
            sender.eventLoop.scheduleTask(in: .nanoseconds(Int64(wait))) { self.drainHeld(role, sender: sender) }
        }
    }

    static func publicationFrame(_ type: MessageType) -> ByteBuffer {
        let message = AgentMessage(
            messageType: type, createdDate: MGS.nowMilliseconds(), sequenceNumber: 0, flags: .control,
            messageID: .random(), payloadType: .undefined, payload: ByteBuffer(string: "{}"))
        return try! message.encoded()  // non-empty payload: cannot fail
    }

    /// Passes a frame to the other side, or holds it until that side (re)connects.
    func forward(_ frame: ByteBuffer, from role: SessionRegistry.Role, sender: any Channel) {
        let header = try? AgentMessage.decode(frame, options: .init(verifiesDigest: false))
        if let header, header.messageType.isStreamData {
            switch self.rateDecision(for: role, frame: frame, now: DispatchTime.now().uptimeNanoseconds) {
            case .pass:
                break
            case .hold(let startDraining):
                if startDraining {
                    sender.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, data: Self.publicationFrame(.pausePublication)), promise: nil)
                    sender.eventLoop.scheduleTask(in: .milliseconds(1)) { self.drainHeld(role, sender: sender) }
                }
                return
            case .drop:
                return
            case .close:
                if self.mgs.registry.terminate(self.sessionID) {
                    self.mgs.closeSession(self.sessionID, output: "Session closed: the data message rate limit was exceeded.")
                }
                return
            }
        }
        if role == .agent, let header, header.messageType == .agentSessionState
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
