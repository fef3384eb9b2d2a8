import Logging
import NIOCore

/// A fixed forward: every connection to the listener is relayed to one (host, port), as
/// `psql -h localhost -p 15432` reaching a database behind an instance.
public final class StaticForwardFront: Sendable {
    public struct Options: Sendable {
        /// The target as the Router knows it (instance id, alias, Name tag, remote-host route).
        public var targetHost: String
        public var targetPort: Int
        /// Who the connections run as (a forward has no authentication of its own).
        public var user: String
        public var openTimeout: TimeAmount
        public var logger: Logger

        public init(
            targetHost: String, targetPort: Int, user: String = "anonymous", openTimeout: TimeAmount = .seconds(60),
            logger: Logger = Logger(label: "ssmgate.forward")
        ) {
            self.targetHost = targetHost
            self.targetPort = targetPort
            self.user = user
            self.openTimeout = openTimeout
            self.logger = logger
        }
    }

    public let services: any GatewayServices
    public let options: Options
    public let group: any EventLoopGroup
    public let connections = FrontConnectionCounter()

    public init(services: any GatewayServices, options: Options, group: any EventLoopGroup) {
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
            try channel.pipeline.syncOperations.addHandler(ForwardOpenHandler(services: services, options: options))
        }
    }
}

/// Opens the stream as the connection arrives, then hands over to a relay. It asks for no bytes
/// meanwhile, but a client's EOF makes NIO read the socket to the end regardless: those bytes and
/// the EOF are kept for the relay (bounded by the kernel's socket buffer).
final class ForwardOpenHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    let services: any GatewayServices
    let options: StaticForwardFront.Options
    var started = false
    var early: ByteBuffer?
    var clientEOF = false

    init(services: any GatewayServices, options: StaticForwardFront.Options) {
        self.services = services
        self.options = options
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
        let opened = NIODeadline.now()
        let request = StreamRequest(
            host: self.options.targetHost, port: self.options.targetPort,
            identity: ClientIdentity(user: self.options.user, sourceAddress: context.channel.peerDescription, front: .forward))
        var logger = self.options.logger
        logger[metadataKey: "client.address"] = "\(context.channel.peerDescription)"
        StreamOpening.start(services: self.services, request: request, channel: context.channel, timeout: self.options.openTimeout) { result in
            switch result {
            case .success(let stream):
                let relay = SocketRelay(
                    destination: stream, request: request, services: self.services, opened: opened,
                    initialData: self.early.take(), clientInputClosed: self.clientEOF, logger: logger)
                do {
                    try context.pipeline.syncOperations.addHandler(relay, position: .after(self))
                    context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                } catch {
                    stream.abort()
                    context.close(promise: nil)
                }
            case .failure(let error):
                logger.info("forward stream not opened", metadata: [
                    "target.host": "\(request.host)", "target.port": "\(request.port)",
                    "error.kind": "\(error.kind.rawValue)", "error.message": "\(error.message)",
                ])
                self.services.recordOpenFailure(request, opened: opened, error: error)
                context.close(promise: nil)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        if self.early == nil { self.early = buffer } else { self.early!.writeBuffer(&buffer) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.clientEOF = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ForwardOpenHandler: Sendable {}
