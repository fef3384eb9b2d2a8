import Foundation
import NIOCore
import NIOPosix
import WebSocketTransport
import SSMProtocol
import SigV4
import Synchronization

/// A simulated SSM Agent for one instance. It talks to MGS exactly as the real agent does:
/// a signed token POST and a control-channel WebSocket, then, for every `interactive_shell`
/// task, a token POST and a data-channel WebSocket of its own. So the real agent or the
/// official plugin can take either end of an emulated session.
public final class AgentSimulator: Sendable {
    public let instance: LocalSSMConfiguration.Instance
    let host: String
    let port: Int
    let region: String
    let signer: SigV4Signer
    let limits: LimitsProfile
    let faults: FaultInjector
    let group: any EventLoopGroup
    private let state = Mutex<State>(State())

    struct State {
        var controlChannel: (any Channel)?
        var runner: Task<Void, Never>?
        var stopped = false
        var sessions: [String: any Channel] = [:]
        /// One per run of the agent: a stopped (killed) run's sessions neither reconnect nor report.
        var epoch = 0
    }

    /// The data channel's reconnect retryer (reference 2.5 and 11.2): first delay 100–199 ms, doubled
    /// up to 5 s, and the agent gives up after this many failed retries.
    static let dataChannelRetries = 5

    public init(
        instance: LocalSSMConfiguration.Instance, host: String, port: Int, region: String, credentials: AWSCredentials,
        limits: LimitsProfile, faults: FaultInjector = FaultInjector(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.instance = instance
        self.host = host
        self.port = port
        self.region = region
        self.signer = SigV4Signer(credentials: credentials, region: region, service: "ssmmessages")
        self.limits = limits
        self.faults = faults
        self.group = group
    }

    /// Connects (and keeps reconnecting, with the agent's backoff) until `stop()`; after a `stop()`
    /// this is a restart: a new agent process, which knows nothing of the old one's sessions.
    public func start() {
        self.state.withLock { $0.stopped = false }
        let runner = Task { await self.run() }
        self.state.withLock { $0.runner = runner }
    }

    /// Connects once; returns when the control channel is open.
    public func connect() async throws {
        let token = try await self.createToken(path: "/v1/control-channel/\(self.instance.id)", body: #"{"MessageSchemaVersion":"1.0","RequestId":"\#(UUID().uuidString.lowercased())"}"#)
        let uri = "/v1/control-channel/\(self.instance.id)?role=subscribe&stream=input"
        let channel = try await LoopbackClient.connectWebSocket(
            group: self.group, host: self.host, port: self.port, uri: uri, headers: self.signedHeaders(method: "GET", uri: uri, body: [])
        ) { channel in
            try channel.pipeline.syncOperations.addHandler(AgentControlHandler(agent: self))
        }
        let open = JSONValue.object([
            ("Cookie", .null), ("MessageSchemaVersion", .string("1.0")), ("RequestId", .string(UUID().uuidString.lowercased())),
            ("TokenValue", .string(token)), ("AgentVersion", .string(self.instance.agentVersion)), ("PlatformType", .string("linux")),
        ])
        try await channel.writeAndFlush(WebSocketMessage.text(open.encoded))
        let current = self.state.withLock { state in
            if !state.stopped { state.controlChannel = channel }
            return !state.stopped
        }
        if !current { try? await channel.close() }
    }

    func run() async {
        var delay = Duration.milliseconds(100)
        while !self.state.withLock({ $0.stopped }) {
            do {
                try await self.connect()
                delay = .milliseconds(100)
                let channel = self.state.withLock { $0.controlChannel }
                try? await channel?.closeFuture.get()
            } catch {
                // Unreachable MGS: retry with backoff, like the agent's control-channel retryer.
            }
            guard !self.state.withLock({ $0.stopped }) else { break }
            try? await Task.sleep(for: delay)  // reconnect retry backoff
            delay = min(delay * 2, .seconds(5))
        }
    }

    /// Stops the agent as a kill does: every connection closes, nothing is reported or reconnected.
    public func stop() async {
        let (channel, runner, sessions) = self.state.withLock { state in
            state.stopped = true
            state.epoch += 1
            defer {
                state.controlChannel = nil
                state.sessions = [:]
                state.runner = nil
            }
            return (state.controlChannel, state.runner, Array(state.sessions.values))
        }
        for session in sessions { try? await session.close() }
        try? await channel?.close()
        runner?.cancel()
        await runner?.value
    }

    /// Closes the agent's connections as a network failure would: it reconnects by itself.
    public func dropConnections() async {
        let (channel, sessions) = self.state.withLock { ($0.controlChannel, Array($0.sessions.values)) }
        for session in sessions { try? await session.close() }
        try? await channel?.close()
    }

    /// Sessions this agent runs now.
    var sessionIDs: [String] { self.state.withLock { Array($0.sessions.keys) } }

    /// Where the agent's side of a session stands (phase, window, destinations, what waits where),
    /// for a report when a transfer stalls; nil when this agent does not run the session.
    public func stateSummary(sessionID: String) async -> String? {
        guard let channel = self.state.withLock({ $0.sessions[sessionID] }) else { return nil }
        return try? await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: AgentSessionHandler.self).stateSummary
        }.get()
    }

    func isCurrent(_ epoch: Int) -> Bool {
        self.state.withLock { !$0.stopped && $0.epoch == epoch }
    }

    func signedHeaders(method: String, uri: String, body: [UInt8]) -> [(String, String)] {
        let parts = uri.split(separator: "?", maxSplits: 1)
        var request = SigV4Request(
            method: method, path: String(parts[0]), query: parts.count > 1 ? String(parts[1]) : "",
            headers: [(name: "Host", value: "\(self.host):\(self.port)")], body: body)
        self.signer.sign(&request, at: Date())
        return request.headers.filter { $0.name.lowercased() != "host" }.map { ($0.name, $0.value) }
    }

    func createToken(path: String, body: String) async throws -> String {
        let bytes = Array(body.utf8)
        var headers = self.signedHeaders(method: "POST", uri: path, body: bytes)
        headers.append(("Content-Type", "application/json"))
        let (status, text) = try await LoopbackClient.post(
            group: self.group, host: self.host, port: self.port, path: path, headers: headers, body: ByteBuffer(bytes: bytes))
        guard status == 201, let start = text.range(of: "<TokenValue>"), let end = text.range(of: "</TokenValue>") else {
            throw LoopbackClient.HTTPFailure(description: "unexpected response from the service \(text)")
        }
        return String(text[start.upperBound..<end.lowerBound])
    }

    /// Starts the session an `interactive_shell` task describes.
    func startSession(taskPayload: ByteBuffer) {
        guard let outer = try? JSONValue(parsing: taskPayload), let contentText = outer["Content"]?.stringValue,
            let content = try? JSONValue(parsing: contentText), let sessionID = content["SessionId"]?.stringValue,
            let sessionType = content["DocumentContent"]?["sessionType"]?.stringValue
        else { return }
        let task = AgentTask(
            sessionID: sessionID, sessionType: sessionType, properties: content["DocumentContent"]?["properties"] ?? .null,
            instance: self.instance, limits: self.limits, faults: self.faults, epoch: self.state.withLock { $0.epoch })
        Task {
            do {
                // The real agent starts a session-worker process before it opens the data channel.
                let delay = self.limits.agentStartDelayMilliseconds
                if delay > 0 { try await Task.sleep(for: .milliseconds(delay)) }
                try await self.openDataChannel(task)
            } catch {
                self.reportCompletion(sessionID: sessionID, failure: "cannot open the data channel: \(error)")
            }
        }
    }

    func openDataChannel(_ task: AgentTask) async throws {
        try await self.dialDataChannel(task, loop: self.group.next()) { token, channel in
            let handler = AgentSessionHandler(
                task: task, token: token,
                onEnd: { [weak self] sessionID, failure in self?.sessionEnded(sessionID, failure: failure, epoch: task.epoch) },
                onDisconnect: { [weak self] handler, loop in self?.reconnect(handler, task: task, loop: loop) })
            try channel.pipeline.syncOperations.addHandler(handler)
        }
    }

    /// CreateDataChannel (a new token), then the WebSocket; `attach` adds the session's handler on the channel's loop.
    func dialDataChannel(
        _ task: AgentTask, loop: any EventLoopGroup, attach: @escaping @Sendable (_ token: String, any Channel) throws -> Void
    ) async throws {
        let path = "/v1/data-channel/\(task.sessionID)"
        let token = try await self.createToken(
            path: path, body: #"{"MessageSchemaVersion":"1.0","RequestId":"\#(UUID().uuidString.lowercased())","ClientId":""}"#)
        let uri = "\(path)?role=publish_subscribe"
        let channel = try await LoopbackClient.connectWebSocket(
            group: loop, host: self.host, port: self.port, uri: uri, headers: self.signedHeaders(method: "GET", uri: uri, body: [])
        ) { channel in
            try attach(token, channel)
        }
        let current = self.state.withLock { state in
            if !state.stopped, state.epoch == task.epoch { state.sessions[task.sessionID] = channel }
            return !state.stopped && state.epoch == task.epoch
        }
        if !current { channel.close(promise: nil) }
    }

    /// The data channel's WebSocket dropped with the session running: a new token, a new WebSocket, the
    /// same handler (so the same sequence state), with the agent's retryer. Gives up like the agent:
    /// after the retries, or at once when MGS says the session is over; the session then fails.
    func reconnect(_ handler: NIOLoopBound<AgentSessionHandler>, task: AgentTask, loop: any EventLoop) {
        Task {
            var delay = Duration.milliseconds(Int.random(in: 100...199))
            var failures = 0
            var failure: String?
            while self.isCurrent(task.epoch) {
                do {
                    // On the handler's own loop: its destinations live there.
                    try await self.dialDataChannel(task, loop: loop) { token, channel in
                        handler.value.token = token
                        try channel.pipeline.syncOperations.addHandler(handler.value)
                    }
                    return
                } catch {
                    let terminated = "\(error)".contains("Session is already terminated")
                    failures += 1
                    guard !terminated, failures <= Self.dataChannelRetries else {
                        failure = terminated ? nil : "the data channel could not be reopened: \(error)"
                        break
                    }
                    try? await Task.sleep(for: delay)  // the retryer's backoff
                    delay = min(delay * 2, .seconds(5))
                }
            }
            // A killed agent's session just stops; one that gave up fails.
            let reason = failure
            loop.execute { handler.value.end(failure: reason) }
        }
    }

    func sessionEnded(_ sessionID: String, failure: String?, epoch: Int) {
        let current = self.state.withLock { state in
            guard state.epoch == epoch else { return false }
            state.sessions.removeValue(forKey: sessionID)
            return true
        }
        if current { self.reportCompletion(sessionID: sessionID, failure: failure) }
    }

    /// `agent_task_complete` on the control channel: how the service learns the session's outcome.
    func reportCompletion(sessionID: String, failure: String?) {
        guard let channel = self.state.withLock({ $0.controlChannel }) else { return }
        let payload = JSONValue.object([
            ("SchemaVersion", .integer(1)), ("TaskId", .string(sessionID)), ("Topic", .string("agent_task_complete")),
            ("FinalTaskStatus", .string(failure == nil ? "Success" : "Failed")), ("IsRoutingFailure", .bool(false)),
            ("AwsAccountId", .string("")), ("InstanceId", .string(self.instance.id)), ("Output", .string(failure ?? "")),
            ("S3Bucket", .string("")), ("S3UrlSuffix", .string("")), ("CwlGroup", .string("")), ("CwlStream", .string("")),
            ("RetryNumber", .integer(0)),
        ])
        let message = AgentMessage(
            messageType: .agentTaskComplete, createdDate: MGS.nowMilliseconds(), sequenceNumber: 0, flags: [],
            messageID: .random(), payloadType: .undefined, payload: payload.encoded)
        if let frame = try? message.encoded() {
            channel.writeAndFlush(WebSocketMessage.binary(frame), promise: nil)
        }
    }
}

/// The agent's control channel: answers pings, takes `interactive_shell` and `channel_closed`.
final class AgentControlHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketMessage
    typealias OutboundOut = WebSocketMessage
    let agent: AgentSimulator

    init(agent: AgentSimulator) { self.agent = agent }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .binary(let payload), .text(let payload):
            guard let message = try? AgentMessage.decode(payload, options: .init(verifiesDigest: false)) else { return }
            if message.messageType == .interactiveShell {
                self.agent.startSession(taskPayload: message.payload)
            }
        case .ping, .pong:
            break  // the codec answers pings
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension AgentControlHandler: Sendable {}

/// The emulator as one unit: the server and one simulated agent per online instance.
public final class LocalEmulator: Sendable {
    public let server: LocalSSMServer
    private let agents = Mutex<[AgentSimulator]>([])
    /// Set by `stop()`: a killed agent's pending restart must not bring it back after that.
    private let stopped = Atomic<Bool>(false)

    public init(configuration: LocalSSMConfiguration) {
        self.server = LocalSSMServer(configuration: configuration)
        self.server.agentKiller.withLock { killer in
            killer = { [weak self] instanceID, restartAfter in
                await self?.killAgent(instanceID, restartAfter: restartAfter) ?? false
            }
        }
    }

    /// Fault injection: kills an instance's agent (its control channel and every data channel close at
    /// once, nothing is reported) and, after `restartAfter`, starts a fresh one. MGS ends the old
    /// agent's sessions when the new one connects.
    public func killAgent(_ instanceID: String, restartAfter: TimeAmount?) async -> Bool {
        guard let agent = self.agent(for: instanceID) else { return false }
        await agent.stop()
        if let restartAfter {
            MultiThreadedEventLoopGroup.singleton.next().scheduleTask(in: restartAfter) { [weak self] in
                guard let self, !self.stopped.load(ordering: .relaxed) else { return }
                agent.start()
            }
        }
        return true
    }

    public var configuration: LocalSSMConfiguration { self.server.configuration }

    /// The simulated agents' own threads. A real agent runs on its instance, not inside the service: on
    /// the service's loops an agent socket and the service's end of it could share one thread, which then
    /// carries every message twice while the other loop idles (the single-stream bottleneck).
    static let agentEventLoops: any EventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)

    /// Binds, then connects an agent for every instance configured Online; returns once they are connected.
    public func start() async throws {
        try await self.server.start()
        let configuration = self.server.configuration
        let credentials = configuration.credentials.first.map { AWSCredentials(accessKeyID: $0.accessKeyID, secretAccessKey: $0.secretAccessKey) }
            ?? AWSCredentials(accessKeyID: "agent", secretAccessKey: "agent")
        let host = configuration.listenHost == "0.0.0.0" ? "127.0.0.1" : configuration.listenHost
        var started: [AgentSimulator] = []
        for instance in configuration.instances where instance.pingStatus == .online {
            let agent = AgentSimulator(
                instance: instance, host: host, port: self.server.port, region: configuration.region,
                credentials: credentials, limits: configuration.limits, faults: self.server.mgs.faults,
                group: Self.agentEventLoops)
            agent.start()
            started.append(agent)
        }
        self.agents.withLock { $0 = started }
        // Ready when every agent holds its control channel. MGS sends no answer to the open frame, so this
        // polls, bounded at 20 s (a loaded machine can take seconds): a broken agent must not hang start-up
        // (its instance then shows ConnectionLost).
        for _ in 0..<2000 {
            if started.allSatisfy({ self.server.mgs.isAgentConnected($0.instance.id) }) { return }
            try await Task.sleep(for: .milliseconds(10))  // start-up readiness poll, not pacing
        }
    }

    public func agent(for instanceID: String) -> AgentSimulator? {
        self.agents.withLock { $0.first { $0.instance.id == instanceID } }
    }

    public func stop() async {
        self.stopped.store(true, ordering: .relaxed)
        for agent in self.agents.withLock({ $0 }) { await agent.stop() }
        await self.server.stop()
    }

    /// Runs until SIGINT or SIGTERM, then stops.
    public func runUntilSignalled() async {
        let (signals, continuation) = AsyncStream<Int32>.makeStream()
        // Kept alive by this frame until a signal arrives.
        var sources: [any DispatchSourceSignal] = []
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber)
            source.setEventHandler { continuation.yield(signalNumber) }
            source.resume()
            sources.append(source)
        }
        for await _ in signals { break }
        sources.forEach { $0.cancel() }
        await self.stop()
    }
}
