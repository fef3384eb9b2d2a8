import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import WebSocketTransport
import SSMProtocol
import SigV4
import Synchronization

/// The emulator's one loopback listener: the SSM and EC2 APIs over HTTP, and MGS's
/// WebSocket endpoints (data channels for clients and agents, control channels for agents).
public final class LocalSSMServer: Sendable {
    public let configuration: LocalSSMConfiguration
    public let registry: SessionRegistry
    public let mgs: MGS
    let verifier: SigV4Verifier
    /// Keys issued by AssumeRole, accepted beside the configured ones until they expire.
    let issuedCredentials: IssuedCredentials
    private let boundChannel = Mutex<(any Channel)?>(nil)
    private let boundPort = Mutex<Int?>(nil)
    /// Kills an instance's agent and restarts it after a delay (nil: not); set by ``LocalEmulator``.
    let agentKiller = Mutex<(@Sendable (_ instanceID: String, _ restartAfter: TimeAmount?) async -> Bool)?>(nil)

    public init(configuration: LocalSSMConfiguration) {
        self.configuration = configuration
        self.registry = SessionRegistry()
        self.mgs = MGS(registry: self.registry, limits: configuration.limits, faults: FaultInjector(configuration.faults))
        let issued = IssuedCredentials()
        self.issuedCredentials = issued
        self.verifier = SigV4Verifier(region: configuration.region, services: ["ssm", "ec2", "ssmmessages", "sts"]) { accessKeyID in
            guard let known = Self.knownCredential(accessKeyID, configuration: configuration, issued: issued) else { return nil }
            return AWSCredentials(accessKeyID: known.accessKeyID, secretAccessKey: known.secretAccessKey, sessionToken: known.sessionToken)
        }
    }

    /// A key the emulator accepts: one from its configuration, or temporary keys it issued (AssumeRole).
    static func knownCredential(_ accessKeyID: String, configuration: LocalSSMConfiguration, issued: IssuedCredentials) -> LocalSSMConfiguration.Credential? {
        configuration.credential(accessKeyID) ?? issued.credential(accessKeyID)
    }

    /// The port actually bound (useful when the configuration asks for port 0).
    public var port: Int { self.boundPort.withLock { $0 } ?? self.configuration.listenPort }

    public var endpointURL: String {
        let host = self.configuration.listenHost.contains(":") ? "[\(self.configuration.listenHost)]" : self.configuration.listenHost
        return "http://\(host):\(self.port)"
    }

    var api: SSMAPI {
        SSMAPI(configuration: self.configuration, registry: self.registry, mgs: self.mgs,
               streamBaseURL: self.endpointURL.replacingOccurrences(of: "http://", with: "ws://"))
    }

    public func start(group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.configurePipeline(channel)
                }
            }
            .bind(host: self.configuration.listenHost, port: self.configuration.listenPort)
            .get()
        self.boundChannel.withLock { $0 = channel }
        self.boundPort.withLock { $0 = channel.localAddress?.port }
        self.mgs.startTimers(on: channel.eventLoop)
    }

    public func stop() async {
        self.mgs.stopTimers()
        let channel = self.boundChannel.withLock { $0 }
        try? await channel?.close()
    }

    private func configurePipeline(_ channel: any Channel) throws {
        let http = HTTPRequestHandler(server: self)
        let upgrader = WebSocketServerUpgrader(
            maximumMessageSize: 1 << 20,
            shouldUpgrade: { channel, head in
                guard MGSRoute(uri: head.uri) != nil else { return channel.eventLoop.makeSucceededFuture(nil) }
                let delay = self.configuration.limits.webSocketOpenDelayMilliseconds
                guard delay > 0 else { return channel.eventLoop.makeSucceededFuture(HTTPHeaders()) }
                // The service's own latency in opening a channel.
                return channel.eventLoop.scheduleTask(in: .milliseconds(Int64(delay))) { () -> HTTPHeaders? in HTTPHeaders() }.futureResult
            },
            upgradePipelineHandler: { channel, head in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(MGSWebSocketHandler(mgs: self.mgs, registry: self.registry, route: MGSRoute(uri: head.uri)!))
                }
            }
        )
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                context.pipeline.removeHandler(name: HTTPRequestHandler.name, promise: nil)
            })
        )
        try channel.pipeline.syncOperations.addHandler(http, name: HTTPRequestHandler.name)
    }

    // MARK: Request dispatch

    struct Request: Sendable {
        var method: HTTPMethod
        var uri: String
        var headers: HTTPHeaders
        var body: ByteBuffer
        /// Who asked: the admin endpoint answers loopback peers only.
        var peer: SocketAddress? = nil

        var path: String { String(self.uri.prefix { $0 != "?" }) }
        var query: String {
            guard let mark = self.uri.firstIndex(of: "?") else { return "" }
            return String(self.uri[self.uri.index(after: mark)...])
        }
    }

    func respond(to request: Request) async -> SSMAPI.Response {
        if request.method == .POST, let route = MGSRoute(uri: request.uri) {
            return self.issueMGSToken(route)
        }
        if request.path == "/admin" || request.path.hasPrefix("/admin/") {
            return await AdminAPI(server: self).handle(request)
        }
        guard request.method == .POST, request.path == "/" else {
            return SSMAPI.failure(AWSAPIError(status: 404, code: "UnknownOperationException", message: "No operation at \(request.method) \(request.path)."))
        }
        if let target = request.headers.first(name: "X-Amz-Target") {
            let caller: LocalSSMConfiguration.Credential
            switch self.authenticate(request, service: "ssm") {
            case .success(let credential): caller = credential
            case .failure(let error): return SSMAPI.failure(error)
            }
            guard target.hasPrefix("AmazonSSM.") else { return SSMAPI.failure(.unknownOperation(target)) }
            return await self.api.handle(operation: String(target.dropFirst("AmazonSSM.".count)), body: request.body, caller: caller)
        }
        let form = Self.parseForm(String(buffer: request.body))
        if form.first(where: { $0.0 == "Action" })?.1 == "DescribeInstances" {
            if case .failure(let error) = self.authenticate(request, service: "ec2") {
                return SSMAPI.Response(status: error.status, contentType: "text/xml", body: error.ec2XMLBody(requestID: UUID().uuidString.lowercased()))
            }
            return self.api.describeInstances(form: form)
        }
        if form.first(where: { $0.0 == "Action" })?.1 == "AssumeRole" {
            switch self.authenticate(request, service: "sts") {
            case .success(let caller): return STSAPI(configuration: self.configuration, issued: self.issuedCredentials).handle(form: form, caller: caller)
            case .failure(let error): return STSAPI.failure(error, requestID: UUID().uuidString.lowercased())
            }
        }
        return SSMAPI.failure(.unknownOperation(form.first(where: { $0.0 == "Action" })?.1 ?? "(no X-Amz-Target or Action)"))
    }

    func authenticate(_ request: Request, service: String) -> Result<LocalSSMConfiguration.Credential, AWSAPIError> {
        var headers = request.headers.map { (name: $0.name, value: $0.value) }
        if !headers.contains(where: { $0.name.lowercased() == "host" }) { headers.append((name: "host", value: "127.0.0.1")) }
        let signed = SigV4Request(
            method: request.method.rawValue, path: request.path, query: request.query, headers: headers,
            body: Array(request.body.readableBytesView))
        switch self.verifier.verify(signed, now: Date()) {
        case .success(let caller):
            guard caller.service == service,
                let credential = Self.knownCredential(caller.accessKeyID, configuration: self.configuration, issued: self.issuedCredentials)
            else {
                return .failure(AWSAPIError(code: "InvalidSignatureException", message: "Credential should be scoped to correct service: '\(service)'."))
            }
            return .success(credential)
        case .failure(let error):
            let response = error.response(for: service == "ec2" || service == "sts" ? .ec2Query : .awsJSON)
            return .failure(AWSAPIError(status: response.httpStatus, code: response.code, message: response.message))
        }
    }

    /// The agent's CreateDataChannel / CreateControlChannel: 201 and an XML token, as MGS answers.
    func issueMGSToken(_ route: MGSRoute) -> SSMAPI.Response {
        let token: String?
        switch route {
        case .dataChannel(let sessionID): token = self.registry.issueAgentToken(sessionID)
        case .controlChannel(let instanceID):
            token = self.configuration.instance(instanceID) == nil ? nil : self.mgs.issueControlToken(instanceID: instanceID)
        }
        guard let token else {
            return SSMAPI.Response(status: 400, contentType: "application/xml",
                                   body: ByteBuffer(string: "<ErrorResponse><Message>Session is already terminated</Message></ErrorResponse>"))
        }
        let xml = "<CreateChannelResponse><MessageSchemaVersion>1.0</MessageSchemaVersion><TokenValue>\(token)</TokenValue></CreateChannelResponse>"
        return SSMAPI.Response(status: 201, contentType: "application/xml", body: ByteBuffer(string: xml))
    }

    static func parseForm(_ body: String) -> [(String, String)] {
        body.split(separator: "&").map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String {
                text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(text)
            }
            return (decode(parts[0]), parts.count > 1 ? decode(parts[1]) : "")
        }
    }
}

/// The MGS paths: `/v1/data-channel/<sessionId>` and `/v1/control-channel/<instanceId>`.
enum MGSRoute: Equatable {
    case dataChannel(String)
    case controlChannel(String)

    init?(uri: String) {
        let path = uri.prefix { $0 != "?" }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count == 3, parts[0] == "v1", !parts[2].isEmpty else { return nil }
        switch parts[1] {
        case "data-channel": self = .dataChannel(String(parts[2]))
        case "control-channel": self = .controlChannel(String(parts[2]))
        default: return nil
        }
    }
}

/// Collects one HTTP request (bounded), answers it, and keeps the connection for the next.
final class HTTPRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let maximumBodySize = 1 << 20
    static let name = "ssm-api-http"
    let server: LocalSSMServer
    var head: HTTPRequestHead?
    var body = ByteBuffer()
    var tooLarge = false

    init(server: LocalSSMServer) {
        self.server = server
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body.clear()
            self.tooLarge = false
        case .body(var chunk):
            if self.body.readableBytes + chunk.readableBytes > Self.maximumBodySize {
                self.tooLarge = true
            } else {
                self.body.writeBuffer(&chunk)
            }
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let keepAlive = head.isKeepAlive
            let channel = context.channel
            if self.tooLarge {
                let error = AWSAPIError(status: 413, code: "RequestEntityTooLarge", message: "Request bodies are limited to \(Self.maximumBodySize) bytes.")
                writeHTTPResponse(SSMAPI.failure(error), keepAlive: false, version: head.version, on: channel)
                return
            }
            let request = LocalSSMServer.Request(
                method: head.method, uri: head.uri, headers: head.headers, body: self.body, peer: channel.remoteAddress)
            let server = self.server
            let version = head.version
            Task {
                let response = await server.respond(to: request)
                writeHTTPResponse(response, keepAlive: keepAlive, version: version, on: channel)
            }
        }
    }

}

func writeHTTPResponse(_ response: SSMAPI.Response, keepAlive: Bool, version: HTTPVersion, on channel: any Channel) {
    var headers = HTTPHeaders()
    headers.add(name: "Content-Type", value: response.contentType)
    headers.add(name: "Content-Length", value: String(response.body.readableBytes))
    headers.add(name: "x-amzn-RequestId", value: UUID().uuidString.lowercased())
    headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
    let head = HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
    channel.write(HTTPServerResponsePart.head(head), promise: nil)
    channel.write(HTTPServerResponsePart.body(.byteBuffer(response.body)), promise: nil)
    channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in
        if !keepAlive { channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension HTTPRequestHandler: Sendable {}

/// One MGS WebSocket: the first text frame (OpenDataChannel) says who it is; then binary frames are relayed.
final class MGSWebSocketHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketMessage
    typealias OutboundOut = WebSocketMessage

    enum State {
        case awaitingOpen
        case data(SessionRelay, SessionRegistry.Role)
        case control(String)
        case closed
    }

    let mgs: MGS
    let registry: SessionRegistry
    let route: MGSRoute
    var state = State.awaitingOpen

    init(mgs: MGS, registry: SessionRegistry, route: MGSRoute) {
        self.mgs = mgs
        self.registry = registry
        self.route = route
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .binary(let payload):
            self.handleMessage(payload, isText: false, context: context)
        case .text(let payload):
            self.handleMessage(payload, isText: true, context: context)
        case .ping, .pong:
            break  // the codec answers pings, and a client's close (closeConnection runs when the socket goes)
        }
    }

    func handleMessage(_ data: ByteBuffer, isText: Bool, context: ChannelHandlerContext) {
        switch self.state {
        case .awaitingOpen:
            self.open(data, context: context)
        case .data(let relay, let role):
            relay.forward(data, from: role, sender: context.channel)
        case .control:
            self.mgs.handleControlFrame(data, from: context.channel)
        case .closed:
            break
        }
    }

    func open(_ data: ByteBuffer, context: ChannelHandlerContext) {
        guard let json = try? JSONValue(parsing: data), let token = json["TokenValue"]?.stringValue else {
            self.closeConnection(context: context, reason: "no token in OpenDataChannel")
            return
        }
        switch self.route {
        case .dataChannel(let sessionID):
            guard let role = self.registry.role(ofToken: token, session: sessionID), let relay = self.mgs.relay(sessionID),
                relay.attach(role, channel: context.channel)
            else {
                if let frame = self.mgs.channelClosedFrame(forEndedSession: sessionID, clientToken: token) {
                    // Opened just after the session ended: told why, then closed.
                    self.state = .closed
                    let channel = context.channel
                    channel.writeAndFlush(WebSocketMessage.binary(frame)).whenComplete { _ in channel.close(promise: nil) }
                    return
                }
                self.closeConnection(context: context, reason: "token refused")
                return
            }
            self.state = .data(relay, role)
        case .controlChannel(let instanceID):
            guard self.mgs.attachControlChannel(instanceID: instanceID, token: token, channel: context.channel) else {
                self.closeConnection(context: context, reason: "control token refused")
                return
            }
            self.state = .control(instanceID)
        }
    }

    func closeConnection(context: ChannelHandlerContext, reason: String) {
        if case .data(let relay, let role) = self.state { relay.note("\(role) socket closed by the service: \(reason)") }
        self.detach(channel: context.channel)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.detach(channel: context.channel)
        context.fireChannelInactive()
    }

    func detach(channel: any Channel) {
        switch self.state {
        case .data(let relay, let role): relay.detach(role, channel: channel)
        case .control(let instanceID): self.mgs.detachControlChannel(instanceID: instanceID, channel: channel)
        case .awaitingOpen, .closed: break
        }
        self.state = .closed
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.closeConnection(context: context, reason: "\(error)")
    }
}

@available(*, unavailable)
extension MGSWebSocketHandler: Sendable {}
