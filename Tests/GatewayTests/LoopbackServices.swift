import Gateway
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A `GatewayServices` for testing fronts alone: every stream is a real TCP connection to
/// 127.0.0.1 on the requested port (the host name is only checked against `deniedHosts`), keys
/// are checked against a fixed table, and finished streams are recorded.
final class LoopbackServices: GatewayServices {
    struct AuthorizedKey: Hashable {
        var type: String
        var base64: String
        var user: String
    }

    let keys: [AuthorizedKey]
    let deniedHosts: Set<String>
    private let records = NIOLockedValueBox<[StreamRecord]>([])

    init(keys: [AuthorizedKey] = [], deniedHosts: Set<String> = []) {
        self.keys = keys
        self.deniedHosts = deniedHosts
    }

    var finished: [StreamRecord] { self.records.withLockedValue { $0 } }

    func openStream(_ request: StreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any DestinationStream> {
        if self.deniedHosts.contains(request.host) {
            return eventLoop.makeFailedFuture(StreamOpenError(
                .denied, "\(request.identity.user) may not reach \(request.host):\(request.port); ask for it to be added to the gateway's access rules."))
        }
        let route = RouteDescription(target: request.host, document: "loopback", sessionID: "loopback-\(request.port)")
        return ClientBootstrap(group: eventLoop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: false)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(LoopbackDestination(route: route))
                }
            }
            .connect(host: "127.0.0.1", port: request.port)
            .flatMapThrowing { channel -> any DestinationStream in
                try channel.pipeline.syncOperations.handler(type: LoopbackDestination.self)
            }
            .flatMapErrorThrowing { error in
                throw StreamOpenError(.sessionFailed, "Cannot connect to 127.0.0.1:\(request.port): \(error)")
            }
    }

    func authenticate(user: String, keyType: String, keyBase64: String) -> AuthenticatedUser? {
        guard let key = self.keys.first(where: { $0.type == keyType && $0.base64 == keyBase64 && $0.user == user }) else { return nil }
        return AuthenticatedUser(name: key.user, keyFingerprint: "SHA256:test-\(key.base64.suffix(8))")
    }

    func helpText(for identity: ClientIdentity) -> String {
        "Hello \(identity.user): this is a loopback test gateway.\r\n"
    }

    func streamFinished(_ record: StreamRecord) {
        self.records.withLockedValue { $0.append(record) }
    }
}

/// One TCP connection as the destination leg of a relayed stream.
final class LoopbackDestination: ChannelInboundHandler, DestinationStream {
    typealias InboundIn = ByteBuffer

    let routeDescription: RouteDescription
    weak var delegate: (any DestinationStreamDelegate)?
    var context: ChannelHandlerContext?
    var closedReported = false
    var readPending = false

    init(route: RouteDescription) { self.routeDescription = route }

    var eventLoop: any EventLoop { self.context!.eventLoop }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        context.read()
        context.fireChannelActive()
    }

    func write(_ data: ByteBuffer) -> Int {
        guard let context, context.channel.isActive else { return data.readableBytes }
        guard context.channel.isWritable else { return 0 }
        context.writeAndFlush(NIOAny(data), promise: nil)
        return data.readableBytes
    }

    func finishWriting() {
        self.context?.close(mode: .output, promise: nil)
    }

    func abort() {
        self.context?.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.delegate?.destinationReceived(self.unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Backpressure: read on only while the front can take more.
        if self.delegate?.destinationCanReceive ?? true { context.read() } else { self.readPending = true }
    }

    func resumeReceiving() {
        guard self.readPending, let context else { return }
        self.readPending = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.delegate?.destinationWritable() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { self.reportClosed(nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.reportClosed(nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.reportClosed("\(error)")
        context.close(promise: nil)
    }

    func reportClosed(_ error: String?) {
        guard !self.closedReported else { return }
        self.closedReported = true
        self.delegate?.destinationClosed(error: error)
    }
}
