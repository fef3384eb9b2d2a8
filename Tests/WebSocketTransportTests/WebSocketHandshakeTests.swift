import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Testing
import WebSocketTransport

/// The upgrade handshakes against NIO's own WebSocket client and server, over loopback TCP.
@Suite("WebSocket handshakes")
struct WebSocketHandshakeTests {
    @Test func acceptValueMatchesRFC6455sExample() {
        // RFC 6455 section 1.3.
        #expect(WebSocketHandshake.acceptValue(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    /// Echoes each binary frame NIO's server decoder delivers.
    final class NIOEcho: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame
        typealias OutboundOut = WebSocketFrame
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = self.unwrapInboundIn(data)
            guard frame.opcode == .binary else { return }
            context.writeAndFlush(self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: frame.unmaskedData)), promise: nil)
        }
    }

    /// Echoes each binary message our codec delivers.
    final class CodecEcho: ChannelInboundHandler {
        typealias InboundIn = WebSocketMessage
        typealias OutboundOut = WebSocketMessage
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .binary(let payload) = self.unwrapInboundIn(data) {
                context.writeAndFlush(self.wrapOutboundOut(.binary(payload)), promise: nil)
            }
        }
    }

    /// Completes with the first binary message our codec delivers to the client.
    final class FirstMessage: ChannelInboundHandler {
        typealias InboundIn = WebSocketMessage
        let promise: EventLoopPromise<ByteBuffer>
        init(promise: EventLoopPromise<ByteBuffer>) { self.promise = promise }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .binary(let payload) = self.unwrapInboundIn(data) { self.promise.succeed(payload) }
        }
    }

    /// Completes with the first binary frame NIO's client decoder delivers.
    final class FirstFrame: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame
        let promise: EventLoopPromise<ByteBuffer>
        init(promise: EventLoopPromise<ByteBuffer>) { self.promise = promise }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = self.unwrapInboundIn(data)
            if frame.opcode == .binary { self.promise.succeed(frame.unmaskedData) }
        }
    }

    static func server(ours: Bool, group: any EventLoopGroup) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upgrader: any HTTPServerProtocolUpgrader
                    if ours {
                        upgrader = WebSocketServerUpgrader(
                            maximumMessageSize: 1 << 20,
                            shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
                            upgradePipelineHandler: { channel, _ in
                                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(CodecEcho()) }
                            })
                    } else {
                        upgrader = NIOWebSocketServerUpgrader(
                            maxFrameSize: 1 << 20,
                            shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
                            upgradePipelineHandler: { channel, _ in
                                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(NIOEcho()) }
                            })
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    /// Upgrades a connection to `port`, sends `payload` once upgraded, and returns the echo.
    static func echo(_ payload: ByteBuffer, port: Int, ours: Bool, group: any EventLoopGroup) async throws -> ByteBuffer {
        let echoed = group.next().makePromise(of: ByteBuffer.self)
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upgrader: any NIOHTTPClientProtocolUpgrader
                    if ours {
                        upgrader = WebSocketClientUpgrader(maximumMessageSize: 1 << 20) { channel, _ in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(FirstMessage(promise: echoed))
                                channel.writeAndFlush(WebSocketMessage.binary(payload), promise: nil)
                            }
                        }
                    } else {
                        upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 20, upgradePipelineHandler: { channel, _ in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(FirstFrame(promise: echoed))
                                channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .binary, maskKey: .random(), data: payload), promise: nil)
                            }
                        })
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/ws")
        head.headers.add(name: "Host", value: "127.0.0.1:\(port)")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil))
        let timeout = group.next().scheduleTask(in: .seconds(10)) { echoed.fail(ChannelError.connectTimeout(.seconds(10))) }
        defer { timeout.cancel(); channel.close(promise: nil) }
        return try await echoed.futureResult.get()
    }

    @Test(arguments: [(true, false), (false, true), (true, true)])
    func upgradesAndEchoes(clientIsOurs: Bool, serverIsOurs: Bool) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await Self.server(ours: serverIsOurs, group: group)
        var payload = ByteBuffer()
        for index in 0..<70_000 { payload.writeInteger(UInt8(truncatingIfNeeded: index &* 31)) }
        let echoed = try await Self.echo(payload, port: server.localAddress!.port!, ours: clientIsOurs, group: group)
        #expect(echoed == payload)
        try await server.close()
        try await group.shutdownGracefully()
    }
}
