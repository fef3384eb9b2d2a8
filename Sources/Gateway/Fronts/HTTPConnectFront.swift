import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// An HTTP proxy that tunnels (`CONNECT host:port HTTP/1.1`), for browsers and
/// `curl -p --proxy http://gw:port`. Other methods get 405: it is not a forwarding proxy.
public final class HTTPConnectFront: Sendable {
    public struct Options: Sendable {
        /// When set, `Proxy-Authorization: Basic` is required and checked; nil: no authentication.
        public var passwordCheck: PasswordCheck?
        public var realm: String
        /// How long a client has to send its request head.
        public var handshakeTimeout: TimeAmount
        public var openTimeout: TimeAmount
        /// Largest request head accepted.
        public var maximumHeadSize: Int
        public var logger: Logger

        public init(
            passwordCheck: PasswordCheck? = nil, realm: String = "ssmgate", handshakeTimeout: TimeAmount = .seconds(10),
            openTimeout: TimeAmount = .seconds(60), maximumHeadSize: Int = 16 * 1024,
            logger: Logger = Logger(label: "ssmgate.http-connect")
        ) {
            self.passwordCheck = passwordCheck
            self.realm = realm
            self.handshakeTimeout = handshakeTimeout
            self.openTimeout = openTimeout
            self.maximumHeadSize = maximumHeadSize
            self.logger = logger
        }
    }

    public let services: any GatewayServices
    public let options: Options
    public let group: any EventLoopGroup
    public let connections = FrontConnectionCounter()

    public init(services: any GatewayServices, options: Options = Options(), group: any EventLoopGroup) {
        self.services = services
        self.options = options
        self.group = group
    }

    /// Listens on `host:port` (port 0: the system picks one; read it from `localAddress`).
    /// Closing the returned channel stops accepting; open connections carry on.
    public func bind(host: String = "127.0.0.1", port: Int) -> EventLoopFuture<any Channel> {
        let services = self.services
        let options = self.options
        return FrontBootstrap.bind(group: self.group, host: host, port: port, counter: self.connections) { channel in
            let guardHandler = HTTPHandshakeGuard(maximumBytes: options.maximumHeadSize)
            let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
            try channel.pipeline.syncOperations.addHandlers([
                guardHandler, decoder,
                HTTPConnectHandler(services: services, options: options, guardHandler: guardHandler, decoder: decoder),
            ])
        }
    }
}

/// In front of the HTTP decoder until the tunnel starts: bounds the request head, and keeps the
/// client's EOF from the decoder (which would drop bytes sent after the request on its removal),
/// telling the CONNECT handler instead.
final class HTTPHandshakeGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    struct InputClosed {}

    let maximumBytes: Int
    var seen = 0
    var counting = true

    init(maximumBytes: Int) { self.maximumBytes = maximumBytes }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if self.counting {
            self.seen += self.unwrapInboundIn(data).readableBytes
            if self.seen > self.maximumBytes {
                context.fireErrorCaught(HTTPParserError.headerOverflow)
                return
            }
        }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.fireUserInboundEventTriggered(InputClosed())
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

@available(*, unavailable)
extension HTTPHandshakeGuard: Sendable {}

final class HTTPConnectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    enum State {
        case head
        /// CONNECT accepted, waiting for the end of the request.
        case connect(StreamRequest)
        case opening
        case relaying
        case done
    }

    let services: any GatewayServices
    let options: HTTPConnectFront.Options
    let guardHandler: HTTPHandshakeGuard
    let decoder: ByteToMessageHandler<HTTPRequestDecoder>
    var logger: Logger
    var state = State.head
    var clientEOF = false
    var deadline: Scheduled<Void>?
    var started = false

    init(services: any GatewayServices, options: HTTPConnectFront.Options, guardHandler: HTTPHandshakeGuard, decoder: ByteToMessageHandler<HTTPRequestDecoder>) {
        self.services = services
        self.options = options
        self.guardHandler = guardHandler
        self.decoder = decoder
        self.logger = options.logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    func start(context: ChannelHandlerContext) {
        guard !self.started else { return }
        self.started = true
        self.logger[metadataKey: "client.address"] = "\(context.channel.peerDescription)"
        self.deadline = context.eventLoop.assumeIsolated().scheduleTask(in: self.options.handshakeTimeout) {
            self.logger.debug("http connect request timed out")
            self.respond(context: context, status: .requestTimeout, body: "No complete request within the time allowed.\n")
        }
        context.read()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.deadline?.cancel()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.deadline?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.state {
        case .relaying:
            // Bytes the client sent after its request, released by the decoder on its removal.
            context.fireChannelRead(data)
            return
        case .done, .opening:
            return
        case .head, .connect:
            break
        }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            guard case .head = self.state else { return }
            self.guardHandler.counting = false
            self.accept(context: context, head: head)
        case .body:
            // A CONNECT request has no body; nothing else gets this far.
            break
        case .end:
            guard case .connect(let request) = self.state else { return }
            self.open(context: context, request: request)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        switch self.state {
        case .head, .connect: context.read()
        case .opening, .relaying, .done: break
        }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is HTTPHandshakeGuard.InputClosed {
            self.clientEOF = true
            switch self.state {
            case .head, .connect:
                self.logger.debug("http client closed before finishing its request")
                self.state = .done
                context.close(promise: nil)
            case .opening, .relaying, .done:
                break
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch self.state {
        case .head, .connect:
            self.logger.debug("bad http request", metadata: ["error": "\(error)"])
            if let error = error as? HTTPParserError, error == .headerOverflow {
                self.respond(context: context, status: .requestHeaderFieldsTooLarge, body: "The request head is too large.\n")
            } else {
                self.respond(context: context, status: .badRequest, body: "This is not an HTTP request this proxy understands: \(error).\n")
            }
        case .relaying:
            context.fireErrorCaught(error)
        case .opening, .done:
            context.close(promise: nil)
        }
    }

    // MARK: Request

    func accept(context: ChannelHandlerContext, head: HTTPRequestHead) {
        guard head.method == .CONNECT else {
            self.respond(
                context: context, status: .methodNotAllowed,
                body: "This is an HTTP CONNECT proxy (ssmgate): it tunnels, it does not fetch. Use it as a proxy that tunnels, "
                    + "e.g. curl -p --proxy http://\(context.channel.localAddressDescription) http://HOST:PORT/, "
                    + "or for https:// URLs, which always tunnel.\n",
                extraHeaders: [("Allow", "CONNECT")])
            return
        }
        guard let (host, port) = Self.parseAuthority(head.uri) else {
            self.respond(
                context: context, status: .badRequest,
                body: "CONNECT needs a target as host:port (or [IPv6]:port), not \"\(head.uri.prefix(200))\".\n")
            return
        }
        var user = "anonymous"
        if let check = self.options.passwordCheck {
            guard let credentials = head.headers.first(name: "Proxy-Authorization").flatMap(Self.parseBasic),
                  let name = check(credentials.user, credentials.password)
            else {
                let had = head.headers.contains(name: "Proxy-Authorization")
                self.logger.info("http connect authentication failed", metadata: ["http.credentials_sent": "\(had)"])
                self.respond(
                    context: context, status: .proxyAuthenticationRequired,
                    body: had ? "The proxy user name or password is wrong.\n" : "This proxy needs a user name and password (Basic).\n",
                    extraHeaders: [("Proxy-Authenticate", "Basic realm=\"\(self.options.realm)\"")])
                return
            }
            user = name
        }
        self.state = .connect(StreamRequest(
            host: host, port: port, identity: ClientIdentity(user: user, sourceAddress: context.channel.peerDescription, front: .httpConnect)))
    }

    /// "host:port", "[v6]:port" → (host without brackets, port).
    static func parseAuthority(_ authority: String) -> (String, Int)? {
        guard let colon = authority.lastIndex(of: ":") else { return nil }
        var host = Substring(authority[..<colon])
        guard let port = Int(authority[authority.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        if host.hasPrefix("[") {
            guard host.hasSuffix("]"), host.count > 2 else { return nil }
            host = host.dropFirst().dropLast()
            guard host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return nil }
        } else {
            guard !host.isEmpty, !host.contains(":"),
                  host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "@") })
            else { return nil }
        }
        return (String(host), port)
    }

    /// `Basic base64(user:password)`.
    static func parseBasic(_ header: String) -> (user: String, password: String)? {
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "basic",
              let data = Data(base64Encoded: String(parts[1].trimmingCharacters(in: .whitespaces))),
              let text = String(data: data, encoding: .utf8), let colon = text.firstIndex(of: ":")
        else { return nil }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }

    // MARK: Opening

    func open(context: ChannelHandlerContext, request: StreamRequest) {
        self.state = .opening
        self.deadline?.cancel()
        let opened = NIODeadline.now()
        self.logger.debug("http connect", metadata: ["target.host": "\(request.host)", "target.port": "\(request.port)"])
        StreamOpening.start(services: self.services, request: request, channel: context.channel, timeout: self.options.openTimeout) { result in
            switch result {
            case .success(let stream):
                self.handOver(context: context, stream: stream, request: request, opened: opened)
            case .failure(let error):
                self.logger.info("http connect stream not opened", metadata: [
                    "target.host": "\(request.host)", "target.port": "\(request.port)",
                    "error.kind": "\(error.kind.rawValue)", "error.message": "\(error.message)",
                ])
                self.services.recordOpenFailure(request, opened: opened, error: error)
                self.respond(context: context, status: Self.status(for: error.kind), body: Self.body(for: error, request: request))
            }
        }
    }

    static func status(for kind: StreamOpenError.Kind) -> HTTPResponseStatus {
        switch kind {
        case .denied: .forbidden
        case .unknownTarget, .ambiguousTarget: .notFound
        case .targetOffline, .unavailable: .serviceUnavailable
        case .sessionFailed: .badGateway
        }
    }

    static func body(for error: StreamOpenError, request: StreamRequest) -> String {
        var text = error.message
        if !text.hasSuffix("\n") { text += "\n" }
        return text
    }

    func handOver(context: ChannelHandlerContext, stream: any DestinationStream, request: StreamRequest, opened: NIODeadline) {
        self.state = .relaying
        var head = context.channel.allocator.buffer(capacity: 64)
        head.writeString("HTTP/1.1 200 Connection established\r\n\r\n")
        context.writeAndFlush(self.wrapOutboundOut(head), promise: nil)
        let relay = SocketRelay(destination: stream, request: request, services: self.services, opened: opened, logger: self.logger)
        let pipeline = context.pipeline.syncOperations
        do {
            try pipeline.addHandler(relay, position: .after(self))
        } catch {
            stream.abort()
            context.close(promise: nil)
            return
        }
        // The decoder forwards what it holds past the request (through this handler) as it leaves;
        // only then may the client's EOF follow.
        pipeline.removeHandler(self.decoder).assumeIsolated().whenComplete { _ in
            guard context.channel.isActive else { return }
            context.pipeline.syncOperations.removeHandler(self.guardHandler, promise: nil)
            if self.clientEOF {
                context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    // MARK: Responses

    func respond(
        context: ChannelHandlerContext, status: HTTPResponseStatus, body: String, extraHeaders: [(String, String)] = []
    ) {
        if case .done = self.state { return }
        self.state = .done
        self.deadline?.cancel()
        guard context.channel.isActive else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256 + body.utf8.count)
        buffer.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n")
        buffer.writeString("Content-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n")
        for (name, value) in extraHeaders { buffer.writeString("\(name): \(value)\r\n") }
        buffer.writeString("\r\n")
        buffer.writeString(body)
        flushAndClose(context, buffer)
    }
}

@available(*, unavailable)
extension HTTPConnectHandler: Sendable {}

extension Channel {
    var localAddressDescription: String {
        guard let address = self.localAddress, let ip = address.ipAddress, let port = address.port else { return "GATEWAY:PORT" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
