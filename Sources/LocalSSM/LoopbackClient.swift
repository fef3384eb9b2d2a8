import NIOCore
import NIOHTTP1
import NIOPosix
import WebSocketTransport

extension SocketAddress {
    /// An address for a connect that does not go through NIO's resolver: that one runs getaddrinfo
    /// on Dispatch's global queue, which blocked work (child processes, file handles) can starve.
    /// IP literals need no lookup; names are resolved here, synchronously.
    static func resolvedWithoutDispatch(host: String, port: Int) throws -> SocketAddress {
        if let literal = try? SocketAddress(ipAddress: host, port: port) { return literal }
        return try SocketAddress.makeAddressResolvingHost(host, port: port)
    }
}

/// The two client calls the simulated agent makes to MGS, over plain loopback HTTP:
/// a token POST and a WebSocket upgrade.
enum LoopbackClient {
    struct HTTPFailure: Error, CustomStringConvertible {
        var description: String
    }

    /// Sends one request (a POST unless told otherwise) and returns the status and body of the answer.
    static func post(
        group: any EventLoopGroup, host: String, port: Int, path: String, headers: [(String, String)], body: ByteBuffer,
        method: HTTPMethod = .POST
    ) async throws -> (status: Int, body: String) {
        let promise = group.next().makePromise(of: (Int, String).self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(10))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise))
                    }
                }
                .connect(to: SocketAddress.resolvedWithoutDispatch(host: host, port: port)).get()
        } catch {
            promise.fail(error)  // NIO traps on a leaked promise
            throw error
        }
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "Host", value: "\(host):\(port)")
        head.headers.add(name: "Content-Length", value: String(body.readableBytes))
        head.headers.add(name: "Connection", value: "close")
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        channel.closeFuture.whenComplete { _ in promise.fail(HTTPFailure(description: "connection closed before a response")) }
        defer { channel.close(promise: nil) }
        let (status, text) = try await promise.futureResult.get()
        return (status, text)
    }

    final class ResponseCollector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<(Int, String)>
        var status = 0
        var body = ByteBuffer()

        init(promise: EventLoopPromise<(Int, String)>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch self.unwrapInboundIn(data) {
            case .head(let head): self.status = Int(head.status.code)
            case .body(var chunk): self.body.writeBuffer(&chunk)
            case .end: self.promise.succeed((self.status, String(buffer: self.body)))
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.promise.fail(error)
            context.close(promise: nil)
        }
    }

    /// Opens a WebSocket; `configure` adds the caller's frame handler once upgraded (on the channel's loop).
    static func connectWebSocket(
        group: any EventLoopGroup, host: String, port: Int, uri: String, headers: [(String, String)],
        configure: @escaping @Sendable (any Channel) throws -> Void
    ) async throws -> any Channel {
        let upgraded = group.next().makePromise(of: Void.self)
        let connecting = ClientBootstrap(group: group)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                let upgrader = WebSocketClientUpgrader(
                    maximumMessageSize: 1 << 20,
                    upgradePipelineHandler: { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try configure(channel)
                            upgraded.succeed(())
                        }
                    })
                return channel.eventLoop.makeCompletedFuture {
                    let refusal = UpgradeRefusalDetector(promise: upgraded)
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        leftOverBytesStrategy: .forwardBytes,
                        withClientUpgrade: (upgraders: [upgrader], completionHandler: { context in
                            context.pipeline.removeHandler(name: UpgradeRefusalDetector.name, promise: nil)
                        }))
                    try channel.pipeline.syncOperations.addHandler(refusal, name: UpgradeRefusalDetector.name)
                }
            }
        let channel: any Channel
        do {
            channel = try await connecting.connect(to: SocketAddress.resolvedWithoutDispatch(host: host, port: port)).get()
        } catch {
            // The upgrade promise must complete either way (NIO traps on a leaked promise).
            upgraded.fail(error)
            throw error
        }
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: uri)
        head.headers.add(name: "Host", value: "\(host):\(port)")
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        channel.closeFuture.whenComplete { _ in upgraded.fail(HTTPFailure(description: "connection closed during the WebSocket upgrade")) }
        do {
            try await upgraded.futureResult.get()
        } catch {
            channel.close(promise: nil)
            throw error
        }
        return channel
    }

    /// Sees an ordinary HTTP response instead of a 101: the server refused the upgrade.
    final class UpgradeRefusalDetector: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPClientResponsePart
        static let name = "websocket-upgrade-refusal"
        let promise: EventLoopPromise<Void>

        init(promise: EventLoopPromise<Void>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .head(let head) = self.unwrapInboundIn(data) {
                self.promise.fail(HTTPFailure(description: "WebSocket upgrade refused with HTTP \(head.status.code)"))
                context.close(promise: nil)
            }
        }
    }
}
