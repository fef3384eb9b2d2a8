import Logging
import NIOCore

/// Joins one accepted TCP connection to a `DestinationStream`, with backpressure both ways.
///
/// The channel must have `autoRead` off and `allowRemoteHalfClosure` on (every front's listener
/// sets both). A front that ran a handshake first (SOCKS5, HTTP CONNECT) adds the relay once the
/// stream is open, handing over the bytes the client sent after its request (`initialData`) and
/// whether the client's EOF was already seen.
///
/// - Client bytes go to `destination.write`; what it does not take waits, in order, and reading
///   stops until `destinationWritable`. At most one read cycle is held (or, once the client's EOF
///   is on its way, what the kernel buffered: NIO then reads to the end without being asked).
/// - Destination bytes are written to the socket and flushed once per event-loop tick; while the
///   socket is over its high water mark, `destinationCanReceive` is false, and
///   `resumeReceiving()` follows when it drains.
/// - The client's EOF becomes `finishWriting()` once everything before it was taken; the stream
///   stays open until the destination closes.
/// - The destination's close is flushed, then the socket's output is shut; the client's leftover
///   input is read and dropped until its EOF or `drainTimeout`, so the kernel does not reset a
///   connection whose answer is still being read.
/// - The socket going away aborts the destination.
///
/// `services.streamFinished` is called exactly once, when the socket closes.
public final class SocketRelay: ChannelInboundHandler, RemovableChannelHandler, DestinationStreamDelegate {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let destination: any DestinationStream
    private let request: StreamRequest
    private let services: any GatewayServices
    private let opened: NIODeadline
    private let drainTimeout: TimeAmount
    private let logger: Logger

    private var context: ChannelHandlerContext?
    private var initialData: ByteBuffer?
    /// Client bytes the destination has not taken yet, oldest first.
    private var pending = CircularBuffer<ByteBuffer>(initialCapacity: 4)
    private var clientEOF: Bool
    private var finishedWriting = false
    private var destinationDone = false
    private var closing = false
    private var flushScheduled = false
    private var recorded = false
    private var failure: String?
    private var drainTask: Scheduled<Void>?
    private var draining = false

    public private(set) var bytesFromClient = 0
    public private(set) var bytesToClient = 0

    public init(
        destination: any DestinationStream, request: StreamRequest, services: any GatewayServices,
        opened: NIODeadline = .now(), initialData: ByteBuffer? = nil, clientInputClosed: Bool = false,
        drainTimeout: TimeAmount = .seconds(10), logger: Logger = Logger(label: "ssmgate.relay")
    ) {
        self.destination = destination
        self.request = request
        self.services = services
        self.opened = opened
        self.initialData = initialData
        self.clientEOF = clientInputClosed
        self.drainTimeout = drainTimeout
        self.logger = logger
    }

    // MARK: Lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.destination.delegate = self
        if context.channel.isActive {
            self.start(context: context)
        }
    }

    public func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    private var started = false
    private func start(context: ChannelHandlerContext) {
        guard !self.started else { return }
        self.started = true
        if var initial = self.initialData.take(), initial.readableBytes > 0 {
            self.deliver(&initial)
        }
        self.afterClientProgress(context: context)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.drainTask?.cancel()
        // Idempotent for a stream that already closed; releases one still open.
        self.destination.abort()
        self.destinationDone = true
        self.record()
        self.context = nil
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.drainTask?.cancel()
        self.context = nil
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.failure == nil, (error as? ChannelError) != .eof {
            self.failure = "client: \(error)"
        }
        context.close(promise: nil)
    }

    private func record() {
        guard !self.recorded else { return }
        self.recorded = true
        let outcome = self.failure ?? "ok"
        self.logger.debug("relay finished", metadata: [
            "relay.outcome": "\(outcome)", "relay.bytes_in": "\(self.bytesFromClient)", "relay.bytes_out": "\(self.bytesToClient)",
        ])
        self.services.streamFinished(StreamRecord(
            request: self.request, route: self.destination.routeDescription,
            bytesFromClient: self.bytesFromClient, bytesToClient: self.bytesToClient,
            opened: self.opened, closed: .now(), outcome: outcome))
    }

    // MARK: Client → destination

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        // After the destination closed, or past the client's EOF, bytes have nowhere to go.
        guard !self.destinationDone, !self.finishedWriting else { return }
        self.deliver(&buffer)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        self.afterClientProgress(context: context)
        context.fireChannelReadComplete()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.clientEOF = true
            if self.destinationDone {
                // Draining after the destination closed: the client is done too.
                context.close(promise: nil)
            } else {
                self.afterClientProgress(context: context)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Offers `buffer` to the destination behind anything still waiting.
    private func deliver(_ buffer: inout ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        if self.pending.isEmpty {
            let taken = min(self.destination.write(buffer), buffer.readableBytes)
            self.bytesFromClient += taken
            buffer.moveReaderIndex(forwardBy: taken)
            if buffer.readableBytes == 0 { return }
        }
        self.pending.append(buffer)
    }

    public func destinationWritable() {
        guard let context = self.context, !self.destinationDone else { return }
        while var head = self.pending.first {
            let taken = min(self.destination.write(head), head.readableBytes)
            self.bytesFromClient += taken
            head.moveReaderIndex(forwardBy: taken)
            if head.readableBytes > 0 {
                self.pending[self.pending.startIndex] = head
                return
            }
            self.pending.removeFirst()
        }
        self.afterClientProgress(context: context)
    }

    /// Reads on while everything read was taken; passes the client's EOF on after its last byte.
    private func afterClientProgress(context: ChannelHandlerContext) {
        if self.draining {
            context.read()
            return
        }
        guard !self.destinationDone, self.pending.isEmpty else { return }
        if self.clientEOF {
            if !self.finishedWriting {
                self.finishedWriting = true
                self.destination.finishWriting()
            }
        } else {
            context.read()
        }
    }

    // MARK: Destination → client

    public func destinationReceived(_ data: ByteBuffer) {
        guard let context = self.context, !self.closing else { return }
        self.bytesToClient += data.readableBytes
        context.write(self.wrapOutboundOut(data), promise: nil)
        self.scheduleFlush(context: context)
    }

    private func scheduleFlush(context: ChannelHandlerContext) {
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        // One flush for everything the destination delivers in this tick.
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            self.context?.flush()
        }
    }

    public var destinationCanReceive: Bool { self.context?.channel.isWritable ?? true }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, !self.destinationDone {
            self.destination.resumeReceiving()
        }
        context.fireChannelWritabilityChanged()
    }

    public func destinationClosed(error: String?) {
        guard !self.destinationDone else { return }
        self.destinationDone = true
        if let error, self.failure == nil { self.failure = "destination: \(error)" }
        self.pending.removeAll()
        guard let context = self.context, !self.closing else { return }
        self.closing = true
        // Writes complete in order: once this one is done, everything before it is out.
        context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)))
            .assumeIsolated().whenComplete { result in
                guard let context = self.context else { return }
                guard case .success = result, !self.clientEOF else {
                    context.close(promise: nil)
                    return
                }
                self.shutOutputAndDrain(context: context)
            }
    }

    /// The answer is out: send FIN and read (dropping) what the client still sends until its EOF.
    private func shutOutputAndDrain(context: ChannelHandlerContext) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.close(mode: .output, promise: promise)
        promise.futureResult.assumeIsolated().whenComplete { result in
            guard let context = self.context else { return }
            guard case .success = result, !self.clientEOF else {
                context.close(promise: nil)
                return
            }
            self.draining = true
            self.drainTask = context.eventLoop.assumeIsolated().scheduleTask(in: self.drainTimeout) {
                self.context?.close(promise: nil)
            }
            context.read()
        }
    }
}

@available(*, unavailable)
extension SocketRelay: Sendable {}
