import AWSClient
import DataChannel
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Starts sessions with the gateway's AWS context, or a user's assumed role.
final class AWSSessionStarter: SessionStarting {
    let context: AWSContext
    let roles = NIOLockedValueBox<[String: AWSContext]>([:])
    let users: @Sendable () -> UserDirectory

    init(context: AWSContext, users: @escaping @Sendable () -> UserDirectory) {
        self.context = context
        self.users = users
    }

    /// The context a user's sessions run with: their role (RoleSessionName = SourceIdentity = the user) or the gateway's.
    func context(for user: String) -> AWSContext {
        guard let role = self.users().user(named: user)?.roleARN else { return self.context }
        let key = "\(user)\u{0}\(role)"
        return self.roles.withLockedValue { roles in
            if let context = roles[key] { return context }
            let provider = AssumedRoleCredentials(sts: self.context.sts, roleARN: role, user: user)
            let context = self.context.with(credentials: provider)
            roles[key] = context
            return context
        }
    }

    func startSession(route: Route, document: String, parameters: [String: [String]], user: String) async throws -> StartedChannelSource {
        let context = self.context(for: user)
        let response = try await context.ssm.startSession(
            target: route.target, documentName: document, parameters: parameters, reason: user.isEmpty ? nil : "ssmgate for \(user)")
        let clientID = DataChannel.uuid()
        return StartedChannelSource(sessionID: response.sessionID) { loop in
            try context.makeDataChannel(for: response, target: route.target, clientID: clientID, on: loop)
        }
    }

    func terminateSession(route: Route, sessionID: String, user: String) {
        let context = self.context(for: user)
        Task { try? await context.ssm.terminateSession(sessionID: sessionID) }
    }
}

/// The gateway's services for its fronts: resolve the name, check the user's access, take a stream
/// from the Pool, and write the audit trail.
public final class GatewayCore: GatewayServices {
    public let loop: any EventLoop
    public let metrics: GatewayMetrics
    public let audit: AuditLog
    let router: Router
    let logger: Logger
    let state: NIOLockedValueBox<(users: UserDirectory, pool: PoolSettings)>
    let pool: NIOLoopBoundBox<SessionPool>

    init(loop: any EventLoop, router: Router, users: UserDirectory, poolSettings: PoolSettings, starter: (@Sendable (@escaping @Sendable () -> UserDirectory) -> any SessionStarting),
         metrics: GatewayMetrics, audit: AuditLog, logger: Logger) {
        self.loop = loop
        self.router = router
        self.metrics = metrics
        self.audit = audit
        self.logger = logger
        let state = NIOLockedValueBox((users: users, pool: poolSettings))
        self.state = state
        let sessionStarter = starter { state.withLockedValue { $0.users } }
        self.pool = NIOLoopBoundBox.makeBoxSendingValue(
            SessionPool(loop: loop, settings: poolSettings, starter: sessionStarter, metrics: metrics, logger: logger), eventLoop: loop)
    }

    /// Builds the core for real AWS (or the emulator behind `context`).
    public convenience init(loop: any EventLoop, router: Router, users: UserDirectory, poolSettings: PoolSettings, context: AWSContext,
                            metrics: GatewayMetrics, audit: AuditLog, logger: Logger) {
        self.init(loop: loop, router: router, users: users, poolSettings: poolSettings,
                  starter: { users in AWSSessionStarter(context: context, users: users) },
                  metrics: metrics, audit: audit, logger: logger)
    }

    public var users: UserDirectory { self.state.withLockedValue { $0.users } }

    /// Takes a reloaded configuration: new users and rules apply to new streams; open ones stay.
    public func update(users: UserDirectory, router: Router.Configuration, pool settings: PoolSettings) {
        self.state.withLockedValue { $0 = (users, settings) }
        self.router.update(router)
        self.loop.execute { self.pool.value.settings = settings }
    }

    public func openStream(_ request: StreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any DestinationStream> {
        let began = NIODeadline.now()
        let loop = self.loop
        let promise = loop.makePromise(of: (any DestinationStream).self)
        let resolved = loop.makeFutureWithTask { () async throws -> Route in
            try await self.route(for: request)
        }
        resolved.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let route):
                self.pool.value.open(route: route, user: request.identity.user).assumeIsolated().whenComplete { opened in
                    switch opened {
                    case .success(let stream):
                        self.metrics.opened(seconds: Double((NIODeadline.now() - began).nanoseconds) / 1e9)
                        self.audit.record(event: "open", request: request, route: stream.routeDescription, outcome: "ok")
                        promise.assumeIsolated().succeed(stream)
                    case .failure(let error):
                        promise.fail(self.refused(request, error))
                    }
                }
            case .failure(let error):
                promise.fail(self.refused(request, error))
            }
        }
        return promise.futureResult
    }

    func refused(_ request: StreamRequest, _ error: any Error) -> StreamOpenError {
        let openError = error as? StreamOpenError ?? StreamOpenError(.sessionFailed, "\(error)")
        self.metrics.error(kind: openError.kind.rawValue)
        self.audit.record(event: "refused", request: request, route: nil, outcome: "\(openError.kind.rawValue): \(openError.message)")
        self.logger.notice("stream refused", metadata: [
            "user": "\(request.identity.user)", "host": "\(request.host):\(request.port)", "front": "\(request.identity.front.rawValue)",
            "error": "\(openError.message)",
        ])
        return openError
    }

    /// Name → node → access check → route (with the user's role).
    func route(for request: StreamRequest) async throws -> Route {
        guard (1...65535).contains(request.port) else {
            throw StreamOpenError(.unknownTarget, "Port \(request.port) is not a TCP port (1–65535).")
        }
        let users = self.users
        guard let user = users.user(named: request.identity.user) else {
            throw StreamOpenError(.denied, "User '\(request.identity.user)' has no access rules on this gateway; ask its administrator to add you.")
        }
        let resolution = try await self.router.resolve(host: request.host)
        guard user.allows(resolution.target, remoteHost: resolution.remoteHost, typedHost: request.host, port: request.port) else {
            let name = resolution.target.name.map { " (\($0))" } ?? ""
            throw StreamOpenError(.denied,
                "Access denied: \(request.identity.user) may not reach \(request.host):\(request.port) [\(resolution.target.id)\(name)] through this gateway. Ask the gateway administrator to allow it.")
        }
        return Route(target: resolution.target.id, remoteHost: resolution.remoteHost, port: request.port, roleARN: user.roleARN)
    }

    public func authenticate(user: String, keyType: String, keyBase64: String) -> AuthenticatedUser? {
        self.users.authenticate(login: user, keyType: keyType, keyBase64: keyBase64)
    }

    public func helpText(for identity: ClientIdentity) -> String {
        // Called from a front's own thread (libssh): a bounded wait for the cached directory is fine there.
        let box = NIOLockedValueBox<[TargetInfo]>([])
        let done = DispatchSemaphore(value: 0)
        let router = self.router
        Task {
            let targets = await router.knownTargets()
            box.withLockedValue { $0 = targets }
            done.signal()
        }
        _ = done.wait(timeout: .now() + 5)
        let user = self.users.user(named: identity.user)
        let reachable = box.withLockedValue { $0 }.filter { target in
            user?.rules.contains { rule in rule.targets.contains { AccessRule.pattern($0, matches: target, remoteHost: nil, typedHost: target.id) } } ?? false
        }
        var lines = [
            "ssmgate: this is an SSH jump host onto AWS Systems Manager sessions; it has no shell.",
            "Use it as a jump host, for example:",
            "  ssh -J \(identity.user)@THIS-GATEWAY ec2-user@i-0123456789abcdef0",
            "  scp -J \(identity.user)@THIS-GATEWAY file ec2-user@NAME:",
            "",
            reachable.isEmpty ? "No managed nodes are known that you may reach." : "Managed nodes you may reach (\(identity.user)):",
        ]
        for target in reachable {
            lines.append("  \(target.id)\(target.name.map { "  \($0)" } ?? "")\(target.pingStatus.map { "  [\($0)]" } ?? "")")
        }
        let aliases = self.router.aliases
        if !aliases.isEmpty {
            lines.append("Aliases: " + aliases.keys.sorted().map { "\($0) → \(aliases[$0]!)" }.joined(separator: ", "))
        }
        return lines.joined(separator: "\r\n") + "\r\n"
    }

    public func streamFinished(_ record: StreamRecord) {
        self.metrics.relayed(front: record.request.identity.front, fromClient: record.bytesFromClient, toClient: record.bytesToClient)
        self.audit.record(event: "close", request: record.request, route: record.route, record: record, outcome: record.outcome)
    }

    /// Ends pooled sessions; open streams get a clean close.
    public func shutdownPool() -> EventLoopFuture<Void> {
        self.loop.submit { self.pool.value.shutdown() }
    }

    /// Open smux streams and pooled sessions, for drain decisions and tests.
    public func poolCounts() -> EventLoopFuture<(sessions: Int, streams: Int)> {
        self.loop.submit {
            let pool = self.pool.value
            let streams = pool.routes.values.reduce(0) { $0 + $1.channels.reduce(0) { $0 + $1.streams } }
            return (pool.pooledSessionCount, streams + pool.dedicatedCount)
        }
    }
}
