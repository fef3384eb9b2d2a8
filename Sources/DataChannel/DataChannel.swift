import Crypto
import NIOCore
import SSMProtocol
import WebSocketTransport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the agent said the session is, once it said it.
public struct StartedSession: Sendable, Hashable {
    /// `Port`, or `Standard_Stream` for shells and commands (the client runs one handler for those).
    public var sessionType: String
    /// The document's resolved `properties` for Port sessions (`portNumber`, `type`, `host`, …).
    public var properties: JSONValue
    /// Empty when the agent skipped the handshake (shells without KMS).
    public var agentVersion: String
    public var isEncrypted: Bool

    public var isPort: Bool { self.sessionType == SessionTypeName.port }
}

/// Receives what a data channel delivers. Every call happens on the channel's event loop.
public protocol DataChannelDelegate: AnyObject {
    /// The session type is known: after HandshakeComplete, or the first output of a shell.
    func dataChannel(_ channel: DataChannel, didStart session: StartedSession)
    /// Whether the consumer can take more output now. When false the next in-order message is
    /// neither acknowledged nor delivered and the agent resends it later: backpressure.
    func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool
    /// An in-order payload from the agent (Output, StdErr, ExitCode, Flag), decrypted.
    func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType)
    /// `isWritable` became true again (acks arrived, the rate limiter refilled, publication resumed).
    func dataChannelDidBecomeWritable(_ channel: DataChannel)
    /// A message for the user from the agent (HandshakeComplete's CustomerMessage).
    func dataChannel(_ channel: DataChannel, customerMessage: String)
    /// The channel ended: nil when `close()` was called, otherwise why.
    func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?)
}

extension DataChannelDelegate {
    public func dataChannel(_ channel: DataChannel, customerMessage: String) {}
}

/// Counters for metrics and benchmarks.
public struct DataChannelStatistics: Sendable, Hashable {
    public var messagesSent = 0
    public var messagesReceived = 0
    public var payloadBytesSent = 0
    public var payloadBytesReceived = 0
    public var retransmissions = 0
    public var reconnects = 0
    public var pausedCount = 0
}

/// The client side of one Session Manager data channel: the reliable, ordered message stream of
/// reference sections 2, 5, 6 and 9, kept alive across WebSocket drops.
///
/// It lives on one event loop and is not thread-safe: call it there (wrap it in `NIOLoopBound`
/// to hand it around). Sending is windowed and rate-limited without timers on the data path:
/// `isWritable` turns false when the window, the rate bucket, the socket or the service's
/// `pause_publication` says stop, and the delegate hears when it turns true again.
public final class DataChannel {
    /// Asked after a drop for a fresh token (ResumeSession). Nil or empty: the session is over.
    public typealias TokenRenewal = @Sendable () async throws -> String?
    /// Asked when the agent wants KMS encryption: GenerateDataKey for the key id, 64 bytes.
    public typealias DataKeyProvider = @Sendable (_ keyID: String) async throws -> (plaintext: [UInt8], ciphertextBlob: [UInt8])

    enum State {
        case idle
        case connecting(attempt: Int)
        case open
        case reconnecting(attempt: Int)
        case closed
    }

    public let eventLoop: any EventLoop
    public let configuration: DataChannelConfiguration
    public let sessionID: String
    public weak var delegate: (any DataChannelDelegate)?
    public private(set) var statistics = DataChannelStatistics()
    public private(set) var session: StartedSession?

    let endpoint: StreamEndpoint
    let clientID: String
    let renewToken: TokenRenewal?
    let dataKeyProvider: DataKeyProvider?
    var token: String
    var state: State = .idle
    var socket: (any Channel)?
    var generation = 0
    var reliable: ReliableStream
    var cipher: SessionCipher?
    var paused = false
    var rate: TokenBucket?
    var flushPending = false
    var retransmitTask: Scheduled<Void>?
    var rateWakeTask: Scheduled<Void>?
    var pingTask: RepeatedTask?
    var lastAcknowledgementProgress: UInt64 = 0
    /// A gap in what the agent sent, watched until the sequence number above it is delivered.
    var lossWatch: (above: Int64, task: Scheduled<Void>)?
    /// When the message we wait for last arrived but the consumer was not ready: not lost, held back.
    var expectedRefusedAt: UInt64 = 0
    var openPromise: EventLoopPromise<Void>?
    let allocator = ByteBufferAllocator()
    /// Message ids: one system random call per channel, not one per message.
    var random = FastRandom()

    public init(
        streamURL: String,
        token: String,
        sessionID: String,
        clientID: String,
        configuration: DataChannelConfiguration = DataChannelConfiguration(),
        eventLoop: any EventLoop,
        renewToken: TokenRenewal?,
        dataKeyProvider: DataKeyProvider? = nil
    ) throws(DataChannelError) {
        self.endpoint = try StreamEndpoint(parsing: streamURL)
        self.token = token
        self.sessionID = sessionID
        self.clientID = clientID
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.renewToken = renewToken
        self.dataKeyProvider = dataKeyProvider
        var reliability = ReliableStream.Configuration.client
        reliability.outgoingCapacity = max(configuration.sendWindow, 1)
        reliability.incomingCapacity = configuration.incomingCapacity
        self.reliable = ReliableStream(configuration: reliability)
        if let rate = configuration.messagesPerSecond {
            self.rate = TokenBucket(rate: Double(rate), capacity: Double(max(configuration.messageBurst, 1)))
        }
    }

    // MARK: Public API

    /// Dials the stream URL (retrying as configured) and sends OpenDataChannel. The future
    /// completes once the channel is open; the session starts when the agent speaks.
    public func connect() -> EventLoopFuture<Void> {
        self.eventLoop.preconditionInEventLoop()
        guard case .idle = self.state else { return self.eventLoop.makeFailedFuture(DataChannelError.closed) }
        let promise = self.eventLoop.makePromise(of: Void.self)
        self.openPromise = promise
        self.state = .connecting(attempt: 0)
        self.dial(renewing: false, attempt: 0)
        return promise.futureResult
    }

    /// Whether `send` may be called now.
    public var isWritable: Bool {
        switch self.state {
        case .open, .reconnecting: break
        default: return false
        }
        guard !self.paused, self.reliable.unacknowledgedCount < self.configuration.sendWindow else { return false }
        if let socket = self.socket, !socket.isWritable { return false }
        if var rate = self.rate {
            rate.refill(now: Self.monotonicNow())
            self.rate = rate
            return rate.tokens >= 1
        }
        return true
    }

    /// The largest payload one `send` may carry.
    public var maximumPayloadSize: Int { self.configuration.maximumPayloadSize }

    /// Sends one stream message. Call only while `isWritable`; the payload must be non-empty and
    /// at most `maximumPayloadSize` bytes. What is sent while the socket is away goes out after
    /// the reconnect (nothing is lost).
    public func send(_ payload: ByteBuffer, type: PayloadType = .output) {
        self.eventLoop.preconditionInEventLoop()
        guard payload.readableBytes > 0 else { return }
        switch self.state {
        case .open, .reconnecting: break
        default: return
        }
        var payload = payload
        if let cipher = self.cipher, type == .output {
            guard let encrypted = try? cipher.encrypt(payload, allocator: self.allocator) else {
                self.fail(.handshakeFailed("encrypting a message failed"))
                return
            }
            payload = encrypted
        }
        let now = Self.monotonicNow()
        if self.reliable.unacknowledgedCount == 0 { self.lastAcknowledgementProgress = now }
        let frame: ByteBuffer
        do {
            frame = try self.reliable.send(
                .inputStreamData, payloadType: type, payload: payload, messageID: .random(using: &self.random),
                createdDate: Self.wallClockMilliseconds(), now: now, allocator: self.allocator)
        } catch {
            return
        }
        _ = self.rate?.take(1, now: now)
        self.statistics.messagesSent += 1
        self.statistics.payloadBytesSent += payload.readableBytes
        self.write(frame)
        self.scheduleRetransmission()
    }

    /// Sends as much of `buffer` as the channel takes now, cut into messages of at most
    /// `maximumPayloadSize`; what is left stays in `buffer` for after the next writability
    /// notification (which this arranges).
    public func send(splitting buffer: inout ByteBuffer, type: PayloadType = .output) {
        while buffer.readableBytes > 0, self.isWritable {
            let chunk = buffer.readSlice(length: min(buffer.readableBytes, self.maximumPayloadSize))!
            self.send(chunk, type: type)
        }
        if buffer.readableBytes > 0 { self.requestWritabilityNotification() }
    }

    /// Closes once everything sent is acknowledged, or after `grace`: an orderly end that does
    /// not lose the last bytes of an upload.
    public func closeWhenAcknowledged(within grace: TimeAmount = .seconds(2)) {
        let deadline = NIODeadline.now() + grace
        func check() {
            if case .closed = self.state { return }
            if self.reliable.unacknowledgedCount == 0 || NIODeadline.now() >= deadline {
                self.close()
            } else {
                self.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(10)) { check() }
            }
        }
        check()
    }

    /// Ends the channel: the WebSocket closes, nothing is resent, the delegate hears nil.
    public func close() {
        self.eventLoop.preconditionInEventLoop()
        self.finish(nil)
    }

    /// Unacknowledged stream messages (for draining before an orderly end).
    public var unacknowledgedCount: Int { self.reliable.unacknowledgedCount }

    /// Current smoothed round-trip time, nanoseconds.
    public var roundTripTime: UInt64 { self.reliable.roundTripTime }

    // MARK: Connection management

    func dial(renewing: Bool, attempt: Int) {
        let loop = self.eventLoop
        let tokenFuture: EventLoopFuture<String?>
        if renewing, let renewToken = self.renewToken {
            tokenFuture = loop.makeFutureWithTask { try await renewToken() }
        } else {
            tokenFuture = loop.makeSucceededFuture(self.token)
        }
        self.generation += 1
        let generation = self.generation
        let endpoint = self.endpoint
        let configuration = self.configuration
        let bound = NIOLoopBound(self, eventLoop: loop)
        tokenFuture.flatMap { token -> EventLoopFuture<(any Channel, String)> in
            guard let token, !token.isEmpty else {
                return loop.makeFailedFuture(DataChannelError.sessionTimedOut(sessionID: bound.value.sessionID))
            }
            return WebSocketDialer.connect(
                to: endpoint, on: loop, connectTimeout: configuration.connectTimeout, maximumFrameSize: configuration.maximumFrameSize
            ) { channel in
                try channel.pipeline.syncOperations.addHandler(DataChannelFrameHandler(owner: bound, generation: generation))
            }.map { ($0, token) }
        }.assumeIsolated().whenComplete { result in
            let channel = bound.value
            switch result {
            case .success(let (socket, token)):
                guard generation == channel.generation, channel.isConnecting else {
                    socket.close(promise: nil)
                    return
                }
                channel.token = token
                channel.adopt(socket)
            case .failure(let error):
                guard generation == channel.generation, channel.isConnecting else { return }
                if let error = error as? DataChannelError, case .sessionTimedOut = error {
                    channel.fail(error)
                    return
                }
                channel.retry(after: attempt, renewing: renewing, lastError: error)
            }
        }
    }

    var isConnecting: Bool {
        switch self.state {
        case .connecting, .reconnecting: true
        default: false
        }
    }

    func retry(after attempt: Int, renewing: Bool, lastError: any Error) {
        let next = attempt + 1
        guard next < self.configuration.reconnectAttempts else {
            let reason = (lastError as? DataChannelError)?.description ?? String(describing: lastError)
            if renewing {
                self.fail(.reconnectFailed(attempts: next, reason: reason))
            } else if let error = lastError as? DataChannelError {
                self.fail(error)
            } else {
                self.fail(.connectFailed(endpoint: self.endpoint.description, reason: reason))
            }
            return
        }
        self.state = renewing ? .reconnecting(attempt: next) : .connecting(attempt: next)
        let delay = self.backoff(attempt: next)
        self.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            guard self.isConnecting else { return }
            self.dial(renewing: renewing, attempt: next)
        }
    }

    /// 100–199 ms, doubling, capped: the official retryer's shape.
    func backoff(attempt: Int) -> TimeAmount {
        let initial = self.configuration.initialReconnectDelay.nanoseconds
        let jitter = Int64.random(in: 0..<max(initial, 1))
        let scaled = min(initial << min(Int64(attempt - 1), 16), self.configuration.maximumReconnectDelay.nanoseconds)
        return .nanoseconds(scaled + jitter)
    }

    /// A fresh WebSocket: OpenDataChannel, then everything still unacknowledged, oldest first.
    func adopt(_ socket: any Channel) {
        let reconnecting: Bool
        if case .reconnecting = self.state { reconnecting = true } else { reconnecting = false }
        self.socket = socket
        self.state = .open
        let open = OpenDataChannelInput(
            requestID: Self.uuid(), tokenValue: self.token,
            role: .client(clientID: self.clientID, clientVersion: self.configuration.clientVersion))
        socket.write(WebSocketMessage.text(open.encoded()), promise: nil)
        if reconnecting {
            self.statistics.reconnects += 1
            if !self.paused {
                for frame in self.reliable.unacknowledgedFrames { self.writeFrame(frame) }
            }
        }
        socket.flush()
        self.startPings(socket)
        self.lastAcknowledgementProgress = Self.monotonicNow()
        self.scheduleRetransmission()
        if let promise = self.openPromise {
            self.openPromise = nil
            promise.succeed(())
        }
        self.notifyWritable()
    }

    func startPings(_ socket: any Channel) {
        self.pingTask?.cancel()
        let interval = self.configuration.pingInterval
        self.pingTask = socket.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { _ in
            socket.writeAndFlush(WebSocketMessage.ping(ByteBuffer(string: "keepalive")), promise: nil)
        }
    }

    func socketClosed(generation: Int) {
        guard generation == self.generation, case .open = self.state else { return }
        self.socket = nil
        self.pingTask?.cancel()
        self.pingTask = nil
        guard self.renewToken != nil else {
            self.fail(.reconnectFailed(attempts: 0, reason: "the WebSocket closed and no ResumeSession is available"))
            return
        }
        // Sequence state survives; what was in flight goes again on the new socket.
        self.state = .reconnecting(attempt: 0)
        self.dial(renewing: true, attempt: 0)
    }

    /// Ends the channel with an error (a consumer's local failure, for example).
    public func fail(_ error: DataChannelError) {
        self.finish(error)
    }

    func finish(_ error: DataChannelError?) {
        if case .closed = self.state { return }
        self.state = .closed
        self.generation += 1
        self.retransmitTask?.cancel()
        self.rateWakeTask?.cancel()
        self.pingTask?.cancel()
        self.lossWatch?.task.cancel()
        self.lossWatch = nil
        self.socket?.close(promise: nil)
        self.socket = nil
        if let promise = self.openPromise {
            self.openPromise = nil
            promise.fail(error ?? .closed)
        }
        self.delegate?.dataChannel(self, didCloseWith: error)
    }

    // MARK: Writing

    func write(_ frame: ByteBuffer) {
        guard self.socket != nil, case .open = self.state, !self.paused else { return }
        self.writeFrame(frame)
        self.scheduleFlush()
    }

    /// Writes one message (no flush); the socket's `WebSocketFrameCodec` frames and masks it.
    func writeFrame(_ payload: ByteBuffer) {
        self.socket?.write(WebSocketMessage.binary(payload), promise: nil)
    }

    func scheduleFlush() {
        guard !self.flushPending else { return }
        self.flushPending = true
        self.eventLoop.assumeIsolated().execute {
            self.flushPending = false
            self.socket?.flush()
        }
    }

    func scheduleRetransmission() {
        guard self.retransmitTask == nil, let deadline = self.reliable.nextRetransmissionDeadline else { return }
        let now = Self.monotonicNow()
        let delay = deadline > now ? Int64(deadline - now) : 0
        self.retransmitTask = self.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(max(delay, 1_000_000))) {
            self.retransmitTask = nil
            self.retransmitDue()
        }
    }

    func retransmitDue() {
        guard case .open = self.state else {
            if case .reconnecting = self.state { self.scheduleRetransmission() }
            return
        }
        let now = Self.monotonicNow()
        if self.reliable.unacknowledgedCount > 0,
            now - self.lastAcknowledgementProgress > UInt64(self.configuration.acknowledgementTimeout.nanoseconds)
        {
            self.fail(.agentUnresponsive(seconds: Int(self.configuration.acknowledgementTimeout.nanoseconds / 1_000_000_000)))
            return
        }
        if !self.paused, let frame = self.reliable.retransmission(now: now) {
            self.statistics.retransmissions += 1
            self.write(frame)
        }
        self.scheduleRetransmission()
    }

    func notifyWritable() {
        if self.isWritable {
            self.delegate?.dataChannelDidBecomeWritable(self)
        } else {
            self.armRateWake()
        }
    }

    /// Producers that found the channel not writable call this to hear when it is again. Acks,
    /// publication and socket writability notify by themselves; an empty rate bucket needs a timer.
    public func requestWritabilityNotification() {
        self.armRateWake()
    }

    /// Only the rate bucket is empty: wake when it holds a token again.
    func armRateWake() {
        guard self.rateWakeTask == nil, let rate = self.rate, !self.paused,
            self.reliable.unacknowledgedCount < self.configuration.sendWindow, case .open = self.state
        else { return }
        let wait = rate.delay(until: 1)
        self.rateWakeTask = self.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(max(wait, 100_000)))) {
            self.rateWakeTask = nil
            self.notifyWritable()
        }
    }

    // MARK: Reading

    func frameReceived(_ frame: WebSocketMessage, generation: Int) {
        guard generation == self.generation else { return }
        switch frame {
        case .binary(let data), .text(let data):
            guard let message = try? AgentMessage.decode(data) else { return }
            self.handle(message)
        case .ping, .pong:
            break  // the codec answers pings; pongs only show the connection is alive
        }
    }

    func handle(_ message: AgentMessage) {
        switch message.messageType {
        case .acknowledge:
            guard let ack = try? Acknowledgement(decoding: message.payload) else { return }
            let now = Self.monotonicNow()
            if self.reliable.acknowledge(sequenceNumber: ack.acknowledgedSequenceNumber, now: now) {
                self.lastAcknowledgementProgress = now
                if self.reliable.unacknowledgedCount == 0 {
                    self.retransmitTask?.cancel()
                    self.retransmitTask = nil
                }
                self.notifyWritable()
            }
        case .outputStreamData:
            self.receiveStream(message)
        case .channelClosed:
            let output = (try? ChannelClosed(decoding: message.payload))?.output ?? ""
            self.fail(.closedByService(output: output))
        case .pausePublication:
            self.paused = true
            self.statistics.pausedCount += 1
        case .startPublication:
            guard self.paused else { return }
            self.paused = false
            // What was recorded but not written while paused goes now.
            for frame in self.reliable.unacknowledgedFrames { self.write(frame) }
            self.notifyWritable()
        default:
            break
        }
    }

    func receiveStream(_ message: AgentMessage) {
        let ready: Bool
        switch message.payloadType {
        case .output, .standardError, .exitCode:
            ready = self.session == nil || (self.delegate?.dataChannelCanAcceptOutput(self) ?? false)
        default:
            ready = true
        }
        if !ready, message.sequenceNumber == self.reliable.expectedIncomingSequence {
            self.expectedRefusedAt = Self.monotonicNow()
        }
        let reception = self.reliable.receive(message, ready: ready)
        if self.lossWatch == nil, self.reliable.bufferedIncomingCount > 0 { self.watchForLoss() }
        if let ack = reception.acknowledgement {
            self.write(ack.frame(messageID: .random(using: &self.random), createdDate: Self.wallClockMilliseconds(), allocator: self.allocator), control: true)
        }
        for delivered in reception.deliverable {
            self.statistics.messagesReceived += 1
            self.process(delivered)
            if case .closed = self.state { return }
        }
    }

    /// Messages arrived beyond a gap: the ones missing must be resent within `lossRecoveryTimeout`.
    /// One timer per gap, not per message; reordering and single losses close it within a round trip.
    func watchForLoss() {
        guard let above = self.reliable.highestBufferedIncomingSequence else { return }
        let task = self.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.lossRecoveryTimeout) {
            self.lossWatchExpired()
        }
        self.lossWatch = (above, task)
    }

    func lossWatchExpired() {
        guard let watch = self.lossWatch else { return }
        self.lossWatch = nil
        if case .closed = self.state { return }
        let timeout = self.configuration.lossRecoveryTimeout
        let now = Self.monotonicNow()
        let heldBack = now - min(self.expectedRefusedAt, now) < UInt64(timeout.nanoseconds)
        // Recovered, only held back by our own consumer (backpressure, not loss), or away (the
        // agent's resends need the new socket): watch whatever gap is open now.
        var reconnecting = false
        if case .reconnecting = self.state { reconnecting = true }
        if self.reliable.expectedIncomingSequence > watch.above || heldBack || reconnecting {
            if self.reliable.bufferedIncomingCount > 0 { self.watchForLoss() }
            return
        }
        let highest = self.reliable.highestBufferedIncomingSequence ?? watch.above
        let missing = Int(highest - self.reliable.expectedIncomingSequence + 1) - self.reliable.bufferedIncomingCount
        self.fail(.lostMessagesNotResent(missing: max(missing, 1), seconds: max(Int(timeout.nanoseconds / 1_000_000_000), 1)))
    }

    /// Acknowledgements go out even while paused: the pause is about our data.
    func write(_ frame: ByteBuffer, control: Bool) {
        guard self.socket != nil, case .open = self.state else { return }
        self.writeFrame(frame)
        self.scheduleFlush()
    }

    func process(_ message: AgentMessage) {
        switch message.payloadType {
        case .handshakeRequest:
            self.handshakeRequested(message.payload)
        case .handshakeComplete:
            let complete = try? HandshakeComplete(decoding: message.payload)
            if let text = complete?.customerMessage, !text.isEmpty {
                self.delegate?.dataChannel(self, customerMessage: text)
            }
            guard var session = self.pendingSession else {
                self.fail(.handshakeFailed("unable to determine SessionType"))
                return
            }
            session.isEncrypted = self.cipher != nil
            self.start(session)
        case .encryptionChallengeRequest:
            self.answerChallenge(message.payload)
        case .output, .standardError, .exitCode:
            var payload = message.payload
            if let cipher = self.cipher {
                guard let plain = try? cipher.decrypt(payload, allocator: self.allocator) else {
                    self.fail(.handshakeFailed("a message from the agent failed decryption"))
                    return
                }
                payload = plain
            }
            if self.session == nil {
                // No handshake for shells without KMS: the first output starts the session.
                self.start(StartedSession(sessionType: SessionTypeName.standardStream, properties: .null, agentVersion: "", isEncrypted: false))
            }
            self.statistics.payloadBytesReceived += payload.readableBytes
            self.delegate?.dataChannel(self, didReceive: payload, type: message.payloadType)
        case .flag:
            self.delegate?.dataChannel(self, didReceive: message.payload, type: .flag)
        default:
            break
        }
    }

    var pendingSession: StartedSession?

    func start(_ session: StartedSession) {
        guard self.session == nil else { return }
        self.session = session
        self.delegate?.dataChannel(self, didStart: session)
    }

    // MARK: Handshake

    func handshakeRequested(_ payload: ByteBuffer) {
        guard let request = try? HandshakeRequest(decoding: payload) else {
            self.fail(.handshakeFailed("the agent's HandshakeRequest could not be read"))
            return
        }
        var actions: [ProcessedClientAction] = []
        var errors: [String] = []
        var kms: (keyID: String, index: Int)?
        for action in request.requestedClientActions {
            switch action {
            case .sessionType(let name, let properties):
                switch name {
                case SessionTypeName.port, SessionTypeName.standardStream, SessionTypeName.interactiveCommands,
                    SessionTypeName.nonInteractiveCommands:
                    let type = name == SessionTypeName.port ? SessionTypeName.port : SessionTypeName.standardStream
                    self.pendingSession = StartedSession(
                        sessionType: type, properties: properties, agentVersion: request.agentVersion, isEncrypted: false)
                    actions.append(ProcessedClientAction(actionType: action.actionType, actionStatus: .success))
                default:
                    let error = "Failed to process action SessionType: Unknown session type \(name)"
                    errors.append(error)
                    actions.append(ProcessedClientAction(actionType: action.actionType, actionStatus: .failed, error: error))
                }
            case .kmsEncryption(let keyID, _):
                kms = (keyID, actions.count)
                actions.append(ProcessedClientAction(actionType: action.actionType, actionStatus: .failed))
            case .unknown(let type, _):
                actions.append(ProcessedClientAction(actionType: type, actionStatus: .unsupported, error: "Unsupported action \(type)"))
            }
        }
        guard let kms else {
            self.sendHandshakeResponse(actions, errors: errors)
            return
        }
        guard let provider = self.dataKeyProvider else {
            let error = "Failed to process action KMSEncryption: this client has no KMS access configured"
            actions[kms.index] = ProcessedClientAction(actionType: RequestedClientAction.kmsEncryptionAction, actionStatus: .failed, error: error)
            self.sendHandshakeResponse(actions, errors: errors + [error])
            return
        }
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        self.eventLoop.makeFutureWithTask { try await provider(kms.keyID) }.assumeIsolated().whenComplete { result in
            let channel = bound.value
            var actions = actions
            var errors = errors
            switch result {
            case .success(let key):
                do {
                    channel.cipher = try SessionCipher(dataKey: key.plaintext)
                    actions[kms.index] = .kmsEncryptionSucceeded(cipherTextKey: Base64.encode(key.ciphertextBlob))
                } catch {
                    let text = "Failed to process action KMSEncryption: \(error)"
                    errors.append(text)
                    actions[kms.index] = ProcessedClientAction(actionType: RequestedClientAction.kmsEncryptionAction, actionStatus: .failed, error: text)
                }
            case .failure(let error):
                let text = "Failed to process action KMSEncryption: \(error)"
                errors.append(text)
                actions[kms.index] = ProcessedClientAction(actionType: RequestedClientAction.kmsEncryptionAction, actionStatus: .failed, error: text)
            }
            channel.sendHandshakeResponse(actions, errors: errors)
        }
    }

    func sendHandshakeResponse(_ actions: [ProcessedClientAction], errors: [String]) {
        let response = HandshakeResponse(
            clientVersion: self.configuration.clientVersion, processedClientActions: actions, errors: errors.isEmpty ? nil : errors)
        self.sendControlStream(response.encoded(), type: .handshakeResponse)
    }

    func answerChallenge(_ payload: ByteBuffer) {
        guard let cipher = self.cipher, let request = try? EncryptionChallenge(decoding: payload),
            let challenge = Base64.decode(request.challenge)
        else {
            self.fail(.handshakeFailed("the agent's encryption challenge could not be answered"))
            return
        }
        var buffer = self.allocator.buffer(capacity: challenge.count)
        buffer.writeBytes(challenge)
        guard let answer = try? cipher.answerChallenge(buffer) else {
            self.fail(.handshakeFailed("the agent's encryption challenge did not decrypt with the KMS data key"))
            return
        }
        let response = EncryptionChallenge(challenge: Base64.encode(Array(answer.readableBytesView)))
        self.sendControlStream(response.encoded(), type: .encryptionChallengeResponse)
    }

    /// Handshake messages are stream messages but must not wait for the data window or the bucket.
    func sendControlStream(_ payload: ByteBuffer, type: PayloadType) {
        let now = Self.monotonicNow()
        if self.reliable.unacknowledgedCount == 0 { self.lastAcknowledgementProgress = now }
        guard let frame = try? self.reliable.send(
            .inputStreamData, payloadType: type, payload: payload, messageID: .random(using: &self.random),
            createdDate: Self.wallClockMilliseconds(), now: now, allocator: self.allocator)
        else { return }
        self.statistics.messagesSent += 1
        self.write(frame)
        self.scheduleRetransmission()
    }

    // MARK: Clocks and ids

    static func monotonicNow() -> UInt64 { UInt64(NIODeadline.now().uptimeNanoseconds) }

    static func wallClockMilliseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
    }

    /// A lowercase, hyphenated random UUID, as the official peers send.
    public static func uuid() -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        var generator = SystemRandomNumberGenerator()
        for index in bytes.indices { bytes[index] = generator.next() }
        bytes[6] = (bytes[6] & 0x0F) | 0x40
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        let hex = bytes.map { byte -> String in
            let text = String(byte, radix: 16)
            return text.count == 1 ? "0" + text : text
        }
        return [hex[0..<4], hex[4..<6], hex[6..<8], hex[8..<10], hex[10..<16]].map { $0.joined() }.joined(separator: "-")
    }
}

/// Forwards one WebSocket's events to its data channel; a stale socket's events are ignored.
final class DataChannelFrameHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketMessage

    let owner: NIOLoopBound<DataChannel>
    let generation: Int

    init(owner: NIOLoopBound<DataChannel>, generation: Int) {
        self.owner = owner
        self.generation = generation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.owner.value.frameReceived(self.unwrapInboundIn(data), generation: self.generation)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.owner.value.socketClosed(generation: self.generation)
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, self.generation == self.owner.value.generation { self.owner.value.notifyWritable() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
