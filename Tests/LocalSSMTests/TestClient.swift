import Crypto
import Foundation
import Mux
import NIOCore
import NIOPosix
import SSMProtocol
import WebSocketTransport
import Synchronization

@testable import LocalSSM

/// A minimal Session Manager client for the emulator's tests, built on SSMProtocol and Mux:
/// OpenDataChannel, the client side of the handshake, acknowledgements and resends, and smux
/// streams that each send a deterministic byte sequence and hash what comes back.
final class TestSessionClient: ChannelInboundHandler {
    typealias InboundIn = WebSocketMessage
    typealias OutboundOut = WebSocketMessage

    struct StreamResult: Sendable {
        var sentSHA256: String
        var receivedSHA256: String
        var receivedBytes: Int
        var connectError: Bool
    }

    var token: String
    /// When set, a dropped WebSocket is not the end: the test reconnects with a resumed token.
    var survivesDrops = false
    var drops: EventLoopPromise<Void>?
    let clientVersion: String
    var reliable = ReliableStream(configuration: .client)
    var smux = SmuxSession(role: .client, configuration: {
        var configuration = SmuxConfiguration()
        configuration.keepAlive = nil
        return configuration
    }())
    var context: ChannelHandlerContext?
    var handshakeDone = false
    var agentVersion = ""
    var sessionTypeProperties: JSONValue = .null
    var retransmit: Scheduled<Void>?
    var ready: EventLoopPromise<Void>
    var closed: EventLoopPromise<String>
    var pausedSeen = 0
    /// Shell and command sessions: what the agent printed (no smux, no handshake).
    var isTerminal = false
    var terminalOutput = ByteBuffer()
    /// What reached this client and when (ms since it was made), for a failing test to print.
    var trace: [String] = []
    var dataMessagesSeen = 0
    var acknowledgementsSeen = 0
    let born = DispatchTime.now().uptimeNanoseconds

    /// Where the client stands, for a report when a test waits too long.
    var stateSummary: String {
        let streams = self.streams.map { id, stream in
            "\(id): \(stream.remaining) B to send, \(stream.received)/\(stream.expected) B back\(stream.finSent ? ", FIN sent" : "")"
        }
        return "WebSocket \(self.context == nil ? "away" : "up"), survives drops \(self.survivesDrops), handshake \(self.handshakeDone ? "done" : "pending"), "
            + "unacknowledged \(self.reliable.unacknowledgedCount), next expected \(self.reliable.expectedIncomingSequence), "
            + "retransmit \(self.retransmit == nil ? "not scheduled" : "scheduled"), \(self.dataMessagesSeen) data messages and "
            + "\(self.acknowledgementsSeen) acknowledgements received, streams [\(streams.joined(separator: "; "))], events \(self.trace)"
    }

    func note(_ event: String) {
        if self.trace.count == 64 { self.trace.removeFirst(32) }
        self.trace.append("\((DispatchTime.now().uptimeNanoseconds - self.born) / 1_000_000) ms \(event)")
    }

    // Per stream: bytes still to send, hashes, and completion.
    final class StreamState {
        var remaining: Int
        var generator: SplitMix64
        var sentHash = SHA256()
        var receivedHash = SHA256()
        var received = 0
        var expected: Int
        var finSent = false
        var connectError = false
        let done: EventLoopPromise<StreamResult>
        init(bytes: Int, seed: UInt64, done: EventLoopPromise<StreamResult>) {
            self.remaining = bytes
            self.expected = bytes
            self.generator = SplitMix64(seed: seed)
            self.done = done
        }
    }
    var streams: [SmuxStreamID: StreamState] = [:]

    init(token: String, clientVersion: String, loop: any EventLoop) {
        self.token = token
        self.clientVersion = clientVersion
        self.ready = loop.makePromise()
        self.closed = loop.makePromise()
    }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    func handlerAdded(context: ChannelHandlerContext) {
        let reconnecting = self.handshakeDone
        self.context = context
        let open = OpenDataChannelInput(
            requestID: UUID().uuidString.lowercased(), tokenValue: self.token,
            role: .client(clientID: UUID().uuidString.lowercased(), clientVersion: self.clientVersion))
        context.writeAndFlush(self.wrapOutboundOut(WebSocketMessage.text(open.encoded())), promise: nil)
        if reconnecting {
            // Nothing is replayed explicitly: the unacknowledged messages go again, oldest first.
            for frame in self.reliable.unacknowledgedFrames {
                context.write(self.wrapOutboundOut(WebSocketMessage.binary(frame)), promise: nil)
            }
            context.flush()
            self.pump()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        self.note("event \(event)")
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.note("error \(error)")
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.note("inactive")
        if self.survivesDrops {
            self.context = nil
            self.drops?.succeed(())
            self.drops = nil
            context.fireChannelInactive()
            return
        }
        self.closed.succeed("socket closed")
        self.ready.fail(ChannelError.ioOnClosedChannel)
        for stream in self.streams.values { stream.done.fail(ChannelError.ioOnClosedChannel) }
        self.retransmit?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        guard case .binary(let payload) = frame else {
            self.note("not binary: \(frame)")
            return
        }
        let message: AgentMessage
        do {
            message = try AgentMessage.decode(payload)
        } catch {
            self.note("undecodable \(payload.readableBytes) B: \(error)")
            return
        }
        // Data and acknowledgements are counted, everything else noted.
        if message.messageType == .acknowledge {
            self.acknowledgementsSeen += 1
        } else if message.messageType == .outputStreamData, message.payloadType == .output {
            self.dataMessagesSeen += 1
        } else {
            self.note("\(message.messageType) #\(message.sequenceNumber) \(message.payloadType)")
        }
        switch message.messageType {
        case .acknowledge:
            if let ack = try? Acknowledgement(decoding: message.payload) {
                self.reliable.acknowledge(sequenceNumber: ack.acknowledgedSequenceNumber, now: Self.now())
            }
            self.pump()
        case .outputStreamData:
            let reception = self.reliable.receive(message)
            if let ack = reception.acknowledgement {
                context.writeAndFlush(self.wrapOutboundOut(WebSocketMessage.binary(
                    ack.frame(messageID: .random(), createdDate: 1))), promise: nil)
            }
            for delivered in reception.deliverable { self.process(delivered) }
            self.pump()
        case .channelClosed:
            let output = (try? ChannelClosed(decoding: message.payload))?.output ?? ""
            self.closed.succeed(output)
            context.close(promise: nil)
        case .pausePublication:
            self.pausedSeen += 1
        default:
            break
        }
    }

    func process(_ message: AgentMessage) {
        switch message.payloadType {
        case .handshakeRequest:
            guard let request = try? HandshakeRequest(decoding: message.payload) else { return }
            self.agentVersion = request.agentVersion
            if case .sessionType(_, let properties)? = request.requestedClientActions.first { self.sessionTypeProperties = properties }
            let response = HandshakeResponse(
                clientVersion: self.clientVersion,
                processedClientActions: request.requestedClientActions.map {
                    ProcessedClientAction(actionType: $0.actionType, actionStatus: .success)
                })
            self.send(.handshakeResponse, response.encoded())
        case .handshakeComplete:
            self.handshakeDone = true
            self.ready.succeed(())
        case .output where self.isTerminal:
            var payload = message.payload
            self.terminalOutput.writeBuffer(&payload)
            if !self.handshakeDone {
                // No handshake for shells: the first output starts the session, as for the official client.
                self.handshakeDone = true
                self.ready.succeed(())
            }
        case .output:
            var events: [SmuxEvent] = []
            try? self.smux.receive(message.payload, into: &events)
            for event in events {
                switch event {
                case .data(let id, var data):
                    guard let stream = self.streams[id] else { continue }
                    stream.received += data.readableBytes
                    data.withUnsafeReadableBytes { stream.receivedHash.update(bufferPointer: $0) }
                    data.moveReaderIndex(to: data.writerIndex)
                    self.finishIfComplete(id)
                case .streamClosedByPeer(let id):
                    if let stream = self.streams.removeValue(forKey: id) { self.complete(stream) }
                default: break
                }
            }
        case .flag:
            if (try? PortFlag(decoding: message.payload)) == .connectToPortError {
                // The agent could not dial: the stream will be closed by its FIN.
                for stream in self.streams.values { stream.connectError = true }
            }
        default:
            break
        }
    }

    func finishIfComplete(_ id: SmuxStreamID) {
        guard let stream = self.streams[id], stream.remaining == 0, stream.received >= stream.expected, !stream.finSent else { return }
        // Only now: a FIN makes the agent close the destination outright, so wait for every echoed byte first.
        stream.finSent = true
        _ = self.smux.closeStream(id)
    }

    func complete(_ stream: StreamState) {
        let sent = stream.sentHash.finalize().map { String(format: "%02x", $0) }.joined()
        let received = stream.receivedHash.finalize().map { String(format: "%02x", $0) }.joined()
        stream.done.succeed(StreamResult(sentSHA256: sent, receivedSHA256: received, receivedBytes: stream.received, connectError: stream.connectError))
    }

    /// Opens a stream that sends `bytes` deterministic bytes and expects them echoed back.
    func openStream(bytes: Int, seed: UInt64, promise: EventLoopPromise<StreamResult>) {
        guard let id = try? self.smux.openStream() else {
            promise.fail(ChannelError.ioOnClosedChannel)
            return
        }
        self.streams[id] = StreamState(bytes: bytes, seed: seed, done: promise)
        self.pump()
    }

    func pump() {
        guard self.handshakeDone, let context = self.context else { return }
        // Alternate: top up each stream's bounded smux buffer, then cut smux bytes into 1024-byte
        // messages, until the send window is full or nothing moves. Acks call this again.
        var wrote = false
        var progress = true
        while progress, self.reliable.unacknowledgedCount < 256 {
            progress = false
            for (id, stream) in self.streams where stream.remaining > 0 {
                let free = self.smux.sendBufferFree(id)
                guard free > 0 else { continue }
                let count = min(free, stream.remaining, 16 * 1024)
                var chunk = context.channel.allocator.buffer(capacity: count + 8)
                while chunk.readableBytes < count { chunk.writeInteger(stream.generator.next()) }
                chunk.moveWriterIndex(to: chunk.readerIndex + count)
                chunk.withUnsafeReadableBytes { stream.sentHash.update(bufferPointer: $0) }
                if case .accepted(let accepted) = self.smux.write(chunk, to: id) {
                    precondition(accepted == count)
                    stream.remaining -= count
                    progress = true
                }
                self.finishIfComplete(id)
            }
            while self.reliable.unacknowledgedCount < 256, let payload = self.smux.nextOutbound(maximumBytes: 1024) {
                self.send(.output, payload, flush: false)
                wrote = true
                progress = true
            }
        }
        _ = self.smux.drainWritableStreams()
        _ = self.smux.drainFinishedStreams()
        if wrote { context.flush() }
    }

    func send(_ type: PayloadType, _ payload: ByteBuffer, flush: Bool = true) {
        guard let context = self.context,
            let frame = try? self.reliable.send(.inputStreamData, payloadType: type, payload: payload, messageID: .random(), createdDate: 1, now: Self.now())
        else { return }
        context.write(self.wrapOutboundOut(WebSocketMessage.binary(frame)), promise: nil)
        if flush { context.flush() }
        self.scheduleRetransmit()
    }

    /// Sends `count` small stream messages at once, ignoring the window: faster than any rate limit.
    func flood(count: Int) {
        let size = TerminalSize(columns: 80, rows: 24).encoded()
        for _ in 0..<count { self.send(.size, size, flush: false) }
        self.context?.flush()
    }

    func type(_ text: String) {
        self.send(.output, ByteBuffer(string: text))
    }

    func resize(columns: UInt32, rows: UInt32) {
        self.send(.size, TerminalSize(columns: columns, rows: rows).encoded())
    }

    func sendTerminate() {
        self.send(.flag, PortFlag.terminateSession.encoded())
    }

    func scheduleRetransmit() {
        guard self.retransmit == nil, let deadline = self.reliable.nextRetransmissionDeadline, let context = self.context else { return }
        let now = Self.now()
        self.retransmit = context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(deadline > now ? Int64(deadline - now) : 0)) {
            self.retransmit = nil
            if let frame = self.reliable.retransmission(now: Self.now()) {
                self.context?.writeAndFlush(self.wrapOutboundOut(WebSocketMessage.binary(frame)), promise: nil)
            }
            self.scheduleRetransmit()
        }
    }
}

/// Drives a `TestSessionClient` from async test code.
struct TestSession: Sendable {
    let channel: any Channel
    let handler: NIOLoopBound<TestSessionClient>
    let ready: EventLoopFuture<Void>
    let closed: EventLoopFuture<String>

    /// Arms drop survival and returns a future that completes when the current WebSocket goes away.
    func expectDrop() async throws -> EventLoopFuture<Void> {
        let handler = self.handler
        let loop = self.channel.eventLoop
        return try await loop.submit {
            handler.value.survivesDrops = true
            // Already dropped (between a reconnect and this call): nothing to wait for.
            if handler.value.context == nil { return loop.makeSucceededVoidFuture() }
            let promise = loop.makePromise(of: Void.self)
            handler.value.drops = promise
            return promise.futureResult
        }.get()
    }

    /// Opens a new WebSocket with a resumed token and moves the same client state onto it.
    func reconnect(streamURL: String, token: String) async throws -> TestSession {
        let url = URL(string: streamURL)!
        let uri = url.path + (url.query.map { "?\($0)" } ?? "")
        let handler = self.handler
        let loop = self.channel.eventLoop
        try await loop.submit { handler.value.token = token }.get()
        let channel = try await LoopbackClient.connectWebSocket(group: loop, host: url.host!, port: url.port!, uri: uri, headers: []) { channel in
            try channel.pipeline.syncOperations.addHandler(handler.value)
        }
        return TestSession(channel: channel, handler: handler, ready: self.ready, closed: self.closed)
    }

    static func connect(streamURL: String, token: String, clientVersion: String = "1.2.650.0", terminal: Bool = false) async throws -> TestSession {
        let url = URL(string: streamURL)!
        let uri = url.path + (url.query.map { "?\($0)" } ?? "")
        let box = Mutex<(NIOLoopBound<TestSessionClient>, EventLoopFuture<Void>, EventLoopFuture<String>)?>(nil)
        let channel = try await LoopbackClient.connectWebSocket(
            group: MultiThreadedEventLoopGroup.singleton, host: url.host!, port: url.port!, uri: uri, headers: []
        ) { channel in
            let client = TestSessionClient(token: token, clientVersion: clientVersion, loop: channel.eventLoop)
            client.isTerminal = terminal
            try channel.pipeline.syncOperations.addHandler(client)
            box.withLock { $0 = (NIOLoopBound(client, eventLoop: channel.eventLoop), client.ready.futureResult, client.closed.futureResult) }
        }
        let (handler, ready, closed) = box.withLock { $0! }
        return TestSession(channel: channel, handler: handler, ready: ready, closed: closed)
    }

    func stream(bytes: Int, seed: UInt64) async throws -> TestSessionClient.StreamResult {
        let promise = self.channel.eventLoop.makePromise(of: TestSessionClient.StreamResult.self)
        let handler = self.handler
        self.channel.eventLoop.execute { handler.value.openStream(bytes: bytes, seed: seed, promise: promise) }
        return try await promise.futureResult.get()
    }

    func stateSummary() async throws -> String {
        let handler = self.handler
        return try await self.channel.eventLoop.submit { handler.value.stateSummary }.get()
    }

    func handshakeProperties() async throws -> (agentVersion: String, properties: JSONValue) {
        let handler = self.handler
        return try await self.channel.eventLoop.submit { (handler.value.agentVersion, handler.value.sessionTypeProperties) }.get()
    }

    func type(_ text: String) async throws {
        let handler = self.handler
        try await self.channel.eventLoop.submit { handler.value.type(text) }.get()
    }

    func resize(columns: UInt32, rows: UInt32) async throws {
        let handler = self.handler
        try await self.channel.eventLoop.submit { handler.value.resize(columns: columns, rows: rows) }.get()
    }

    func output() async throws -> String {
        let handler = self.handler
        return try await self.channel.eventLoop.submit { String(buffer: handler.value.terminalOutput) }.get()
    }

    /// Waits (bounded) until the output contains `text`.
    func waitForOutput(containing text: String, timeout: Duration = .seconds(15)) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await self.output().contains(text) { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    func flood(count: Int) async throws {
        let handler = self.handler
        try await self.channel.eventLoop.submit { handler.value.flood(count: count) }.get()
    }

    /// How many `pause_publication` messages MGS sent this client.
    func pausesSeen() async throws -> Int {
        let handler = self.handler
        return try await self.channel.eventLoop.submit { handler.value.pausedSeen }.get()
    }

    func terminate() async throws {
        let handler = self.handler
        try await self.channel.eventLoop.submit { handler.value.sendTerminate() }.get()
    }
}
