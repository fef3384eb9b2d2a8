import Foundation
import Mux
import NIOCore
import NIOPosix
import WebSocketTransport
import SSMProtocol

/// What the simulated agent needs to know to run one session, from the `interactive_shell` task.
struct AgentTask: Sendable {
    var sessionID: String
    var sessionType: String
    var properties: JSONValue
    var instance: LocalSSMConfiguration.Instance
    var limits: LimitsProfile
    /// Refused ports (fault injection) are looked up here when dialing.
    var faults: FaultInjector
    /// The agent run this task belongs to: a killed agent's sessions never reconnect or report.
    var epoch: Int
}

/// One session's data channel on the agent side, loop-confined to its WebSocket's event loop:
/// the agent's sequencing/ack/resend behaviour, the handshake, and the Port plugin (basic and
/// smux-multiplexed), with one destination connection per stream on the same loop.
final class AgentSessionHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketMessage
    typealias OutboundOut = WebSocketMessage

    /// Client versions at or above this get the mux session for LocalPortForwarding (agent rule, reference 6.6).
    static let muxClientVersion = "1.1.70"
    /// Agents up to this release have no mux port sessions.
    static let firstMuxAgentVersion = "3.0.196.0"
    /// Above this the agent turns smux keepalive off.
    static let keepAliveOffClientVersion = "1.2.331.0"
    /// Unacknowledged output the agent lets itself have before it stops reading destinations. The real
    /// agent allows 100,000 messages; 4096 keeps memory bounded (about 5 MiB a session) and covers
    /// about 35 ms of round trip at 120 MB/s. With the emulator and a client sharing two cores the
    /// round trip under load is several milliseconds, and a fuller pipeline batches more per wakeup:
    /// one unlimited stream ran near 85 MB/s with 512, 105 with 2048, 115 with 4096. A resume resends
    /// the window; acknowledged messages leave it, so even drops every 1,500 frames (the fault
    /// tests) make progress.
    static let outputWindow = 4096
    /// Bytes written to destinations but not yet flushed to their sockets before input is refused ("not ready").
    static let destinationBacklogLimit = 4 << 20

    enum Phase { case handshaking, running, ended }
    enum Plugin {
        case none
        /// The smux session itself is `AgentSessionHandler.smux`: mutated in place there, never copied.
        case mux
        case basic
        /// Standard_Stream and InteractiveCommands: a process on a pty (no handshake without KMS).
        case terminal(PseudoTerminal)
    }

    let task: AgentTask
    /// The token of the current WebSocket (a reconnect brings a new one).
    var token: String
    let onEnd: @Sendable (_ sessionID: String, _ failure: String?) -> Void
    /// The WebSocket went away with the session still running: reconnect, as the agent does (reference 2.5).
    let onDisconnect: @Sendable (_ handler: NIOLoopBound<AgentSessionHandler>, _ loop: any EventLoop) -> Void
    /// Set once the first OpenDataChannel went out: later WebSockets resume instead of starting over.
    var opened = false
    var reliable = ReliableStream(configuration: .agent)
    var phase = Phase.handshaking
    var plugin = Plugin.none
    /// Set with `plugin = .mux`. Only mutating calls reach it: a getter on a struct stored in a
    /// class, across modules, copies the whole struct (every reference retained and released).
    var smux: SmuxSession?
    var clientVersion = ""
    var handshakeStarted: UInt64 = 0
    var paused = false
    var context: ChannelHandlerContext?
    /// The session's loop: its WebSockets and destinations all live on it, also while disconnected.
    var loop: (any EventLoop)?
    var retransmitTask: Scheduled<Void>?
    var pumpScheduled = false
    /// Writes made on the WebSocket or destinations wait for one flush per event-loop tick.
    var flushScheduled = false
    /// Message ids: one system random call per session, not one per message.
    var random = FastRandom()
    var handshakeTimeout: Scheduled<Void>?

    // Destinations: for mux one per stream, for basic mode a single one under stream 0.
    var destinations: [UInt32: DestinationHandler] = [:]
    var pendingToDestination: [UInt32: [ByteBuffer]] = [:]
    /// Destination bytes not yet taken by smux or a message; bounded because destination reads pause.
    var pendingFromDestination: [UInt32: CircularBuffer<ByteBuffer>] = [:]
    /// Streams whose destination closed while its bytes still wait to enter smux: FIN after them.
    var finAfterPending: Set<UInt32> = []
    var destinationBacklog = 0

    /// Pacing (aws limits): bytes, charged per message at the full read size.
    var pacing: TokenBucket?

    init(
        task: AgentTask, token: String, onEnd: @escaping @Sendable (String, String?) -> Void,
        onDisconnect: @escaping @Sendable (NIOLoopBound<AgentSessionHandler>, any EventLoop) -> Void
    ) {
        self.task = task
        self.token = token
        self.onEnd = onEnd
        self.onDisconnect = onDisconnect
        self.pacing = task.limits.agentBytesPerSecond.map { TokenBucket(rate: Double($0), capacity: Double($0) / 10) }
    }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    var isMuxRequested: Bool { self.task.properties["type"]?.stringValue == "LocalPortForwarding" }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.loop = context.eventLoop
        guard context.channel.isActive else { return }
        if self.opened {
            self.resume(context: context)
        } else {
            self.opened = true
            self.begin(context: context)
        }
    }

    func writeOpenDataChannel(context: ChannelHandlerContext) {
        let open = OpenDataChannelInput(
            requestID: UUID().uuidString.lowercased(), tokenValue: self.token, role: .agent(instanceID: self.task.instance.id))
        context.write(self.wrapOutboundOut(WebSocketMessage.text(open.encoded())), promise: nil)
    }

    func begin(context: ChannelHandlerContext) {
        self.writeOpenDataChannel(context: context)
        let state = AgentSessionState(sessionState: AgentSessionState.connected, sessionID: self.task.sessionID)
        self.writeControl(.agentSessionState, payload: state.encoded(), context: context)
        context.flush()
        switch self.task.sessionType {
        case SessionTypeName.port:
            break
        case SessionTypeName.standardStream, SessionTypeName.interactiveCommands:
            self.startTerminal(context: context)
            return
        default:
            self.end(failure: "session type \(self.task.sessionType) is not supported by this agent simulator")
            return
        }
        self.handshakeStarted = Self.now()
        let request = HandshakeRequest(
            agentVersion: self.task.instance.agentVersion,
            requestedClientActions: [.sessionType(SessionTypeName.port, properties: self.task.properties)])
        self.sendStream(.handshakeRequest, request.encoded())
        self.handshakeTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(15)) {
            self.end(failure: "handshake timed out: the client never answered (update your plugin)")
        }
    }

    /// A new WebSocket after a drop: sequence state is kept; `Pause` is cleared, as the agent does, and
    /// what is still unacknowledged goes again at once (the real agent leaves that to its resend
    /// timer, one message per RTO; here the whole window goes, so a drop costs one round trip).
    func resume(context: ChannelHandlerContext) {
        self.writeOpenDataChannel(context: context)
        self.paused = false
        for frame in self.reliable.unacknowledgedFrames {
            context.write(self.wrapOutboundOut(WebSocketMessage.binary(frame)), promise: nil)
        }
        context.flush()
        self.scheduleRetransmission()
        self.pump()
    }

    func channelInactive(context: ChannelHandlerContext) {
        defer { context.fireChannelInactive() }
        guard self.phase != .ended else { return }
        // Lost the WebSocket, not the session: stop reading destinations until a new one is up.
        self.context = nil
        self.retransmitTask?.cancel()
        self.retransmitTask = nil
        for destination in self.destinations.values { destination.setReading(false) }
        if case .terminal(let terminal) = self.plugin { terminal.pauseReading() }
        self.onDisconnect(NIOLoopBound(self, eventLoop: context.eventLoop), context.eventLoop)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A read error is a lost connection to the agent: it reconnects (channelInactive follows).
        context.close(promise: nil)
    }

    // MARK: Shell and commands

    /// The terminal's output not yet sent; reading the pty pauses while it is large.
    var terminalOutput = CircularBuffer<ByteBuffer>()
    var terminalExitCode: Int32?

    func startTerminal(context: ChannelHandlerContext) {
        var arguments = ["/bin/sh", "-l"]
        if self.task.sessionType == SessionTypeName.interactiveCommands {
            guard let command = self.task.properties["linux"]?["commands"]?.stringValue, !command.isEmpty else {
                self.end(failure: "InteractiveCommands needs a command")
                return
            }
            arguments = ["/bin/sh", "-c", command]
        }
        do {
            let terminal = try PseudoTerminal.spawn(
                arguments: arguments, environment: ProcessInfo.processInfo.environment, columns: 80, rows: 24,
                on: context.eventLoop,
                onOutput: { [weak self] output in
                    guard let self else { return }
                    self.terminalOutput.append(output)
                    self.pump()
                },
                onExit: { [weak self] code in
                    self?.terminalExited(code)
                })
            self.plugin = .terminal(terminal)
            self.phase = .running
        } catch {
            self.end(failure: "cannot start the shell: \(error)")
        }
    }

    func terminalExited(_ code: Int32) {
        self.terminalExitCode = code
        self.drainThenEnd(reportTerminating: true)
    }

    /// Like the agent's PrepareToCloseChannel: poll every 10 ms, at most 2 s, until everything read
    /// has been sent and acknowledged; then (shells) report Terminating, and close.
    func drainThenEnd(reportTerminating: Bool) {
        self.pump()
        guard let loop = self.loop else { return }
        let deadline = NIODeadline.now() + .seconds(2)
        func check() {
            guard self.phase != .ended else { return }
            if (!self.hasPendingOutput && self.reliable.unacknowledgedCount == 0) || NIODeadline.now() > deadline {
                if reportTerminating, let context = self.context {
                    let state = AgentSessionState(sessionState: AgentSessionState.terminating, sessionID: self.task.sessionID)
                    self.writeControl(.agentSessionState, payload: state.encoded(), context: context)
                    context.flush()
                }
                self.end(failure: nil)
            } else {
                loop.assumeIsolated().scheduleTask(in: .milliseconds(10)) { check() }
            }
        }
        check()
    }

    /// Ends the session: destinations closed, the WebSocket closed, the control channel told.
    func end(failure: String?) {
        guard self.phase != .ended else { return }
        if case .terminal(let terminal) = self.plugin, self.terminalExitCode == nil { terminal.terminate() }
        self.phase = .ended
        self.retransmitTask?.cancel()
        self.handshakeTimeout?.cancel()
        for destination in self.destinations.values { destination.close() }
        self.destinations = [:]
        self.context?.close(promise: nil)
        self.onEnd(self.task.sessionID, failure)
    }

    var stateSummary: String {
        let plugin =
            switch self.plugin {
            case .none: "none"
            case .mux: "mux"
            case .basic: "basic"
            case .terminal: "terminal"
            }
        let destinations = self.destinations.keys.sorted().map { stream in
            let destination = self.destinations[stream]!
            return "\(stream) \(destination.isConnected ? "connected" : "dialing")\(destination.reading ? "" : " not reading")"
        }
        let toDestinations = self.pendingToDestination.values.joined().reduce(0) { $0 + $1.readableBytes }
        let fromDestinations = self.pendingFromDestination.values.joined().reduce(0) { $0 + $1.readableBytes }
        return "phase \(self.phase), plugin \(plugin), WebSocket \(self.context == nil ? "away" : "up"), paused \(self.paused), "
            + "unacknowledged output \(self.reliable.unacknowledgedCount), next input expected \(self.reliable.expectedIncomingSequence), "
            + "destinations [\(destinations.joined(separator: ", "))], waiting to go to destinations \(toDestinations) B, "
            + "read from destinations not yet sent \(fromDestinations) B, destination backlog \(self.destinationBacklog) B"
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload: ByteBuffer
        switch self.unwrapInboundIn(data) {
        case .binary(let data), .text(let data):
            payload = data
        case .ping, .pong:
            return  // the codec answers pings; a service close ends the socket, and the agent reconnects
        }
        // The real agent never checks digests. This one does only while a fault is set, so corrupted
        // frames are visible in fault tests without costing a SHA-256 per message otherwise.
        let options = AgentMessage.DecodingOptions(verifiesDigest: self.task.faults.isActive)
        guard let message = try? AgentMessage.decode(payload, options: options) else { return }
        switch message.messageType {
        case .acknowledge:
            if let ack = try? Acknowledgement(decoding: message.payload) {
                self.reliable.acknowledge(sequenceNumber: ack.acknowledgedSequenceNumber, now: Self.now())
            }
            self.paused = false
            self.pump()
        case .inputStreamData:
            self.paused = false
            self.receiveStream(message, context: context)
        case .channelClosed:
            self.end(failure: nil)
        case .pausePublication:
            self.paused = true
        case .startPublication:
            self.paused = false
            self.pump()
        default:
            break
        }
    }

    func receiveStream(_ message: AgentMessage, context: ChannelHandlerContext) {
        var ready = self.destinationBacklog < Self.destinationBacklogLimit
        if case .terminal(let terminal) = self.plugin, terminal.pendingWriteBytes > 1 << 20 { ready = false }
        let reception = self.reliable.receive(message, ready: ready)
        if let ack = reception.acknowledgement {
            let frame = ack.frame(messageID: .random(using: &self.random), createdDate: MGS.nowMilliseconds(), allocator: context.channel.allocator)
            context.write(self.wrapOutboundOut(WebSocketMessage.binary(frame)), promise: nil)
            self.scheduleFlush()
        }
        for delivered in reception.deliverable {
            self.process(delivered)
            if self.phase == .ended { return }
        }
        self.pump()
    }

    func process(_ message: AgentMessage) {
        switch self.phase {
        case .handshaking:
            // Before the handshake completes only its answer counts; anything else is acked and discarded.
            guard message.payloadType == .handshakeResponse, let response = try? HandshakeResponse(decoding: message.payload) else { return }
            if let failed = response.processedClientActions.first(where: { $0.actionStatus != ProcessedClientAction.Status.success.rawValue }) {
                self.end(failure: "client failed handshake action \(failed.actionType): \(failed.error)")
                return
            }
            self.handshakeTimeout?.cancel()
            self.clientVersion = response.clientVersion
            let took = Int64(Self.now() - self.handshakeStarted)
            self.sendStream(.handshakeComplete, HandshakeComplete(handshakeTimeToComplete: took, customerMessage: "").encoded())
            self.startPlugin()
        case .running:
            if case .terminal(let terminal) = self.plugin {
                switch message.payloadType {
                case .output: terminal.write(message.payload)
                case .size:
                    if let size = try? TerminalSize(decoding: message.payload) {
                        terminal.resize(columns: UInt16(clamping: size.columns), rows: UInt16(clamping: size.rows))
                    }
                default: break
                }
                return
            }
            switch message.payloadType {
            case .output: self.input(message.payload)
            case .flag:
                switch try? PortFlag(decoding: message.payload) {
                case .terminateSession: self.end(failure: nil)
                case .disconnectToPort:
                    if case .basic = self.plugin { self.destinations[0]?.close() }
                default: break
                }
            default: break
            }
        case .ended:
            break
        }
    }

    func startPlugin() {
        self.phase = .running
        // Mux needs both a client that asks for it and an agent that has it (releases after
        // 3.0.196.0, the version clients test for): an older simulated agent runs basic sessions.
        if self.isMuxRequested, compareVersions(self.clientVersion, Self.muxClientVersion) >= 0,
            compareVersions(self.task.instance.agentVersion, Self.firstMuxAgentVersion) > 0
        {
            var configuration = SmuxConfiguration()
            configuration.keepAlive = compareVersions(self.clientVersion, Self.keepAliveOffClientVersion) > 0 ? nil : .smuxDefault
            self.smux = SmuxSession(role: .server, configuration: configuration)
            self.plugin = .mux
        } else {
            self.plugin = .basic
            self.dial(stream: 0)
        }
    }

    /// Client bytes: smux for mux sessions, raw destination bytes for basic ones.
    func input(_ payload: ByteBuffer) {
        switch self.plugin {
        case .mux:
            var events: [SmuxEvent] = []
            do {
                try self.smux!.receive(payload, into: &events)
            } catch {
                self.end(failure: "smux protocol error: \(error)")
                return
            }
            for event in events {
                switch event {
                case .streamOpened(let id): self.dial(stream: id.rawValue)
                case .data(let id, let data): self.toDestination(stream: id.rawValue, data)
                case .streamClosedByPeer(let id):
                    // Like the real agent: a FIN ends the destination connection outright.
                    self.destinations[id.rawValue]?.close()
                    self.closeMuxStream(id.rawValue)
                case .streamRefused, .keepAlive: break
                }
            }
        case .basic:
            if self.destinations[0] == nil { self.dial(stream: 0) }
            self.toDestination(stream: 0, payload)
        case .none, .terminal:
            break
        }
    }

    // MARK: Destinations

    var destinationHost: String {
        if let host = self.task.properties["host"]?.stringValue, !host.isEmpty {
            return host == "localhost" ? self.task.instance.localhostAddress : host
        }
        return self.task.instance.localhostAddress
    }

    var destinationPort: Int { Int(self.task.properties["portNumber"]?.stringValue ?? "") ?? 0 }

    func dial(stream: UInt32) {
        guard let context = self.context else { return }
        let handler = DestinationHandler(session: self, stream: stream)
        self.destinations[stream] = handler
        if self.task.faults.refuses(port: self.destinationPort, sessionID: self.task.sessionID) {
            // Fault injection: the dial fails as a closed port makes it fail, a moment later.
            context.eventLoop.assumeIsolated().execute {
                self.destinationFailed(stream, error: IOError(errnoCode: ECONNREFUSED, reason: "connect"))
            }
            return
        }
        let address: SocketAddress
        do {
            address = try SocketAddress.resolvedWithoutDispatch(host: self.destinationHost, port: self.destinationPort)
        } catch {
            self.destinationFailed(stream, error: error)
            return
        }
        let loop = context.eventLoop
        // The destination lives on this session's loop, so the handler never leaves it.
        let boundHandler = NIOLoopBound(handler, eventLoop: loop)
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelOption(.allowRemoteHalfClosure, value: false)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(boundHandler.value)
                }
            }
            .connect(to: address)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success: self.destinationConnected(stream)
                case .failure(let error): self.destinationFailed(stream, error: error)
                }
            }
    }

    func destinationConnected(_ stream: UInt32) {
        guard let destination = self.destinations[stream] else { return }
        destination.isConnected = true
        for data in self.pendingToDestination.removeValue(forKey: stream) ?? [] {
            destination.write(data)
        }
        destination.flush()
    }

    func destinationFailed(_ stream: UInt32, error: any Error) {
        self.destinations[stream] = nil
        self.pendingToDestination[stream] = nil
        switch self.plugin {
        case .mux:
            self.sendStream(.flag, PortFlag.connectToPortError.encoded())
            self.closeMuxStream(stream)
            self.pump()
        case .basic:
            self.end(failure: "Unable to connect to specified port: \(error)")
        case .none, .terminal:
            break
        }
    }

    func toDestination(stream: UInt32, _ data: ByteBuffer) {
        guard let destination = self.destinations[stream] else { return }
        if destination.isConnected {
            destination.write(data)
            self.scheduleFlush()
        } else {
            self.pendingToDestination[stream, default: []].append(data)
        }
    }

    /// Bytes read from a destination: into smux (mux) or straight into output messages (basic).
    func fromDestination(stream: UInt32, _ data: ByteBuffer) {
        self.pendingFromDestination[stream, default: CircularBuffer()].append(data)
        self.pump()
    }

    func destinationClosed(stream: UInt32) {
        guard self.destinations.removeValue(forKey: stream) != nil else { return }
        switch self.plugin {
        case .mux:
            // Like the real agent, everything the destination sent goes out before the FIN.
            if self.pendingFromDestination[stream] != nil { self.finAfterPending.insert(stream) } else { self.closeMuxStream(stream) }
        case .basic:
            // Stdio sessions (AWS-StartSSHSession) end with the destination; LocalPortForwarding re-dials on demand.
            if !self.isMuxRequested { self.drainThenEnd(reportTerminating: false) }
        case .none, .terminal: break
        }
        self.pump()
    }

    func closeMuxStream(_ stream: UInt32) {
        guard case .mux = self.plugin else { return }
        _ = self.smux!.closeStream(SmuxStreamID(stream))
    }

    // MARK: Outbound

    /// Moves destination bytes into output messages while the window, pacing and publication allow.
    func pump() {
        guard self.phase == .running, let context = self.context else { return }
        let chunk = self.task.limits.agentReadChunk
        var wrote = false
        while !self.paused, self.reliable.unacknowledgedCount < Self.outputWindow, self.paceAllows(chunk) {
            var payload: ByteBuffer?
            switch self.plugin {
            case .mux:
                for (stream, var queue) in self.pendingFromDestination {
                    while var data = queue.first {
                        switch self.smux!.write(data, to: SmuxStreamID(stream)) {
                        case .accepted(let count):
                            data.moveReaderIndex(forwardBy: count)
                        default:
                            data.clear()  // the stream is gone: nobody to deliver to
                        }
                        if data.readableBytes == 0 {
                            queue.removeFirst()
                        } else {
                            queue[queue.startIndex] = data
                            break
                        }
                    }
                    self.pendingFromDestination[stream] = queue.isEmpty ? nil : queue
                }
                for stream in self.finAfterPending where self.pendingFromDestination[stream] == nil {
                    self.finAfterPending.remove(stream)
                    _ = self.smux!.closeStream(SmuxStreamID(stream))
                }
                payload = self.smux!.nextOutbound(maximumBytes: chunk)
                _ = self.smux!.drainFinishedStreams()
                _ = self.smux!.drainWritableStreams()
            case .basic:
                if var queue = self.pendingFromDestination[0], var first = queue.first {
                    payload = first.readSlice(length: min(chunk, first.readableBytes))
                    if first.readableBytes == 0 { queue.removeFirst() } else { queue[queue.startIndex] = first }
                    self.pendingFromDestination[0] = queue.isEmpty ? nil : queue
                }
            case .terminal:
                if var first = self.terminalOutput.first {
                    var piece = first.getSlice(at: first.readerIndex, length: min(chunk, first.readableBytes))!
                    if piece.readableBytes < first.readableBytes {
                        // Cut at a character boundary, as the agent does: the tail goes in the next message.
                        let complete = splitAtUTF8Boundary(&piece)
                        if complete.readableBytes > 0 { piece = complete }
                    }
                    payload = first.readSlice(length: piece.readableBytes)
                    if first.readableBytes == 0 { self.terminalOutput.removeFirst() } else { self.terminalOutput[self.terminalOutput.startIndex] = first }
                }
            case .none:
                break
            }
            guard let payload, payload.readableBytes > 0 else { break }
            self.consumePacing(payload.readableBytes)
            self.sendStream(.output, payload, flush: false)
            wrote = true
        }
        if wrote { self.scheduleFlush() }
        self.updateDestinationReads()
        if self.hasPendingOutput, !self.pumpScheduled, !self.paused, self.reliable.unacknowledgedCount < Self.outputWindow {
            // Held back by pacing: come back when the bucket holds one more message.
            self.pumpScheduled = true
            let wait = self.pacing?.delay(until: Double(self.task.limits.agentReadChunk)) ?? 0
            context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(max(wait, 100_000)))) {
                self.pumpScheduled = false
                self.pump()
            }
        }
    }

    var hasPendingOutput: Bool {
        if !self.pendingFromDestination.isEmpty || !self.terminalOutput.isEmpty { return true }
        if case .mux = self.plugin { return self.smux!.hasPendingOutboundInPlace() }
        return false
    }

    /// Destinations are read only while their bytes can move on: bounded memory both ways.
    func updateDestinationReads() {
        let roomy = self.reliable.unacknowledgedCount < Self.outputWindow && !self.paused
        if case .terminal(let terminal) = self.plugin {
            let backlog = self.terminalOutput.reduce(0) { $0 + $1.readableBytes }
            if roomy && backlog < 64 * 1024 { terminal.resumeReading() } else { terminal.pauseReading() }
        }
        for (stream, destination) in self.destinations {
            let backlog = self.pendingFromDestination[stream]?.reduce(0) { $0 + $1.readableBytes } ?? 0
            destination.setReading(roomy && backlog < 64 * 1024)
        }
    }

    func paceAllows(_ bytes: Int) -> Bool {
        guard var pacing = self.pacing else { return true }
        pacing.refill(now: Self.now())
        self.pacing = pacing
        return pacing.tokens >= Double(self.task.limits.agentReadChunk)
    }

    /// Charged per message at the full read size: the real agent sleeps after every read,
    /// whatever it read, so it stays under about 1000 messages per second as well as 1 MB/s.
    func consumePacing(_ bytes: Int) {
        guard var pacing = self.pacing else { return }
        _ = pacing.take(Double(max(bytes, self.task.limits.agentReadChunk)), now: Self.now())
        self.pacing = pacing
    }

    /// Numbers and records a stream message, and writes it unless paused or disconnected (then
    /// it goes with the resend after the reconnect).
    func sendStream(_ type: PayloadType, _ payload: ByteBuffer, flush: Bool = true) {
        guard
            let frame = try? self.reliable.send(
                .outputStreamData, payloadType: type, payload: payload, messageID: .random(using: &self.random),
                createdDate: MGS.nowMilliseconds(), now: Self.now(), allocator: self.context?.channel.allocator ?? ByteBufferAllocator())
        else { return }
        if let context = self.context, !self.paused {
            context.write(self.wrapOutboundOut(WebSocketMessage.binary(frame)), promise: nil)
            if flush { context.flush() }
        }
        self.scheduleRetransmission()
    }

    /// One flush of the WebSocket and every destination with writes, after what this event-loop
    /// tick reads: acks, output and destination bytes of a whole read batch leave in one send each.
    func scheduleFlush() {
        guard !self.flushScheduled, let loop = self.loop else { return }
        self.flushScheduled = true
        loop.assumeIsolated().execute {
            self.flushScheduled = false
            self.context?.flush()
            for destination in self.destinations.values where destination.hasUnflushedWrites { destination.flush() }
        }
    }

    func writeControl(_ type: MessageType, payload: ByteBuffer, context: ChannelHandlerContext) {
        let message = AgentMessage(
            messageType: type, createdDate: MGS.nowMilliseconds(), sequenceNumber: 0, flags: .control,
            messageID: .random(), payloadType: .undefined, payload: payload)
        if let frame = try? message.encoded() {
            context.write(self.wrapOutboundOut(WebSocketMessage.binary(frame)), promise: nil)
        }
    }

    func scheduleRetransmission() {
        guard self.retransmitTask == nil, let deadline = self.reliable.nextRetransmissionDeadline, let context = self.context else { return }
        let now = Self.now()
        let delay = deadline > now ? Int64(deadline - now) : 0
        self.retransmitTask = context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay)) {
            self.retransmitTask = nil
            guard self.phase != .ended else { return }
            if !self.paused, let frame = self.reliable.retransmission(now: Self.now()) {
                self.context?.writeAndFlush(self.wrapOutboundOut(WebSocketMessage.binary(frame)), promise: nil)
            }
            self.scheduleRetransmission()
        }
    }
}

@available(*, unavailable)
extension AgentSessionHandler: Sendable {}

/// One destination TCP connection, on its session's event loop.
final class DestinationHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    unowned let session: AgentSessionHandler
    let stream: UInt32
    /// Set by the session when the connect succeeded (the future completes before channelActive).
    var isConnected = false
    var reading = true
    var readPending = false
    var context: ChannelHandlerContext?

    init(session: AgentSessionHandler, stream: UInt32) {
        self.session = session
        self.stream = stream
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// Bytes written since the last flush: the backlog is released per flush, not per write.
    var unflushedBytes = 0
    var hasUnflushedWrites: Bool { self.unflushedBytes > 0 }

    func flush() {
        guard let context = self.context else { return }
        let size = self.unflushedBytes
        self.unflushedBytes = 0
        if size > 0 {
            // Writes complete in order: this empty one completes once all before it are out.
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.write(self.wrapOutboundOut(ByteBuffer()), promise: promise)
            promise.futureResult.assumeIsolated().whenComplete { _ in
                self.session.destinationBacklog -= size
            }
        }
        context.flush()
    }

    func close() {
        self.context?.close(promise: nil)
    }

    func write(_ data: ByteBuffer) {
        guard let context = self.context else { return }
        let size = data.readableBytes
        self.session.destinationBacklog += size
        self.unflushedBytes += size
        context.write(self.wrapOutboundOut(data), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.session.fromDestination(stream: self.stream, self.unwrapInboundIn(data))
    }

    func read(context: ChannelHandlerContext) {
        if self.reading { context.read() } else { self.readPending = true }
    }

    func setReading(_ reading: Bool) {
        self.reading = reading
        if reading, self.readPending, let context = self.context {
            self.readPending = false
            context.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Unflushed writes fail with the channel: their bytes leave the backlog here.
        self.session.destinationBacklog -= self.unflushedBytes
        self.unflushedBytes = 0
        self.session.destinationClosed(stream: self.stream)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension DestinationHandler: Sendable {}

/// The agent's version comparison: numeric, component by component; a shorter version is smaller
/// when the shared components are equal.
func compareVersions(_ a: String, _ b: String) -> Int {
    let left = a.split(separator: ".").map { Int($0) ?? 0 }
    let right = b.split(separator: ".").map { Int($0) ?? 0 }
    for index in 0..<max(left.count, right.count) {
        guard index < left.count else { return -1 }
        guard index < right.count else { return 1 }
        if left[index] != right[index] { return left[index] < right[index] ? -1 : 1 }
    }
    return 0
}

extension SmuxSession {
    /// `hasPendingOutbound` on an exclusively accessed session: reached through `inout`, the getter
    /// borrows it instead of copying it out of the class property that holds it.
    mutating func hasPendingOutboundInPlace() -> Bool { self.hasPendingOutbound }
}
