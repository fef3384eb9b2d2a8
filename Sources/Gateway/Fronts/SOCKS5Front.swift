import Logging
import NIOCore

/// A SOCKS5 server (RFC 1928) with optional username/password authentication (RFC 1929).
/// CONNECT only; the target may be an IPv4 or IPv6 address or a name, and is handed to the
/// gateway as typed (`curl --socks5-hostname` sends the name, `--socks5` an address).
public final class SOCKS5Front: Sendable {
    public struct Options: Sendable {
        /// Accept clients that offer no authentication (method 0x00); they run as "anonymous".
        public var allowNoAuth: Bool
        /// Username/password check (method 0x02); nil disables the method.
        public var passwordCheck: PasswordCheck?
        /// How long a client has to finish its greeting, authentication and request.
        public var handshakeTimeout: TimeAmount
        /// How long opening the stream may take before the client gets "general failure".
        public var openTimeout: TimeAmount
        public var logger: Logger

        public init(
            allowNoAuth: Bool = true, passwordCheck: PasswordCheck? = nil, handshakeTimeout: TimeAmount = .seconds(10),
            openTimeout: TimeAmount = .seconds(60), logger: Logger = Logger(label: "ssmgate.socks5")
        ) {
            self.allowNoAuth = allowNoAuth
            self.passwordCheck = passwordCheck
            self.handshakeTimeout = handshakeTimeout
            self.openTimeout = openTimeout
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
            try channel.pipeline.syncOperations.addHandler(SOCKS5ServerHandler(services: services, options: options))
        }
    }
}

/// SOCKS5 reply codes (RFC 1928 section 6).
enum SOCKS5Reply: UInt8 {
    case succeeded = 0x00
    case generalFailure = 0x01
    case notAllowed = 0x02
    case networkUnreachable = 0x03
    case hostUnreachable = 0x04
    case connectionRefused = 0x05
    case commandNotSupported = 0x07
    case addressTypeNotSupported = 0x08

    init(_ kind: StreamOpenError.Kind) {
        switch kind {
        case .denied: self = .notAllowed
        case .unknownTarget, .ambiguousTarget, .targetOffline: self = .hostUnreachable
        case .sessionFailed: self = .connectionRefused
        case .unavailable: self = .generalFailure
        }
    }
}

/// One SOCKS5 connection until its stream opens; then it hands the channel to a `SocketRelay`.
final class SOCKS5ServerHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        case greeting
        case authentication
        case request
        case opening
        case done
    }

    /// The longest message of the handshake is the RFC 1929 request: 1 + 1 + 255 + 1 + 255 bytes.
    static let maximumMessage = 513

    let services: any GatewayServices
    let options: SOCKS5Front.Options
    var logger: Logger
    var state = State.greeting
    var buffer = ByteBuffer()
    var clientEOF = false
    var user: String?
    var deadline: Scheduled<Void>?
    var started = false

    init(services: any GatewayServices, options: SOCKS5Front.Options) {
        self.services = services
        self.options = options
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
            self.logger.debug("socks5 handshake timed out")
            self.state = .done
            context.close(promise: nil)
        }
        context.read()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.deadline?.cancel()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.deadline?.cancel()
        if self.state != .opening { self.state = .done }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("socks5 connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    var isHandshaking: Bool {
        switch self.state {
        case .greeting, .authentication, .request: true
        case .opening, .done: false
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = self.unwrapInboundIn(data)
        switch self.state {
        case .done:
            return
        case .opening:
            // Sent after the request, before our reply: the relay gets it first.
            self.buffer.writeBuffer(&incoming)
        case .greeting, .authentication, .request:
            self.buffer.writeBuffer(&incoming)
            self.process(context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.isHandshaking { context.read() }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.clientEOF = true
            if self.isHandshaking {
                self.logger.debug("socks5 client closed during the handshake")
                self.fail(context: context, reply: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: Parsing

    func process(context: ChannelHandlerContext) {
        while self.isHandshaking {
            let progressed: Bool
            switch self.state {
            case .greeting: progressed = self.parseGreeting(context: context)
            case .authentication: progressed = self.parseAuthentication(context: context)
            case .request: progressed = self.parseRequest(context: context)
            case .opening, .done: return
            }
            if !progressed {
                // Every handshake message fits in `maximumMessage`: more than that waiting is not SOCKS5.
                if self.isHandshaking, self.buffer.readableBytes > Self.maximumMessage {
                    self.logger.debug("socks5 message too long")
                    self.fail(context: context, reply: nil)
                }
                return
            }
        }
    }

    /// VER NMETHODS METHODS…
    func parseGreeting(context: ChannelHandlerContext) -> Bool {
        guard let (version, count) = self.buffer.getMultipleIntegers(at: self.buffer.readerIndex, as: (UInt8, UInt8).self) else { return false }
        guard version == 5 else {
            self.logger.debug("not a SOCKS5 greeting", metadata: ["socks.version": "\(version)"])
            self.fail(context: context, reply: nil)
            return false
        }
        guard let methods = self.buffer.getBytes(at: self.buffer.readerIndex + 2, length: Int(count)) else { return false }
        self.buffer.moveReaderIndex(forwardBy: 2 + Int(count))
        let method: UInt8
        if self.options.passwordCheck != nil, methods.contains(0x02) {
            method = 0x02
            self.state = .authentication
        } else if self.options.allowNoAuth, methods.contains(0x00) {
            method = 0x00
            self.state = .request
        } else {
            self.logger.debug("socks5 client offers no acceptable method", metadata: ["socks.methods": "\(methods)"])
            self.fail(context: context, raw: [0x05, 0xFF])
            return false
        }
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: [0x05, method])), promise: nil)
        return true
    }

    /// RFC 1929: VER(1) ULEN UNAME PLEN PASSWD
    func parseAuthentication(context: ChannelHandlerContext) -> Bool {
        let start = self.buffer.readerIndex
        guard let (version, userLength) = self.buffer.getMultipleIntegers(at: start, as: (UInt8, UInt8).self) else { return false }
        guard version == 1 else {
            self.logger.debug("bad SOCKS5 authentication version", metadata: ["socks.version": "\(version)"])
            self.fail(context: context, reply: nil)
            return false
        }
        guard let passwordLength = self.buffer.getInteger(at: start + 2 + Int(userLength), as: UInt8.self),
              let user = self.buffer.getString(at: start + 2, length: Int(userLength)),
              let password = self.buffer.getString(at: start + 3 + Int(userLength), length: Int(passwordLength))
        else { return false }
        self.buffer.moveReaderIndex(forwardBy: 3 + Int(userLength) + Int(passwordLength))
        guard let check = self.options.passwordCheck, let name = check(user, password) else {
            self.logger.info("socks5 authentication failed", metadata: ["socks.user": "\(user)"])
            self.fail(context: context, raw: [0x01, 0x01])
            return false
        }
        self.user = name
        self.logger[metadataKey: "client.user"] = "\(name)"
        self.state = .request
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: [0x01, 0x00])), promise: nil)
        return true
    }

    /// VER CMD RSV ATYP DST.ADDR DST.PORT
    func parseRequest(context: ChannelHandlerContext) -> Bool {
        let start = self.buffer.readerIndex
        guard let (version, command, _, addressType) = self.buffer.getMultipleIntegers(at: start, as: (UInt8, UInt8, UInt8, UInt8).self) else {
            return false
        }
        guard version == 5 else {
            self.logger.debug("bad SOCKS5 request version", metadata: ["socks.version": "\(version)"])
            self.fail(context: context, reply: nil)
            return false
        }
        let host: String
        let addressEnd: Int
        switch addressType {
        case 0x01:
            guard let bytes = self.buffer.getSlice(at: start + 4, length: 4) else { return false }
            host = bytes.readableBytesView.map { String($0) }.joined(separator: ".")
            addressEnd = start + 8
        case 0x04:
            guard let bytes = self.buffer.getSlice(at: start + 4, length: 16) else { return false }
            guard let address = try? SocketAddress(packedIPAddress: bytes, port: 0), let text = address.ipAddress else {
                self.fail(context: context, reply: .addressTypeNotSupported)
                return false
            }
            host = text
            addressEnd = start + 20
        case 0x03:
            guard let length = self.buffer.getInteger(at: start + 4, as: UInt8.self),
                  let bytes = self.buffer.getSlice(at: start + 5, length: Int(length))
            else { return false }
            // A host name: printable ASCII (IDNs arrive punycoded), nothing else.
            guard length > 0, bytes.readableBytesView.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                self.logger.debug("bad SOCKS5 host name")
                self.fail(context: context, reply: .hostUnreachable)
                return false
            }
            host = String(decoding: bytes.readableBytesView, as: UTF8.self)
            addressEnd = start + 5 + Int(length)
        default:
            self.logger.debug("unknown SOCKS5 address type", metadata: ["socks.atyp": "\(addressType)"])
            self.fail(context: context, reply: .addressTypeNotSupported)
            return false
        }
        guard let port = self.buffer.getInteger(at: addressEnd, as: UInt16.self) else { return false }
        self.buffer.moveReaderIndex(to: addressEnd + 2)
        guard command == 0x01 else {
            self.logger.debug("unsupported SOCKS5 command", metadata: ["socks.command": "\(command)"])
            self.fail(context: context, reply: .commandNotSupported)
            return false
        }
        guard port != 0 else {
            self.fail(context: context, reply: .hostUnreachable)
            return false
        }
        self.open(context: context, host: host, port: Int(port))
        return true
    }

    // MARK: Opening

    func open(context: ChannelHandlerContext, host: String, port: Int) {
        self.state = .opening
        self.deadline?.cancel()
        let opened = NIODeadline.now()
        let request = StreamRequest(
            host: host, port: port,
            identity: ClientIdentity(user: self.user ?? "anonymous", sourceAddress: context.channel.peerDescription, front: .socks5))
        self.logger.debug("socks5 connect", metadata: ["target.host": "\(host)", "target.port": "\(port)"])
        StreamOpening.start(services: self.services, request: request, channel: context.channel, timeout: self.options.openTimeout) { result in
            switch result {
            case .success(let stream):
                self.handOver(context: context, stream: stream, request: request, opened: opened)
            case .failure(let error):
                self.logger.info("socks5 stream not opened", metadata: [
                    "target.host": "\(host)", "target.port": "\(port)", "error.kind": "\(error.kind.rawValue)", "error.message": "\(error.message)",
                ])
                self.services.recordOpenFailure(request, opened: opened, error: error)
                self.fail(context: context, reply: SOCKS5Reply(error.kind))
            }
        }
    }

    func handOver(context: ChannelHandlerContext, stream: any DestinationStream, request: StreamRequest, opened: NIODeadline) {
        self.state = .done
        var reply = context.channel.allocator.buffer(capacity: 22)
        reply.writeBytes([0x05, SOCKS5Reply.succeeded.rawValue, 0x00])
        Self.writeAddress(context.channel.localAddress, to: &reply)
        context.writeAndFlush(self.wrapOutboundOut(reply), promise: nil)
        let leftover = self.buffer.readableBytes > 0 ? self.buffer.readSlice(length: self.buffer.readableBytes) : nil
        self.buffer = ByteBuffer()
        let relay = SocketRelay(
            destination: stream, request: request, services: self.services, opened: opened,
            initialData: leftover, clientInputClosed: self.clientEOF, logger: self.logger)
        do {
            try context.pipeline.syncOperations.addHandler(relay, position: .after(self))
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            stream.abort()
            context.close(promise: nil)
        }
    }

    /// ATYP BND.ADDR BND.PORT of `address` (0.0.0.0:0 when unknown).
    static func writeAddress(_ address: SocketAddress?, to buffer: inout ByteBuffer) {
        switch address {
        case .v4(let v4):
            buffer.writeInteger(UInt8(0x01))
            _ = withUnsafeBytes(of: v4.address.sin_addr) { buffer.writeBytes($0) }
        case .v6(let v6):
            buffer.writeInteger(UInt8(0x04))
            _ = withUnsafeBytes(of: v6.address.sin6_addr) { buffer.writeBytes($0) }
        default:
            buffer.writeBytes([0x01, 0, 0, 0, 0])
        }
        buffer.writeInteger(UInt16(address?.port ?? 0))
    }

    // MARK: Failing

    /// Sends a reply with `reply` (or nothing) and closes.
    func fail(context: ChannelHandlerContext, reply: SOCKS5Reply?) {
        guard let reply else {
            self.fail(context: context, raw: nil)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: 10)
        buffer.writeBytes([0x05, reply.rawValue, 0x00])
        Self.writeAddress(nil, to: &buffer)
        self.fail(context: context, raw: buffer)
    }

    func fail(context: ChannelHandlerContext, raw: [UInt8]) {
        self.fail(context: context, raw: ByteBuffer(bytes: raw))
    }

    func fail(context: ChannelHandlerContext, raw: ByteBuffer?) {
        guard self.state != .done else { return }
        self.state = .done
        self.deadline?.cancel()
        self.buffer = ByteBuffer()
        if context.channel.isActive {
            flushAndClose(context, raw)
        }
    }
}

@available(*, unavailable)
extension SOCKS5ServerHandler: Sendable {}
