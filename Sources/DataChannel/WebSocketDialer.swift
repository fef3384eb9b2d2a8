import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import WebSocketTransport

/// Opens the WebSocket of a data channel: TCP, TLS for `wss://` (system trust store, SNI), and
/// the HTTP upgrade with no extra headers, exactly as the official client dials `StreamUrl`.
enum WebSocketDialer {
    /// One TLS context for the process: building it loads the system trust store.
    static let tlsContext: Result<NIOSSLContext, any Error> = Result {
        try NIOSSLContext(configuration: .makeClientConfiguration())
    }

    /// Connects and upgrades; `configure` adds the frame handler on the channel's loop once upgraded.
    static func connect(
        to endpoint: StreamEndpoint,
        on eventLoop: any EventLoop,
        connectTimeout: TimeAmount,
        maximumFrameSize: Int,
        configure: @escaping @Sendable (any Channel) throws -> Void
    ) -> EventLoopFuture<any Channel> {
        let tls: NIOSSLContext?
        if endpoint.usesTLS {
            switch Self.tlsContext {
            case .success(let context): tls = context
            case .failure(let error):
                return eventLoop.makeFailedFuture(DataChannelError.connectFailed(endpoint: endpoint.description, reason: "TLS set-up failed: \(error)"))
            }
        } else {
            tls = nil
        }
        let serverName = (try? SocketAddress(ipAddress: endpoint.host, port: 0)) == nil ? endpoint.host : nil
        let upgraded = eventLoop.makePromise(of: Void.self)
        let host = endpoint.host
        let resolved = Self.resolve(host: host, port: endpoint.port, on: eventLoop).flatMapErrorThrowing { error in
            throw DataChannelError.connectFailed(endpoint: endpoint.description, reason: "cannot resolve \(host): \(Self.describe(error))")
        }
        let connected = resolved.flatMap { address in
            ClientBootstrap(group: eventLoop)
                .connectTimeout(connectTimeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    let upgrader = WebSocketClientUpgrader(
                        maximumMessageSize: maximumFrameSize,
                        upgradePipelineHandler: { channel, _ in
                            channel.eventLoop.makeCompletedFuture {
                                try configure(channel)
                                upgraded.succeed(())
                            }
                        })
                    return channel.eventLoop.makeCompletedFuture {
                        if let tls {
                            try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverName))
                        }
                        try channel.pipeline.syncOperations.addHTTPClientHandlers(
                            leftOverBytesStrategy: .forwardBytes,
                            withClientUpgrade: (upgraders: [upgrader], completionHandler: { context in
                                context.pipeline.removeHandler(name: UpgradeRefusalDetector.name, promise: nil)
                            }))
                        try channel.pipeline.syncOperations.addHandler(UpgradeRefusalDetector(promise: upgraded), name: UpgradeRefusalDetector.name)
                    }
                }
                .connect(to: address)
        }
        return connected.flatMapError { error in
            let failure = error as? DataChannelError ?? DataChannelError.connectFailed(endpoint: endpoint.description, reason: Self.describe(error))
            upgraded.fail(failure)  // the promise must complete either way
            return eventLoop.makeFailedFuture(failure)
        }.flatMap { channel in
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: endpoint.requestTarget)
            head.headers.add(name: "Host", value: endpoint.hostHeader)
            head.headers.add(name: "User-Agent", value: "ssmgate")
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            channel.closeFuture.whenComplete { _ in
                upgraded.fail(DataChannelError.connectFailed(endpoint: endpoint.description, reason: "connection closed during the WebSocket upgrade"))
            }
            // A service that accepts the connection but never answers the upgrade must not stall a reconnect.
            let timeout = eventLoop.scheduleTask(in: connectTimeout) {
                upgraded.fail(DataChannelError.connectFailed(endpoint: endpoint.description, reason: "no answer to the WebSocket upgrade"))
                channel.close(promise: nil)
            }
            upgraded.futureResult.whenComplete { _ in timeout.cancel() }
            return upgraded.futureResult.map { channel }.flatMapError { error in
                channel.close(promise: nil)
                if let error = error as? DataChannelError { return eventLoop.makeFailedFuture(error) }
                return eventLoop.makeFailedFuture(DataChannelError.connectFailed(endpoint: endpoint.description, reason: Self.describe(error)))
            }
        }
    }

    /// IP literals need no lookup. A name is resolved on NIO's thread pool: getaddrinfo blocks (a
    /// slow DNS server for seconds), and on the event loop it would stall every stream the loop
    /// carries; NIO's own resolver runs on Dispatch's global queue, which blocked work can starve.
    static func resolve(host: String, port: Int, on eventLoop: any EventLoop) -> EventLoopFuture<SocketAddress> {
        if let literal = try? SocketAddress(ipAddress: host, port: port) { return eventLoop.makeSucceededFuture(literal) }
        return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
            try SocketAddress.makeAddressResolvingHost(host, port: port)
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? NIOSSLError { return "TLS error: \(error)" }
        if let error = error as? IOError { return error.description }
        if error is ChannelError { return "\(error)" }
        return String(describing: error)
    }

    /// Sees an ordinary HTTP response instead of a 101: the service refused the upgrade.
    final class UpgradeRefusalDetector: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPClientResponsePart
        static let name = "ssmgate-websocket-upgrade-refusal"
        let promise: EventLoopPromise<Void>

        init(promise: EventLoopPromise<Void>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .head(let head) = self.unwrapInboundIn(data) {
                self.promise.fail(DataChannelError.connectFailed(
                    endpoint: "the stream URL", reason: "the WebSocket upgrade was refused with HTTP \(head.status.code)"))
                context.close(promise: nil)
            }
        }
    }
}
