import Crypto
import NIOCore
import NIOPosix
import SSMProtocol

public struct EchoResult: Sendable {
    public var sent: Int
    public var received: Int
    public var sentSHA256: String
    public var receivedSHA256: String
}

/// Connects to a local port, sends `bytes` deterministic bytes (respecting backpressure), reads
/// the echo until all came back, and hashes both directions. Past `deadline` the connection is
/// closed and what arrived so far is the result: a stalled relay fails the test instead of hanging it.
public func echoThrough(
    port: Int, bytes: Int, seed: UInt64, deadline: TimeAmount = .minutes(3), onProgress: (@Sendable (Int) -> Void)? = nil
) async throws -> EchoResult {
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
    let watchdog = channel.eventLoop.scheduleTask(in: deadline) { channel.close(promise: nil) }
    defer { watchdog.cancel() }
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

