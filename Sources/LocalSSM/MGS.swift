import Dispatch
import Foundation
import NIOCore
import WebSocketTransport
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
    public let faults: FaultInjector
    private let ticker = Mutex<RepeatedTask?>(nil)
    private let controlChannels = Mutex<[String: any Channel]>([:])
    private let controlTokens = Mutex<[String: String]>([:])
    private let relays = Mutex<[String: SessionRelay]>([:])
    /// The last sessions that ended, for `relayStateSummary` after the end.
    private let endedRelays = Mutex<[SessionRelay]>([])
    static let endedRelayMemory = 32
    /// Frames held for a side that is not connected. At this many the sending side is no longer
    /// read (TCP backpressure) until the other side is back, so the relay loses nothing; the hard
    /// cap only guards against a sender that ignores it.
    static let pendingFrameLimit = 1024
    static let pendingFrameHardLimit = 8192

    /// How often idle sessions, WebSocket lifetimes and timed drops are checked.
    static let tickInterval = TimeAmount.milliseconds(100)

    init(registry: SessionRegistry, limits: LimitsProfile = .aws, faults: FaultInjector = FaultInjector()) {
        self.registry = registry
        self.limits = limits
        self.faults = faults
    }

    // MARK: Timers

    /// Starts the checks that run on a clock rather than on frames: idle timeout, WebSocket lifetime, timed drops.
    func startTimers(on loop: any EventLoop) {
        let task = loop.scheduleRepeatedTask(initialDelay: Self.tickInterval, delay: Self.tickInterval) { [weak self] _ in
            self?.tick()
        }
        self.ticker.withLock { $0 = task }
    }

    func stopTimers() {
        self.ticker.withLock { $0.take() }?.cancel()
    }

    func tick() {
        let now = DispatchTime.now().uptimeNanoseconds
        for relay in self.relays.withLock({ Array($0.values) }) {
            if relay.tick(now: now, limits: self.limits) == .idle, self.registry.terminate(relay.sessionID) {
                self.closeSession(relay.sessionID, output: Self.idleTimeoutOutput)
            }
        }
    }

    /// What the client is told when MGS ends an idle session (our wording; AWS's is not in the sources).
    static let idleTimeoutOutput = "Session terminated: no data in either direction for the idle timeout."
    /// What the client is told when the session's agent restarted without it (our model, reference section 12).
    static let agentRestartedOutput = "Session terminated: the agent restarted."

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
        // A (re)started agent holds no session whose data channel it lost: those end now. An agent that
        // only lost its network reconnects its data channels first (within milliseconds; its control
        // channel waits seconds), so its sessions are not caught here.
        let orphans = self.relays.withLock { relays in relays.values.filter { $0.target == instanceID } }.filter(\.agentIsGone)
        for relay in orphans { self.sessionEnded(relay.sessionID, output: Self.agentRestartedOutput) }
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
        let relay = SessionRelay(
            sessionID: session.id, target: session.target, mgs: self, messagesPerSecond: self.limits.messagesPerSecond,
            faultSeed: self.faults.seed(for: session.id))
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
        channel.writeAndFlush(WebSocketMessage.binary(frame), promise: nil)
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
            channel.writeAndFlush(WebSocketMessage.binary(frame), promise: nil)
        }
        // The agent is done with the session: tell the client (a failure's reason becomes the output it prints).
        if let sessionID = payload["TaskId"]?.stringValue {
            let failed = payload["FinalTaskStatus"]?.stringValue == "Failed"
            self.sessionEnded(sessionID, output: failed ? (payload["Output"]?.stringValue ?? "") : "")
        }
    }

    // MARK: Data channels

    /// How many WebSockets each side of a session has opened (1 + reconnects).
    public func attachCount(sessionID: String) throws -> (client: Int, agent: Int) {
        guard let relay = self.relay(sessionID) else { throw AWSAPIError.doesNotExist("Session \(sessionID) does not exist.") }
        return relay.attachCounts
    }

    /// Where the service's relay of a session stands (each side's socket, what is held or queued
    /// for it, what happened to its sockets), for a report when a transfer stalls; for one of the
    /// last sessions that ended, how its end went; nil for an unknown session.
    public func relayStateSummary(sessionID: String) -> String? {
        if let relay = self.relay(sessionID) { return relay.stateSummary }
        return self.endedRelays.withLock { $0.first { $0.sessionID == sessionID } }.map { "ended: \($0.stateSummary)" }
    }

    /// How often the message-rate limit paused each side of a session, and for how long in all.
    public func rateLimitStatistics(sessionID: String) -> RateLimitStatistics? {
        self.relay(sessionID)?.rateLimitStatistics
    }

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
        self.registry.recordEndOutput(sessionID, output)
        guard let relay = self.relays.withLock({ $0.removeValue(forKey: sessionID) }) else { return }
        self.endedRelays.withLock { ended in
            if ended.count == Self.endedRelayMemory { ended.removeFirst() }
            ended.append(relay)
        }
        relay.close(output: output)
        if let control = self.controlChannels.withLock({ $0[relay.target] }), let frame = relay.channelClosedFrame(output: output, agentForm: true) {
            control.writeAndFlush(WebSocketMessage.binary(frame), promise: nil)
        }
    }

    /// `channel_closed` for a client that opens its data channel after the session ended (it
    /// raced the end): the same word the relay would have sent it had it been connected.
    func channelClosedFrame(forEndedSession sessionID: String, clientToken token: String) -> ByteBuffer? {
        guard let output = self.registry.endOutput(ofEndedSession: sessionID, clientToken: token),
            let session = self.registry.session(sessionID)
        else { return nil }
        return SessionRelay.channelClosedFrame(output: output, agentForm: false, target: session.target, sessionID: sessionID)
    }

    func sessionEnded(_ sessionID: String, output: String = "") {
        // Recorded before the end shows, so a client opening in between is told this, not "".
        self.registry.recordEndOutput(sessionID, output)
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
        /// Frames for `channel` not yet written: they go out together, written and flushed once per
        /// tick of its event loop (one task and one send per batch instead of per frame). What is in
        /// flight is bounded by both peers' windows, as before.
        var outbox: [ByteBuffer] = []
        var outboxFlushScheduled = false
        var droppedFrames = 0
        /// This side's sender was stopped because the other side is away with too much held for it.
        var readingSuspended = false
        /// Rate-limit pauses told to this side, and how long they lasted in all (ns).
        var pauses = 0
        var pausedSince: UInt64 = 0
        var pausedTotal: UInt64 = 0
        /// Data messages this side may still send (nil: no limit).
        var bucket: TokenBucket?
        /// Over the limit: told to pause; its frames wait in `held` and leave at the allowed rate.
        var paused = false
        var held = CircularBuffer<ByteBuffer>()
        var refusedWhilePaused = 0
        /// When the current WebSocket attached (monotonic ns): the service closes it after its lifetime.
        var attachedAt: UInt64 = 0
        var everAttached = false
        /// WebSockets this side has opened for the session (1 + reconnects).
        var attachCount = 0
    }

    struct State {
        var client = Side()
        var agent = Side()
        var closed = false
        var agentTerminating = false
        /// Stream data messages relayed so far, and when that count last changed: the idle timeout.
        var dataFrames = 0
        var idleMark: (count: Int, since: UInt64)
        // Faults: the spec looked up for this session (valid for `faultGeneration`) and its state.
        var faultGeneration = -1
        var faultSpec: FaultSpec?
        var toAgent: FrameFaults
        var toClient: FrameFaults
        var framesSinceDrop = 0
        var lastTimedDrop: UInt64
        var delayedInFlight = 0
    }

    private let state: Mutex<State>
    /// What happened to the session's sockets (attach, detach, drops, the end), for a report when
    /// something goes wrong; lifecycle events only, nothing per frame.
    private let events = Mutex<[String]>([])
    private let created = DispatchTime.now().uptimeNanoseconds

    func note(_ event: String) {
        let milliseconds = (DispatchTime.now().uptimeNanoseconds - self.created) / 1_000_000
        self.events.withLock { events in
            if events.count == 64 { events.removeFirst(32) }
            events.append("\(milliseconds) ms \(event)")
        }
    }

    /// Data messages per second per direction; nil: no limit.
    let messagesPerSecond: Int?
    /// Frames waiting out a delay fault, per session; beyond this they are dropped.
    static let delayedFrameLimit = 4096
    /// How long a frame put aside to swap with the next waits for one.
    static let reorderHold = TimeAmount.milliseconds(10)

    init(sessionID: String, target: String, mgs: MGS, messagesPerSecond: Int?, faultSeed: UInt64 = 1) {
        self.sessionID = sessionID
        self.target = target
        self.mgs = mgs
        self.messagesPerSecond = messagesPerSecond
        let now = DispatchTime.now().uptimeNanoseconds
        var state = State(
            idleMark: (0, now), toAgent: FrameFaults(seed: faultSeed), toClient: FrameFaults(seed: faultSeed ^ 0x5555_5555_5555_5555),
            lastTimedDrop: now)
        if let rate = messagesPerSecond {
            state.client.bucket = TokenBucket(rate: Double(rate), capacity: Double(rate))
            state.agent.bucket = TokenBucket(rate: Double(rate), capacity: Double(rate))
        }
        self.state = Mutex(state)
    }

    var stateSummary: String {
        self.state.withLock { state in
            func side(_ side: Side) -> String {
                "\(side.channel == nil ? "away" : "attached") (\(side.attachCount) attaches), held \(side.pending.count), "
                    + "outbox \(side.outbox.count)\(side.outboxFlushScheduled ? " (flush scheduled)" : ""), "
                    + "reading\(side.readingSuspended ? " suspended" : ""), rate-held \(side.held.count)"
            }
            return "closed \(state.closed), data frames \(state.dataFrames); client: \(side(state.client)); agent: \(side(state.agent))"
        } + "; events \(self.events.withLock { $0 })"
    }

    /// Connects one side; frames held for it are flushed in order. A newer connection of the
    /// same side (a resume) replaces the old one.
    func attach(_ role: SessionRegistry.Role, channel: any Channel) -> Bool {
        let now = DispatchTime.now().uptimeNanoseconds
        let (pending, previous, accepted) = self.state.withLock { state -> ([ByteBuffer], (any Channel)?, Bool) in
            guard !state.closed else { return ([], nil, false) }
            func attach(_ side: inout Side) -> ([ByteBuffer], (any Channel)?, Bool) {
                let old = side.channel
                side.requeueOutbox()
                side.channel = channel
                side.attachedAt = now
                side.everAttached = true
                side.attachCount += 1
                side.readingSuspended = false
                defer { side.pending = [] }
                return (side.pending, old, true)
            }
            switch role {
            case .client: return attach(&state.client)
            case .agent: return attach(&state.agent)
            }
        }
        guard accepted else {
            self.note("\(role) attach refused: the session is closed")
            return false
        }
        self.note("\(role) attached\(previous == nil ? "" : ", replacing its previous socket")")
        if let previous, previous !== channel { previous.close(promise: nil) }
        for frame in pending {
            channel.write(WebSocketMessage.binary(frame), promise: nil)
        }
        channel.flush()
        // The other side was held back while this one was away: read it again.
        let suspended = self.state.withLock { state -> (any Channel)? in
            func resume(_ side: inout Side) -> (any Channel)? {
                guard side.readingSuspended else { return nil }
                side.readingSuspended = false
                return side.channel
            }
            return role == .client ? resume(&state.agent) : resume(&state.client)
        }
        if let suspended {
            suspended.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in suspended.read() }
        }
        if role == .agent { self.mgs.registry.markConnected(self.sessionID) }
        return true
    }

    func dropSide(_ role: SessionRegistry.Role) -> Bool {
        // Forget the socket before closing it: frames arriving meanwhile are held for the
        // reconnect instead of being written into a closing socket and lost.
        let channel = self.state.withLock { state -> (any Channel)? in
            switch role {
            case .client:
                defer {
                    state.client.requeueOutbox()
                    state.client.channel = nil
                }
                return state.client.channel
            case .agent:
                defer {
                    state.agent.requeueOutbox()
                    state.agent.channel = nil
                }
                return state.agent.channel
            }
        }
        if let channel {
            self.note("\(role) socket dropped by the service")
            Self.endWebSocket(channel, of: role)
        }
        return channel != nil
    }

    /// The service ending a WebSocket (lifetime, a drop fault, the admin endpoint).
    ///
    /// A client's: what the relay already wrote still reaches it, then FIN; the client's own close
    /// (or 2 s) ends the socket. Closing at once would discard frames queued in the socket, and
    /// the agent, which cannot know the client reconnected, resends lost messages only one per
    /// round-trip timeout: a drop at full speed would stall the session for minutes. An agent's
    /// closes at once: the agent resends its whole window when it reconnects (`resume`), so what
    /// the socket held costs one round trip (and a graceful close measured slower there: agent
    /// drops every second took 5–20 s for the fault test's transfers instead of 3–4). Loss in
    /// transit is what the frame-drop faults are for.
    static func endWebSocket(_ channel: any Channel, of role: SessionRegistry.Role) {
        guard role == .client else {
            channel.close(promise: nil)
            return
        }
        // At most 2 s, however slowly the client reads.
        channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        // Writes complete in order: once this ping is written, so is everything before it.
        channel.writeAndFlush(WebSocketMessage.ping(ByteBuffer(string: "closing"))).whenComplete { _ in
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        }
    }

    func detach(_ role: SessionRegistry.Role, channel: any Channel) {
        self.note("\(role) socket gone")
        let endSession = self.state.withLock { state -> Bool in
            switch role {
            case .client:
                if state.client.channel === channel {
                    state.client.requeueOutbox()
                    state.client.channel = nil
                }
                return false
            case .agent:
                guard state.agent.channel === channel else { return false }
                state.agent.requeueOutbox()
                state.agent.channel = nil
                return state.agentTerminating
            }
        }
        if endSession { self.mgs.sessionEnded(self.sessionID) }
    }

    enum RateDecision { case pass, hold(startDraining: Bool), drop, close }

    var rateLimitStatistics: RateLimitStatistics {
        let now = DispatchTime.now().uptimeNanoseconds
        return self.state.withLock { state in
            func total(_ side: Side) -> Double {
                Double(side.pausedTotal + (side.paused && now > side.pausedSince ? now - side.pausedSince : 0)) / 1e9
            }
            return RateLimitStatistics(
                clientPauses: state.client.pauses, clientPausedSeconds: total(state.client),
                agentPauses: state.agent.pauses, agentPausedSeconds: total(state.agent))
        }
    }

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
            if first {
                side.pauses += 1
                side.pausedSince = now
            }
            side.paused = true
            return .hold(startDraining: first)
        }
        side.refusedWhilePaused += 1
        return side.refusedWhilePaused > rate * 5 ? .close : .drop
    }

    /// Sends held frames as the bucket allows; ends the pause when all are out and the bucket is half full.
    func drainHeld(_ role: SessionRegistry.Role, sender: any Channel) {
        let now = DispatchTime.now().uptimeNanoseconds
        let (destination, resume, wait, closed) = self.state.withLock { state -> ((any Channel)?, Bool, UInt64, Bool) in
            var dataFrames = 0
            defer { state.dataFrames &+= dataFrames }
            /// Frames that may go now join the other side's outbox; its socket comes back when a flush
            /// must be scheduled for it.
            func drain(_ side: inout Side, to other: inout Side) -> ((any Channel)?, Bool, UInt64) {
                guard var bucket = side.bucket else { return (nil, false, 0) }
                var out: [ByteBuffer] = []
                while !side.held.isEmpty, bucket.take(1, now: now) { out.append(side.held.removeFirst()) }
                dataFrames += out.count
                var resume = false
                bucket.refill(now: now)
                if side.held.isEmpty, side.paused, bucket.tokens >= bucket.capacity / 2 {
                    side.paused = false
                    side.pausedTotal += now > side.pausedSince ? now - side.pausedSince : 0
                    side.refusedWhilePaused = 0
                    resume = true
                }
                side.bucket = bucket
                let wait = side.held.isEmpty ? UInt64(100_000_000) : max(bucket.delay(until: 1), 1_000_000)
                if other.channel == nil {
                    for frame in out { Self.hold(frame, in: &other) }
                    return (nil, resume, wait)
                }
                var schedule = false
                for frame in out where other.enqueue(frame) { schedule = true }
                return (schedule ? other.channel : nil, resume, wait)
            }
            guard !state.closed else { return (nil, false, 0, true) }
            switch role {
            case .client:
                let (channel, resume, wait) = drain(&state.client, to: &state.agent)
                return (channel, resume, wait, false)
            case .agent:
                let (channel, resume, wait) = drain(&state.agent, to: &state.client)
                return (channel, resume, wait, false)
            }
        }
        guard !closed else { return }
        if let destination { self.scheduleOutboxFlush(role.peer, on: destination.eventLoop) }
        if resume {
            sender.writeAndFlush(WebSocketMessage.binary(Self.publicationFrame(.startPublication)), promise: nil)
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
    ///
    /// A frame that is not an AgentMessage goes no further: the official parsers trust the header
    /// and can crash on such frames (reference 3.3), so the service must not pass them on.
    func forward(_ frame: ByteBuffer, from role: SessionRegistry.Role, sender: any Channel) {
        guard let header = try? AgentMessage.decode(frame, options: .init(verifiesDigest: false)) else { return }
        let isData = header.messageType.isStreamData
        if isData {
            switch self.rateDecision(for: role, frame: frame, now: DispatchTime.now().uptimeNanoseconds) {
            case .pass:
                break
            case .hold(let startDraining):
                if startDraining {
                    sender.writeAndFlush(WebSocketMessage.binary(Self.publicationFrame(.pausePublication)), promise: nil)
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
        if role == .agent, header.messageType == .agentSessionState {
            // Meant for the service, not the client.
            if let state = try? AgentSessionState(decoding: header.payload), state.sessionState == AgentSessionState.terminating {
                self.state.withLock { $0.agentTerminating = true }
            }
            return
        }
        if self.mgs.faults.isActive {
            self.forwardWithFaults(frame, from: role, isData: isData, sender: sender)
        } else {
            self.deliver(frame, to: role.peer, countingData: isData, sender: sender)
        }
    }

    /// Writes a frame to `role`'s WebSocket, or holds it until that side (re)connects.
    /// `sender` is the sending side's WebSocket: it stops being read while too much is held.
    func deliver(_ frame: ByteBuffer, to role: SessionRegistry.Role, countingData: Bool = false, sender: (any Channel)? = nil) {
        let (destination, suspend) = self.state.withLock { state -> ((any Channel)?, Bool) in
            guard !state.closed else { return (nil, false) }
            // The destination comes back only when a flush must be scheduled for it.
            if countingData { state.dataFrames &+= 1 }
            func holdFor(_ side: inout Side, senderSide: inout Side) -> Bool {
                Self.hold(frame, in: &side)
                guard side.pending.count >= MGS.pendingFrameLimit, !senderSide.readingSuspended, senderSide.channel === sender,
                    sender != nil
                else { return false }
                senderSide.readingSuspended = true
                return true
            }
            switch role {
            case .agent:
                if let channel = state.agent.channel { return (state.agent.enqueue(frame) ? channel : nil, false) }
                return (nil, holdFor(&state.agent, senderSide: &state.client))
            case .client:
                if let channel = state.client.channel { return (state.client.enqueue(frame) ? channel : nil, false) }
                return (nil, holdFor(&state.client, senderSide: &state.agent))
            }
        }
        if suspend, let sender { sender.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in } }
        if let destination { self.scheduleOutboxFlush(role, on: destination.eventLoop) }
    }

    /// Writes what is queued for `role` and flushes, once per tick of that side's event loop: the
    /// task runs after the frames read in this tick are all queued.
    func scheduleOutboxFlush(_ role: SessionRegistry.Role, on loop: any EventLoop) {
        loop.execute { self.flushOutbox(role) }
    }

    func flushOutbox(_ role: SessionRegistry.Role) {
        let (channel, frames) = self.state.withLock { state -> ((any Channel)?, [ByteBuffer]) in
            state.withSide(role) { side in
                side.outboxFlushScheduled = false
                guard let channel = side.channel, !side.outbox.isEmpty else { return (nil, []) }
                defer { side.outbox = [] }
                return (channel, side.outbox)
            }
        }
        guard let channel else { return }
        for frame in frames { channel.write(WebSocketMessage.binary(frame), promise: nil) }
        channel.flush()
    }

    // MARK: Faults

    struct FaultPlan {
        var frames: [ByteBuffer] = []
        /// Release times (monotonic ns) when a delay fault is set, one per frame.
        var releases: [UInt64]?
        var heldForReorder: UInt64?
        var dropSide: FaultSpec.WebSocketDrop.Side?
    }

    /// The slow path, taken only while some fault is set anywhere.
    func forwardWithFaults(_ frame: ByteBuffer, from role: SessionRegistry.Role, isData: Bool, sender: any Channel) {
        let now = DispatchTime.now().uptimeNanoseconds
        let plan = self.state.withLock { state -> FaultPlan in
            if isData { state.dataFrames &+= 1 }
            self.refreshFaults(&state)
            guard let spec = state.faultSpec else { return FaultPlan(frames: [frame]) }
            var plan = FaultPlan()
            if spec.touchesFrames, spec.acts(on: role) {
                let outcome = role == .client ? state.toAgent.apply(frame, spec: spec) : state.toClient.apply(frame, spec: spec)
                plan.frames = outcome.frames
                plan.heldForReorder = outcome.heldForReorder
                plan.releases = self.releaseTimes(&state, for: &plan.frames, from: role, spec: spec, now: now)
            } else {
                plan.frames = [frame]
            }
            if let drop = spec.webSocketDrop, case .everyFrames(let count) = drop.trigger {
                state.framesSinceDrop += 1
                if state.framesSinceDrop >= count {
                    state.framesSinceDrop = 0
                    plan.dropSide = drop.side
                }
            }
            return plan
        }
        self.emit(plan.frames, releases: plan.releases, to: role.peer, on: sender.eventLoop)
        if let id = plan.heldForReorder {
            sender.eventLoop.scheduleTask(in: Self.reorderHold) { self.releaseReorderHold(id, from: role, loop: sender.eventLoop) }
        }
        if let side = plan.dropSide { _ = self.dropSide(side == .client ? .client : .agent) }
    }

    /// Release times for a delay fault (nil when none is set); frames over the in-flight bound are dropped.
    private func releaseTimes(
        _ state: inout State, for frames: inout [ByteBuffer], from role: SessionRegistry.Role, spec: FaultSpec, now: UInt64
    ) -> [UInt64]? {
        guard spec.delayMilliseconds > 0 || spec.jitterMilliseconds > 0 else { return nil }
        let room = max(0, Self.delayedFrameLimit - state.delayedInFlight)
        if frames.count > room { frames.removeLast(frames.count - room) }
        state.delayedInFlight += frames.count
        return role == .client
            ? state.toAgent.releaseTimes(count: frames.count, spec: spec, now: now)
            : state.toClient.releaseTimes(count: frames.count, spec: spec, now: now)
    }

    private func emit(_ frames: [ByteBuffer], releases: [UInt64]?, to role: SessionRegistry.Role, on loop: any EventLoop) {
        guard let releases else {
            for frame in frames { self.deliver(frame, to: role) }
            return
        }
        for (frame, release) in zip(frames, releases) {
            // Strictly increasing deadlines on one loop: the frames leave in order.
            loop.scheduleTask(deadline: NIODeadline.uptimeNanoseconds(release)) {
                self.state.withLock { $0.delayedInFlight -= 1 }
                self.deliver(frame, to: role)
            }
        }
    }

    /// Nobody came to swap places with a held frame: it goes alone.
    private func releaseReorderHold(_ id: UInt64, from role: SessionRegistry.Role, loop: any EventLoop) {
        let now = DispatchTime.now().uptimeNanoseconds
        let plan = self.state.withLock { state -> FaultPlan in
            let frame = role == .client ? state.toAgent.releaseHeld(id: id) : state.toClient.releaseHeld(id: id)
            guard let frame else { return FaultPlan() }
            var plan = FaultPlan(frames: [frame])
            if let spec = state.faultSpec {
                plan.releases = self.releaseTimes(&state, for: &plan.frames, from: role, spec: spec, now: now)
            }
            return plan
        }
        self.emit(plan.frames, releases: plan.releases, to: role.peer, on: loop)
    }

    /// Looks the session's spec up again only when the fault configuration changed.
    private func refreshFaults(_ state: inout State) {
        let generation = self.mgs.faults.generation
        guard state.faultGeneration != generation else { return }
        state.faultGeneration = generation
        state.faultSpec = self.mgs.faults.spec(for: self.sessionID)
    }

    /// Frame-fault counters, for tests and the admin endpoint.
    var faultCounts: (dropped: Int, duplicated: Int, reordered: Int, corrupted: Int) {
        self.state.withLock { state -> (dropped: Int, duplicated: Int, reordered: Int, corrupted: Int) in
            let (a, c) = (state.toAgent, state.toClient)
            let dropped: Int = a.dropped + c.dropped
            let duplicated: Int = a.duplicated + c.duplicated
            let reordered: Int = a.reordered + c.reordered
            let corrupted: Int = a.corrupted + c.corrupted
            return (dropped, duplicated, reordered, corrupted)
        }
    }

    // MARK: Clock-driven checks

    enum TickOutcome { case none, idle }

    /// Idle timeout, WebSocket lifetime and timed drops; called every `MGS.tickInterval`.
    func tick(now: UInt64, limits: LimitsProfile) -> TickOutcome {
        var closing: [SessionRegistry.Role] = []
        let outcome = self.state.withLock { state -> TickOutcome in
            guard !state.closed else { return .none }
            if state.dataFrames != state.idleMark.count {
                state.idleMark = (state.dataFrames, now)
            } else if now.elapsed(since: state.idleMark.since) >= UInt64(limits.idleTimeoutSeconds) * 1_000_000_000 {
                return .idle
            }
            if let lifetime = limits.webSocketLifetimeSeconds.map({ UInt64($0) * 1_000_000_000 }) {
                for role in [SessionRegistry.Role.client, .agent] {
                    state.withSide(role) { side in
                        guard side.channel != nil, now.elapsed(since: side.attachedAt) >= lifetime else { return }
                        side.attachedAt = now  // closing: not again on the next tick
                        closing.append(role)
                    }
                }
            }
            if self.mgs.faults.isActive {
                self.refreshFaults(&state)
                if let drop = state.faultSpec?.webSocketDrop, case .everySeconds(let seconds) = drop.trigger,
                    now.elapsed(since: state.lastTimedDrop) >= UInt64(seconds) * 1_000_000_000
                {
                    state.lastTimedDrop = now
                    let role: SessionRegistry.Role = drop.side == .client ? .client : .agent
                    if state.withSide(role, { $0.channel != nil }) { closing.append(role) }
                }
            }
            return .none
        }
        // No `channel_closed`: the side reconnects (ResumeSession for a client). As for any drop,
        // the socket is forgotten first, so what comes meanwhile waits for the new one.
        for role in closing { _ = self.dropSide(role) }
        return outcome
    }

    /// Stream data messages relayed so far.
    var dataFrameCount: Int { self.state.withLock { $0.dataFrames } }

    var attachCounts: (client: Int, agent: Int) {
        self.state.withLock { ($0.client.attachCount, $0.agent.attachCount) }
    }

    /// The agent had the data channel and lost it.
    var agentIsGone: Bool {
        self.state.withLock { !$0.closed && $0.agent.everAttached && $0.agent.channel == nil }
    }

    private static func hold(_ frame: ByteBuffer, in side: inout Side) {
        if side.pending.count >= MGS.pendingFrameHardLimit {
            side.pending.removeFirst()
            side.droppedFrames += 1
        }
        side.pending.append(frame)
    }

    func channelClosedFrame(output: String, agentForm: Bool) -> ByteBuffer? {
        Self.channelClosedFrame(output: output, agentForm: agentForm, target: self.target, sessionID: self.sessionID)
    }

    static func channelClosedFrame(output: String, agentForm: Bool, target: String, sessionID: String) -> ByteBuffer? {
        let payload = ChannelClosed(
            messageID: MessageID.random().description,
            createdDate: ISO8601DateFormatter().string(from: Date()),
            destinationID: target, sessionID: sessionID,
            output: agentForm ? nil : output)
        let message = AgentMessage(
            messageType: .channelClosed, createdDate: MGS.nowMilliseconds(), sequenceNumber: 0, flags: .control,
            messageID: .random(), payloadType: .undefined, payload: payload.encoded())
        return try? message.encoded()
    }

    /// Sends `channel_closed` to both sides and closes their sockets.
    func close(output: String) {
        let (client, agent, clientQueued, agentQueued) = self.state.withLock {
            state -> ((any Channel)?, (any Channel)?, [ByteBuffer], [ByteBuffer]) in
            state.closed = true
            defer {
                state.client = Side()
                state.agent = Side()
            }
            return (state.client.channel, state.agent.channel, state.client.outbox, state.agent.outbox)
        }
        for (channel, agentForm, queued) in [(client, false, clientQueued), (agent, true, agentQueued)] {
            guard let channel, let frame = self.channelClosedFrame(output: output, agentForm: agentForm) else { continue }
            // What was relayed before the end still goes, ahead of `channel_closed`.
            for queuedFrame in queued { channel.write(WebSocketMessage.binary(queuedFrame), promise: nil) }
            let side = agentForm ? "agent" : "client"
            self.note("ending: channel_closed to the \(side) after \(queued.count) queued frames")
            channel.writeAndFlush(WebSocketMessage.binary(frame)).whenComplete { result in
                if case .failure(let error) = result { self.note("channel_closed to the \(side) not written: \(error)") }
                channel.close(promise: nil)
            }
        }
    }
}

extension SessionRelay.Side {
    /// Queues a frame for the connected socket; true when the caller must schedule the flush.
    mutating func enqueue(_ frame: ByteBuffer) -> Bool {
        self.outbox.append(frame)
        guard !self.outboxFlushScheduled else { return false }
        self.outboxFlushScheduled = true
        return true
    }

    /// The socket is gone or replaced: what was queued for it is held, ahead of anything held since.
    mutating func requeueOutbox() {
        guard !self.outbox.isEmpty else { return }
        self.pending.insert(contentsOf: self.outbox, at: 0)
        self.outbox = []
    }
}

extension SessionRelay.State {
    mutating func withSide<T>(_ role: SessionRegistry.Role, _ body: (inout SessionRelay.Side) -> T) -> T {
        switch role {
        case .client: return body(&self.client)
        case .agent: return body(&self.agent)
        }
    }
}

extension SessionRegistry.Role {
    /// The other end of a session.
    var peer: Self { self == .client ? .agent : .client }
}

extension UInt64 {
    /// Nanoseconds from `start` to this instant; 0 if `start` is later (clock reads from several threads).
    func elapsed(since start: UInt64) -> UInt64 { self > start ? self - start : 0 }
}

/// What the service's message-rate limit did to one session.
public struct RateLimitStatistics: Sendable, Hashable {
    public var clientPauses: Int
    public var clientPausedSeconds: Double
    public var agentPauses: Int
    public var agentPausedSeconds: Double
}
