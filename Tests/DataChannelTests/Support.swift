import Crypto
import DataChannel
import Foundation
import NIOCore
import NIOPosix
import SSMProtocol
import Sessions
import Synchronization
import TestSupport
import Testing

@testable import LocalSSM


struct StartedTestSession: Sendable {
    var sessionID: String
    var token: String
    var streamURL: String
}

/// StartSession through the emulator's API object (its SigV4 front is covered by the awscli tests).
func startSession(_ emulator: LocalEmulator, document: String, parameters: [String: String]) async throws -> StartedTestSession {
    let request = JSONValue.object([
        ("Target", .string(LocalSSMConfiguration.defaultInstanceID)),
        ("DocumentName", .string(document)),
        ("Parameters", .object(parameters.map { ($0.key, JSONValue.array([.string($0.value)])) })),
    ])
    let caller = try #require(emulator.configuration.credentials.first)
    let response = try await emulator.server.api.startSession(request, caller: caller)
    return StartedTestSession(
        sessionID: try #require(response["SessionId"]?.stringValue),
        token: try #require(response["TokenValue"]?.stringValue),
        streamURL: try #require(response["StreamUrl"]?.stringValue))
}

/// ResumeSession through the emulator's API object.
func resumer(_ emulator: LocalEmulator, sessionID: String) -> DataChannel.TokenRenewal {
    {
        let response = try emulator.server.api.resumeSession(.object([("SessionId", .string(sessionID))]))
        return response["TokenValue"]?.stringValue
    }
}



struct EchoResult: Sendable {
    var sent: Int
    var received: Int
    var sentSHA256: String
    var receivedSHA256: String
}

/// Connects to a local port, sends `bytes` deterministic bytes (respecting backpressure), reads
/// the echo until all came back, and hashes both directions.
func echoThrough(port: Int, bytes: Int, seed: UInt64, onProgress: (@Sendable (Int) -> Void)? = nil) async throws -> EchoResult {
    let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: EchoResult.self)
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(EchoProbe(bytes: bytes, seed: seed, done: promise, onProgress: onProgress))
            }
        }
        .connect(host: "127.0.0.1", port: port).get()
    defer { channel.close(promise: nil) }
    return try await promise.futureResult.get()
}

final class EchoProbe: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var remaining: Int
    let total: Int
    var generator: SplitMix64
    var sentHash = SHA256()
    var receivedHash = SHA256()
    var received = 0
    let done: EventLoopPromise<EchoResult>
    let onProgress: (@Sendable (Int) -> Void)?

    init(bytes: Int, seed: UInt64, done: EventLoopPromise<EchoResult>, onProgress: (@Sendable (Int) -> Void)?) {
        self.remaining = bytes
        self.total = bytes
        self.generator = SplitMix64(seed: seed)
        self.done = done
        self.onProgress = onProgress
    }

    func channelActive(context: ChannelHandlerContext) {
        self.produce(context: context)
        context.fireChannelActive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.produce(context: context)
    }

    func produce(context: ChannelHandlerContext) {
        while self.remaining > 0, context.channel.isWritable {
            let count = min(self.remaining, 32 * 1024)
            var chunk = context.channel.allocator.buffer(capacity: count + 8)
            while chunk.readableBytes < count { chunk.writeInteger(self.generator.next()) }
            chunk.moveWriterIndex(to: chunk.readerIndex + count)
            chunk.withUnsafeReadableBytes { self.sentHash.update(bufferPointer: $0) }
            self.remaining -= count
            context.write(self.wrapOutboundOut(chunk), promise: nil)
        }
        context.flush()
        if self.total == 0 { self.complete() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.received += buffer.readableBytes
        buffer.withUnsafeReadableBytes { self.receivedHash.update(bufferPointer: $0) }
        self.onProgress?(self.received)
        if self.received >= self.total { self.complete() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.complete()
        context.fireChannelInactive()
    }

    var completed = false
    func complete() {
        guard !self.completed else { return }
        self.completed = true
        self.done.succeed(EchoResult(
            sent: self.total - self.remaining, received: self.received,
            sentSHA256: self.sentHash.finalize().map { String(format: "%02x", $0) }.joined(),
            receivedSHA256: self.receivedHash.finalize().map { String(format: "%02x", $0) }.joined()))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Collects notices from a session for assertions.
final class NoticeLog: Sendable {
    let lines = Mutex<[String]>([])
    var sink: NoticeSink { { text in self.lines.withLock { $0.append(text) } } }
    var text: String { self.lines.withLock { $0.joined() } }
}

/// Opens a data channel and a local port forwarder on one loop; returns the forwarder's port.
struct ForwarderHandle: Sendable {
    let forwarder: NIOLoopBound<LocalPortForwarder>
    let loop: any EventLoop
    let port: Int
    let ended: EventLoopFuture<DataChannelError?>

    static func open(
        _ session: StartedTestSession, emulator: LocalEmulator, configuration: DataChannelConfiguration = DataChannelConfiguration(messagesPerSecond: nil),
        notices: NoticeLog
    ) async throws -> ForwarderHandle {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let renew = resumer(emulator, sessionID: session.sessionID)
        let (bound, listening, ended) = try await loop.submit {
            let channel = try DataChannel(
                streamURL: session.streamURL, token: session.token, sessionID: session.sessionID, clientID: DataChannel.uuid(),
                configuration: configuration, eventLoop: loop, renewToken: renew)
            let forwarder = LocalPortForwarder(channel: channel, options: .init(linger: .seconds(2)), notice: notices.sink)
            channel.connect().whenFailure { _ in }
            return (NIOLoopBound(forwarder, eventLoop: loop), forwarder.listening.futureResult, forwarder.ended.futureResult)
        }.get()
        let port = try await listening.get()
        return ForwarderHandle(forwarder: bound, loop: loop, port: port, ended: ended)
    }

    func terminate() async throws {
        let forwarder = self.forwarder
        try await self.loop.submit { forwarder.value.terminate() }.get()
    }
}
