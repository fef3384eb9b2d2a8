import NIOCore
import NIOPosix
import Synchronization

/// What a receiving end saw: every expected byte, in order, at `finished`.
struct Arrival: Sendable {
    var bytes: Int
    var finished: ContinuousClock.Instant
}

struct TransferError: Error, CustomStringConvertible {
    var description: String
}

/// Bytes received so far, readable from outside the loop (for the stall watchdog).
final class Progress: Sendable {
    let bytes = Atomic<Int>(0)
}

/// Writes `total` bytes of the pattern as fast as the socket takes them, then leaves the
/// connection open (the other end closes it once it has counted everything).
final class PatternSender: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let pattern: Pattern
    let total: Int
    var offset = 0

    init(pattern: Pattern, total: Int) {
        self.pattern = pattern
        self.total = total
    }

    func channelActive(context: ChannelHandlerContext) {
        self.produce(context: context)
        context.fireChannelActive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.produce(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func produce(context: ChannelHandlerContext) {
        guard self.offset < self.total else { return }
        while self.offset < self.total, context.channel.isWritable {
            let length = min(Pattern.maximumChunk, self.total - self.offset)
            let chunk = self.pattern.slice(at: self.offset, length: length)
            // Advanced before the write: a write can re-enter `produce` through a writability change.
            self.offset += length
            context.write(self.wrapOutboundOut(chunk), promise: nil)
        }
        context.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension PatternSender: Sendable {}

/// Counts and checks what arrives against the pattern; succeeds once `expected` bytes came, fails
/// on a wrong byte, an extra byte, or an early close.
final class PatternReceiver: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let pattern: Pattern
    let expected: Int
    let done: EventLoopPromise<Arrival>
    let progress: Progress
    var received = 0
    var completed = false

    init(pattern: Pattern, expected: Int, done: EventLoopPromise<Arrival>, progress: Progress) {
        self.pattern = pattern
        self.expected = expected
        self.done = done
        self.progress = progress
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.completed else { return }
        let buffer = self.unwrapInboundIn(data)
        let count = buffer.readableBytes
        guard self.received + count <= self.expected else {
            self.fail("received more than the \(self.expected) bytes sent (\(self.received + count))", context: context)
            return
        }
        guard self.pattern.matches(buffer, at: self.received) else {
            self.fail("the bytes at offset \(self.received)..<\(self.received + count) differ from what was sent", context: context)
            return
        }
        self.received += count
        self.progress.bytes.store(self.received, ordering: .relaxed)
        if self.received == self.expected {
            self.completed = true
            self.done.succeed(Arrival(bytes: self.received, finished: .now))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !self.completed {
            self.completed = true
            self.done.fail(TransferError(description: "the connection closed after \(self.received) of \(self.expected) bytes"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail("socket error after \(self.received) bytes: \(error)", context: context)
    }

    func fail(_ reason: String, context: ChannelHandlerContext) {
        if !self.completed {
            self.completed = true
            self.done.fail(TransferError(description: reason))
        }
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension PatternReceiver: Sendable {}

/// The destination of one transfer on loopback: a sink that checks and counts (upload) or a
/// source that sends (download). One connection is expected.
struct Destination: Sendable {
    let listener: any Channel
    var port: Int { self.listener.localAddress!.port! }

    static func sink(pattern: Pattern, expected: Int, done: EventLoopPromise<Arrival>, progress: Progress) async throws -> Destination {
        try await self.listen { channel in
            try channel.pipeline.syncOperations.addHandler(
                PatternReceiver(pattern: pattern, expected: expected, done: done, progress: progress))
        }
    }

    static func source(pattern: Pattern, total: Int) async throws -> Destination {
        try await self.listen { channel in
            try channel.pipeline.syncOperations.addHandler(PatternSender(pattern: pattern, total: total))
        }
    }

    static func listen(_ initialize: @escaping @Sendable (any Channel) throws -> Void) async throws -> Destination {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in channel.eventLoop.makeCompletedFuture { try initialize(channel) } }
            .bind(host: "127.0.0.1", port: 0).get()
        return Destination(listener: listener)
    }

    func close() async {
        try? await self.listener.close()
    }
}

/// The user's side: a TCP client to `port` that sends (upload) or receives and checks (download).
func connectClient(port: Int, _ initialize: @escaping @Sendable (any Channel) throws -> Void) async throws -> any Channel {
    try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try initialize(channel) } }
        .connect(host: "127.0.0.1", port: port).get()
}
