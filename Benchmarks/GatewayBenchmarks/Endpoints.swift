import NIOCore
import NIOPosix
import Synchronization

// The load generator's ends of every measurement: destination servers (what the emulator's agent
// connects to on 127.0.0.1) and the user's clients. They run on the load generator's own event
// loops, never on the gateway's loop.

/// What a receiving end saw: every expected byte, in order, at `finished`.
struct Arrival: Sendable {
    var bytes: Int
    var finished: ContinuousClock.Instant
}

struct BenchmarkError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Bytes received so far, readable from outside the loop (for the stall watchdog).
final class Progress: Sendable {
    let bytes = Atomic<Int>(0)
    /// When the first byte arrived.
    let first = Mutex<ContinuousClock.Instant?>(nil)

    func add(_ count: Int) {
        if self.bytes.add(count, ordering: .relaxed).oldValue == 0 {
            self.first.withLock { $0 = .now }
        }
    }
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

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.produce(context: context) }
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

/// Counts and checks what arrives against the pattern; succeeds once `expected` bytes came (and
/// then closes, when `closeWhenDone`), fails on a wrong byte, an extra byte, or an early close.
final class PatternReceiver: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let pattern: Pattern
    let expected: Int
    let done: EventLoopPromise<Arrival>
    let progress: Progress
    let closeWhenDone: Bool
    var received = 0
    var completed = false

    init(pattern: Pattern, expected: Int, done: EventLoopPromise<Arrival>, progress: Progress, closeWhenDone: Bool) {
        self.pattern = pattern
        self.expected = expected
        self.done = done
        self.progress = progress
        self.closeWhenDone = closeWhenDone
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
        self.progress.add(count)
        if self.received == self.expected {
            self.completed = true
            self.done.succeed(Arrival(bytes: self.received, finished: .now))
            if self.closeWhenDone { context.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !self.completed {
            self.completed = true
            self.done.fail(BenchmarkError("the connection closed after \(self.received) of \(self.expected) bytes"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail("socket error after \(self.received) bytes: \(error)", context: context)
    }

    func fail(_ reason: String, context: ChannelHandlerContext) {
        if !self.completed {
            self.completed = true
            self.done.fail(BenchmarkError(reason))
        }
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension PatternReceiver: Sendable {}

/// Sends back whatever arrives.
final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension EchoHandler: Sendable {}

/// What the next accepted connection of a `Destination` does.
enum Role: Sendable {
    /// Check and count `expected` bytes of the pattern, then close.
    case sink(expected: Int, done: EventLoopPromise<Arrival>, progress: Progress)
    /// Send `total` bytes of the pattern and stay open.
    case source(total: Int)
}

/// A destination server on 127.0.0.1 (what the agent connects to): each accepted connection takes
/// the next queued role, or echoes when none is queued (warm-ups, probes, ping-pong).
final class Destination: Sendable {
    let listener: any Channel
    let roles: Mutex<[Role]>
    let accepted = Atomic<Int>(0)

    var port: Int { self.listener.localAddress!.port! }

    private init(listener: any Channel) {
        self.listener = listener
        self.roles = Mutex([])
    }

    static func start(on loop: any EventLoop, pattern: Pattern) async throws -> Destination {
        let box = RoleQueueBox()
        let listener = try await ServerBootstrap(group: loop)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let role = box.destination?.nextRole()
                    box.destination?.accepted.add(1, ordering: .relaxed)
                    switch role {
                    case .sink(let expected, let done, let progress):
                        try channel.pipeline.syncOperations.addHandler(
                            PatternReceiver(pattern: pattern, expected: expected, done: done, progress: progress, closeWhenDone: true))
                    case .source(let total):
                        try channel.pipeline.syncOperations.addHandler(PatternSender(pattern: pattern, total: total))
                    case nil:
                        try channel.pipeline.syncOperations.addHandler(EchoHandler())
                    }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let destination = Destination(listener: listener)
        box.set(destination)
        return destination
    }

    func enqueue(_ role: Role) {
        self.roles.withLock { $0.append(role) }
    }

    func nextRole() -> Role? {
        self.roles.withLock { $0.isEmpty ? nil : $0.removeFirst() }
    }

    func close() async {
        try? await self.listener.close()
    }
}

/// Lets the child initializer reach the `Destination` created after the bind.
final class RoleQueueBox: Sendable {
    private let value = Mutex<Destination?>(nil)
    var destination: Destination? { self.value.withLock { $0 } }
    func set(_ destination: Destination) { self.value.withLock { $0 = destination } }
}

/// The user's side: a TCP client to 127.0.0.1:`port`.
func connectClient(on loop: any EventLoop, port: Int, _ initialize: @escaping @Sendable (any Channel) throws -> Void) async throws -> any Channel {
    try await ClientBootstrap(group: loop)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .connectTimeout(.seconds(10))
        .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try initialize(channel) } }
        .connect(host: "127.0.0.1", port: port).get()
}

// MARK: - Ping-pong

/// One byte out, the echo back: each `ping` reports the round trip measured on the loop (write to read).
final class PingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var pending: (promise: EventLoopPromise<Duration>, sent: ContinuousClock.Instant)?
    var connected: ContinuousClock.Instant?

    func ping(context: ChannelHandlerContext, promise: EventLoopPromise<Duration>) {
        guard self.pending == nil else {
            promise.fail(BenchmarkError("a ping is already outstanding"))
            return
        }
        self.pending = (promise, .now)
        var byte = context.channel.allocator.buffer(capacity: 1)
        byte.writeInteger(UInt8(0x2A))
        context.writeAndFlush(self.wrapOutboundOut(byte), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        guard let pending = self.pending else {
            context.fireErrorCaught(BenchmarkError("\(buffer.readableBytes) bytes arrived with no ping outstanding"))
            return
        }
        self.pending = nil
        guard buffer.readableBytes == 1, buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == 0x2A else {
            pending.promise.fail(BenchmarkError("the echo was \(buffer.readableBytes) bytes, not the 1 byte sent"))
            return
        }
        pending.promise.succeed(ContinuousClock.now - pending.sent)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let pending = self.pending {
            self.pending = nil
            pending.promise.fail(BenchmarkError("the connection closed while a ping was outstanding"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let pending = self.pending {
            self.pending = nil
            pending.promise.fail(error)
        }
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension PingHandler: Sendable {}

/// A connection carrying 1-byte pings.
struct PingClient: Sendable {
    let channel: any Channel

    static func connect(on loop: any EventLoop, port: Int) async throws -> PingClient {
        PingClient(channel: try await connectClient(on: loop, port: port) { channel in
            try channel.pipeline.syncOperations.addHandler(PingHandler())
        })
    }

    /// One round trip, failing after `timeout`.
    func ping(timeout: TimeAmount = .seconds(30)) async throws -> Duration {
        let channel = self.channel
        let promise = channel.eventLoop.makePromise(of: Duration.self)
        channel.eventLoop.execute {
            do {
                let context = try channel.pipeline.syncOperations.context(handlerType: PingHandler.self)
                (context.handler as! PingHandler).ping(context: context, promise: promise)
            } catch {
                promise.fail(error)
            }
        }
        let timer = channel.eventLoop.scheduleTask(in: timeout) {
            promise.fail(BenchmarkError("no echo within \(timeout.nanoseconds / 1_000_000_000) s"))
        }
        defer { timer.cancel() }
        return try await promise.futureResult.get()
    }

    func close() async {
        try? await self.channel.close()
    }
}

/// Connect, one byte out and back, and the time from before the connect to the echo's arrival.
func connectAndEcho(on loop: any EventLoop, port: Int, timeout: TimeAmount = .seconds(60)) async throws -> (PingClient, Duration) {
    let start = ContinuousClock.now
    let client = try await PingClient.connect(on: loop, port: port)
    do {
        _ = try await client.ping(timeout: timeout)
    } catch {
        await client.close()
        throw error
    }
    return (client, ContinuousClock.now - start)
}
