import AWSClient
import DataChannel
import Logging
import NIOCore
import SSMProtocol
import Sessions

/// How the Pool sizes itself.
public struct PoolSettings: Sendable, Hashable {
    /// Sessions per route at most: each carries about 1 MB/s on AWS, so several multiply throughput.
    public var sessionsPerRoute = 8
    /// Sessions in all at most.
    public var totalSessions = 64
    /// Streams a session takes before the Pool starts another for the route (a soft cap: at the
    /// limits, streams go to the least-loaded session). Streams lingering after their client's EOF
    /// do not count.
    public var streamsPerSession = 2
    /// A session with no streams is closed after this; kept below the account's session idle timeout.
    public var idleTimeout: TimeAmount = .seconds(120)
    /// How long a stream stays open after the client's EOF, waiting for the destination to answer.
    public var linger: TimeAmount = .seconds(30)
    /// Connections waiting for a session to start, at most (beyond: refused as unavailable).
    public var maximumWaiting = 4096

    public init() {}
}

/// How streams reach the destination of a route.
enum RouteMode: Sendable {
    /// Pooled port sessions in mux mode.
    case mux
    /// IAM allows only AWS-StartSSHSession: one session per connection.
    case sshDocument
    /// The agent has no smux: one basic port session per connection.
    case basic
}

/// Starts the session for a route and builds its data channel, on the pool's loop.
protocol SessionStarting: Sendable {
    func startSession(route: Route, document: String, parameters: [String: [String]], user: String) async throws -> StartedChannelSource
    func terminateSession(route: Route, sessionID: String, user: String)
}

/// A started session whose data channel can be built on an event loop.
struct StartedChannelSource: Sendable {
    var sessionID: String
    var makeChannel: @Sendable (any EventLoop) throws -> DataChannel
}

/// One pooled session in mux mode.
final class PooledChannel {
    let route: Route
    let document: String
    let sessionID: String
    let mux: MuxConnection
    /// Weak: streams may outlive a gateway that has shut down.
    weak var pool: SessionPool?
    /// Open smux streams, lingering ones included: a session closes as idle only at zero.
    var streams = 0
    /// Of `streams`, those whose client has finished sending and that only wait for the
    /// destination to close (up to `linger`): they carry no upload, so placement ignores them.
    var lingering = 0
    /// What placement balances: streams still carrying their client's data.
    var load: Int { self.streams - self.lingering }
    var idleTask: Scheduled<Void>?
    var closed = false

    init(route: Route, document: String, sessionID: String, mux: MuxConnection, pool: SessionPool) {
        self.route = route
        self.document = document
        self.sessionID = sessionID
        self.mux = mux
        self.pool = pool
    }

    func streamEnded(wasLingering: Bool) {
        self.streams -= 1
        if wasLingering { self.lingering -= 1 }
        self.pool?.channelBecameLess(loaded: self)
    }
}

/// Warm sessions per route and the smux streams on them: least-loaded session first, a new session
/// started ahead as soon as every one holds `streamsPerSession` (connections beyond that wait for
/// it, so a burst spreads), up to the per-route and total limits; idle sessions close after
/// `idleTimeout`. Bound to one event loop: every call happens on it.
final class SessionPool {
    struct Waiter {
        var user: String
        var promise: EventLoopPromise<any DestinationStream>
    }

    final class RouteState {
        var channels: [PooledChannel] = []
        var starting = 0
        var waiters: [Waiter] = []
        var mode: RouteMode = .mux
        var lastError: StreamOpenError?
    }

    let loop: any EventLoop
    var settings: PoolSettings
    let starter: any SessionStarting
    let metrics: GatewayMetrics
    let logger: Logger
    var routes: [Route: RouteState] = [:]
    var dedicatedCount = 0
    var shuttingDown = false

    init(loop: any EventLoop, settings: PoolSettings, starter: any SessionStarting, metrics: GatewayMetrics, logger: Logger) {
        self.loop = loop
        self.settings = settings
        self.starter = starter
        self.metrics = metrics
        self.logger = logger
    }

    var totalSessions: Int {
        self.routes.values.reduce(0) { $0 + $1.channels.count + $1.starting } + self.dedicatedCount
    }

    var pooledSessionCount: Int { self.routes.values.reduce(0) { $0 + $1.channels.count } }

    /// Hands out a stream for `route`, starting a session when needed.
    func open(route: Route, user: String) -> EventLoopFuture<any DestinationStream> {
        self.loop.preconditionInEventLoop()
        guard !self.shuttingDown else {
            return self.loop.makeFailedFuture(StreamOpenError(.unavailable, "The gateway is shutting down; try again in a moment."))
        }
        let state = self.routes[route] ?? {
            let fresh = RouteState()
            self.routes[route] = fresh
            return fresh
        }()
        switch state.mode {
        case .sshDocument, .basic:
            return self.openDedicated(route: route, mode: state.mode, user: user)
        case .mux:
            break
        }
        let live = state.channels.filter { !$0.closed && !$0.mux.isClosed }
        let canGrow = state.channels.count + state.starting < self.settings.sessionsPerRoute
            && self.totalSessions < self.settings.totalSessions
        let cap = self.settings.streamsPerSession
        // At the limits, a session past its cap still beats waiting, unless one that is starting has room.
        let roomInStarting = state.starting * cap - state.waiters.count
        if let best = live.min(by: { $0.load < $1.load }), best.load < cap || !canGrow && roomInStarting <= 0 {
            // The session ended under us: forget it and try again.
            guard let stream = self.attach(to: best) else { return self.open(route: route, user: user) }
            if canGrow, state.starting == 0, live.allSatisfy({ $0.load >= cap }) {
                // That filled the last session with room: warm the next one now, so the next
                // connection finds it ready instead of waiting for a session start.
                self.startChannels(route: route, state: state, wanted: 1, user: user)
            }
            return self.loop.assumeIsolated().makeSucceededFuture(stream)
        }
        // A burst beyond what the warm sessions should carry waits for the sessions it starts, so
        // its streams spread over them (a TCP stream never moves once placed).
        guard state.waiters.count < self.settings.maximumWaiting else {
            return self.loop.makeFailedFuture(StreamOpenError(.unavailable, "Too many connections are waiting for a session to \(route); try again shortly."))
        }
        let promise = self.loop.makePromise(of: (any DestinationStream).self)
        state.waiters.append(Waiter(user: user, promise: promise))
        let needed = (state.waiters.count + self.settings.streamsPerSession - 1) / self.settings.streamsPerSession
        self.startChannels(route: route, state: state, wanted: needed - state.starting, user: user)
        if state.starting == 0 {
            // Nothing could start (limits): fail rather than wait forever.
            self.failWaiters(state, StreamOpenError(.unavailable, "The gateway is at its session limit (\(self.settings.totalSessions)); try again when connections close."))
        }
        return promise.futureResult
    }

    /// A new smux stream on `channel`; nil (and the channel is dropped) when the session has ended.
    func attach(to channel: PooledChannel) -> (any DestinationStream)? {
        let stream = PooledStream(channel: channel, linger: self.settings.linger)
        do {
            stream.id = try channel.mux.openStream(peer: stream)
        } catch {
            channel.closed = true
            self.routes[channel.route]?.channels.removeAll { $0 === channel }
            return nil
        }
        channel.streams += 1
        channel.idleTask?.cancel()
        channel.idleTask = nil
        self.metrics.streamOpened(pooled: true)
        return stream
    }

    func startChannels(route: Route, state: RouteState, wanted: Int, user: String) {
        var wanted = wanted
        while wanted > 0, state.channels.count + state.starting < self.settings.sessionsPerRoute,
            self.totalSessions < self.settings.totalSessions
        {
            wanted -= 1
            state.starting += 1
            self.startChannel(route: route, state: state, user: user)
        }
    }

    func startChannel(route: Route, state: RouteState, user: String) {
        let starter = self.starter
        let loop = self.loop
        let began = NIODeadline.now()
        self.metrics.sessionStarting()
        let started = loop.makeFutureWithTask {
            try await starter.startSession(route: route, document: route.document, parameters: route.parameters, user: user)
        }
        started.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let source):
                do {
                    let channel = try source.makeChannel(loop)
                    let waiter = SessionStartWaiter(channel: channel)
                    channel.connect().whenFailure { _ in }  // failures arrive through the delegate
                    waiter.started.assumeIsolated().whenComplete { outcome in
                        self.channelStarted(outcome.map { (channel, $0, source.sessionID) }, route: route, state: state, user: user, began: began)
                    }
                } catch {
                    self.channelStarted(.failure(error), route: route, state: state, user: user, began: began)
                }
            case .failure(let error):
                self.channelStarted(.failure(error), route: route, state: state, user: user, began: began)
            }
        }
    }

    func channelStarted(
        _ result: Result<(DataChannel, StartedSession, String), any Error>, route: Route, state: RouteState, user: String, began: NIODeadline
    ) {
        state.starting -= 1
        switch result {
        case .success(let (channel, session, sessionID)):
            self.metrics.sessionStarted(seconds: Double((NIODeadline.now() - began).nanoseconds) / 1e9)
            guard session.isPort, AgentVersion(session.agentVersion).supportsMux else {
                // An agent without smux: this session and later ones carry one connection each.
                state.mode = .basic
                self.logger.info("agent without smux: one basic session per connection", metadata: ["target": "\(route.target)", "agent": "\(session.agentVersion)"])
                self.adoptAsDedicated(channel: channel, route: route, document: route.document, sessionID: sessionID, user: user, state: state)
                return
            }
            let mux = MuxConnection(channel: channel, session: session)
            let pooled = PooledChannel(route: route, document: route.document, sessionID: sessionID, mux: mux, pool: self)
            mux.onClose = { [weak self] error in self?.channelClosed(pooled, state: state, error: error) }
            mux.onNotice = { [logger = self.logger] text in logger.notice("\(text)", metadata: ["session": "\(sessionID)"]) }
            state.channels.append(pooled)
            self.metrics.pooledSessions(self.pooledSessionCount)
            self.logger.info("session ready", metadata: ["route": "\(route)", "session": "\(sessionID)", "pooled": "\(state.channels.count)"])
            self.serveWaiters(state)
            self.scheduleIdleClose(pooled)
        case .failure(let error):
            self.metrics.sessionFailed()
            if case .mux = state.mode, route.remoteHost == nil, Self.isAccessDenied(error) {
                // IAM allows only AWS-StartSSHSession here: one session per connection from now on.
                state.mode = .sshDocument
                self.logger.notice("port forwarding denied; falling back to AWS-StartSSHSession", metadata: ["target": "\(route.target)"])
                let waiters = state.waiters
                state.waiters = []
                for waiter in waiters {
                    self.openDedicated(route: route, mode: .sshDocument, user: waiter.user).assumeIsolated().whenComplete { waiter.promise.assumeIsolated().completeWith($0) }
                }
                return
            }
            let openError = Self.openError(error, route: route)
            state.lastError = openError
            self.logger.warning("session start failed", metadata: ["route": "\(route)", "error": "\(openError.message)"])
            if state.starting == 0 {
                // Nothing more is coming: waiting connections go to the sessions there are, or fail.
                if state.channels.isEmpty { self.failWaiters(state, openError) } else { self.serveWaiters(state) }
            }
        }
    }

    /// Waiting connections go to the least-loaded sessions as they become ready.
    func serveWaiters(_ state: RouteState) {
        while !state.waiters.isEmpty {
            let live = state.channels.filter { !$0.closed && !$0.mux.isClosed }
            guard let best = live.min(by: { $0.load < $1.load }) else { return }
            if best.load >= self.settings.streamsPerSession, state.starting > 0 { return }
            guard let stream = self.attach(to: best) else { continue }
            state.waiters.removeFirst().promise.assumeIsolated().succeed(stream)
        }
    }

    func failWaiters(_ state: RouteState, _ error: StreamOpenError) {
        let waiters = state.waiters
        state.waiters = []
        for waiter in waiters { waiter.promise.fail(error) }
    }

    func channelBecameLess(loaded channel: PooledChannel) {
        self.metrics.streamClosed()
        self.scheduleIdleClose(channel)
    }

    /// An unused session closes after `idleTimeout` unless a stream comes first.
    func scheduleIdleClose(_ channel: PooledChannel) {
        guard channel.streams == 0, !channel.closed, channel.idleTask == nil else { return }
        channel.idleTask = self.loop.assumeIsolated().scheduleTask(in: self.settings.idleTimeout) {
            guard channel.streams == 0, !channel.closed else { return }
            self.logger.info("closing idle session", metadata: ["route": "\(channel.route)", "session": "\(channel.sessionID)"])
            self.close(channel)
        }
    }

    func close(_ channel: PooledChannel) {
        guard !channel.closed else { return }
        channel.closed = true
        channel.idleTask?.cancel()
        channel.mux.terminate()
        self.starter.terminateSession(route: channel.route, sessionID: channel.sessionID, user: "")
        if let state = self.routes[channel.route] {
            state.channels.removeAll { $0 === channel }
        }
        self.metrics.pooledSessions(self.pooledSessionCount)
    }

    func channelClosed(_ channel: PooledChannel, state: RouteState, error: DataChannelError?) {
        let wasClosed = channel.closed
        channel.closed = true
        channel.idleTask?.cancel()
        channel.mux.onClose = nil
        state.channels.removeAll { $0 === channel }
        self.metrics.pooledSessions(self.pooledSessionCount)
        if !wasClosed {
            self.logger.notice("pooled session ended", metadata: ["route": "\(channel.route)", "session": "\(channel.sessionID)", "reason": "\(error.map { "\($0)" } ?? "closed")"])
            if error != nil { self.metrics.error(kind: "session_lost") }
        }
    }

    // MARK: One session per connection

    func openDedicated(route: Route, mode: RouteMode, user: String) -> EventLoopFuture<any DestinationStream> {
        guard self.totalSessions < self.settings.totalSessions else {
            return self.loop.makeFailedFuture(StreamOpenError(.unavailable, "The gateway is at its session limit (\(self.settings.totalSessions)); try again when connections close."))
        }
        let document = mode == .sshDocument ? "AWS-StartSSHSession" : route.document
        let parameters = mode == .sshDocument ? ["portNumber": [String(route.port)]] : route.parameters
        let starter = self.starter
        let loop = self.loop
        let linger = self.settings.linger
        self.dedicatedCount += 1
        self.metrics.sessionStarting()
        let began = NIODeadline.now()
        let promise = loop.makePromise(of: (any DestinationStream).self)
        let fail = { (error: any Error) in
            self.dedicatedCount -= 1
            self.metrics.sessionFailed()
            promise.fail(Self.openError(error, route: route))
        }
        let started = loop.makeFutureWithTask {
            try await starter.startSession(route: route, document: document, parameters: parameters, user: user)
        }
        started.assumeIsolated().whenComplete { result in
            switch result {
            case .failure(let error):
                fail(error)
            case .success(let source):
                do {
                    let channel = try source.makeChannel(loop)
                    let description = RouteDescription(target: route.target, document: document, sessionID: source.sessionID)
                    let stream = DedicatedSessionStream(channel: channel, route: description, linger: linger) { [weak self] in
                        guard let self else { return }
                        self.dedicatedCount -= 1
                        self.starter.terminateSession(route: route, sessionID: source.sessionID, user: user)
                        self.metrics.streamClosed()
                    }
                    let handshake = loop.makePromise(of: Void.self)
                    stream.started = handshake
                    channel.delegate = stream
                    channel.connect().whenFailure { _ in }
                    handshake.futureResult.assumeIsolated().whenComplete { outcome in
                        switch outcome {
                        case .success:
                            self.metrics.sessionStarted(seconds: Double((NIODeadline.now() - began).nanoseconds) / 1e9)
                            self.metrics.streamOpened(pooled: false)
                            promise.assumeIsolated().succeed(stream)
                        case .failure(let error):
                            // The stream's end handler already gave the session back.
                            self.metrics.sessionFailed()
                            promise.fail(Self.openError(error, route: route))
                        }
                    }
                } catch {
                    fail(error)
                }
            }
        }
        return promise.futureResult
    }

    /// The first session of a basic-mode route serves the first waiter; the others start their own.
    func adoptAsDedicated(channel: DataChannel, route: Route, document: String, sessionID: String, user: String, state: RouteState) {
        let description = RouteDescription(target: route.target, document: document, sessionID: sessionID)
        var waiters = state.waiters
        state.waiters = []
        guard !waiters.isEmpty else {
            channel.close()
            self.starter.terminateSession(route: route, sessionID: sessionID, user: user)
            return
        }
        self.dedicatedCount += 1
        let stream = DedicatedSessionStream(channel: channel, route: description, linger: self.settings.linger) { [weak self] in
            guard let self else { return }
            self.dedicatedCount -= 1
            self.starter.terminateSession(route: route, sessionID: sessionID, user: user)
            self.metrics.streamClosed()
        }
        channel.delegate = stream
        self.metrics.streamOpened(pooled: false)
        waiters.removeFirst().promise.assumeIsolated().succeed(stream)
        for waiter in waiters {
            self.openDedicated(route: route, mode: .basic, user: waiter.user).assumeIsolated().whenComplete { waiter.promise.assumeIsolated().completeWith($0) }
        }
    }

    // MARK: Shutdown

    /// Ends every pooled session (their streams get a clean close).
    func shutdown() {
        self.shuttingDown = true
        for state in self.routes.values {
            self.failWaiters(state, StreamOpenError(.unavailable, "The gateway is shutting down."))
            for channel in state.channels { self.close(channel) }
        }
    }

    // MARK: Errors

    static func isAccessDenied(_ error: any Error) -> Bool {
        guard let error = error as? AWSServiceError else { return false }
        return error.code.contains("AccessDenied") || error.httpStatus == 403 && error.code != "ExpiredTokenException"
    }

    static func openError(_ error: any Error, route: Route) -> StreamOpenError {
        if let error = error as? StreamOpenError { return error }
        if let error = error as? AWSServiceError {
            switch error.code {
            case "TargetNotConnected":
                return StreamOpenError(.targetOffline, error.description)
            case let code where code.contains("AccessDenied"):
                return StreamOpenError(.denied, error.description)
            case "InvalidTarget", "InvalidInstanceId":
                return StreamOpenError(.unknownTarget, error.description)
            default:
                return StreamOpenError(.sessionFailed, error.description)
            }
        }
        return StreamOpenError(.sessionFailed, "Cannot start a session to \(route): \(error)")
    }
}
