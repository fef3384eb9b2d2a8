import DataChannel
import Mux
import NIOCore

/// Joins one local TCP connection to one smux stream, with backpressure both ways: a full stream
/// buffer stops reading the socket; an unwritable socket holds the session's input.
///
/// Half-close: the agent turns a FIN into a full close of the destination, which would lose an
/// answer still on its way. So a local EOF does not become a FIN at once: the stream stays open
/// until the destination closes (the agent's FIN) or `linger` passes.
final class TCPStreamBridge: ChannelInboundHandler, MuxStreamPeer {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let connection: MuxConnection
    let linger: TimeAmount
    let onOpen: ((SmuxStreamID) -> Void)?
    var id: SmuxStreamID?
    var context: ChannelHandlerContext?
    var pending: ByteBuffer?
    var localEOF = false
    var finished = false
    var lingerTask: Scheduled<Void>?
    var flushPending = false

    init(connection: MuxConnection, linger: TimeAmount, onOpen: ((SmuxStreamID) -> Void)? = nil) {
        self.connection = connection
        self.linger = linger
        self.onOpen = onOpen
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { self.open(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.open(context: context)
        context.fireChannelActive()
    }

    func open(context: ChannelHandlerContext) {
        guard self.id == nil, !self.finished else { return }
        do {
            let id = try self.connection.openStream(peer: self)
            self.id = id
            self.onOpen?(id)
            context.read()
        } catch {
            self.finished = true
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let id = self.id else { return }
        var buffer = self.unwrapInboundIn(data)
        if self.pending != nil {
            // Reads already in flight queue behind what the stream has not taken: order is kept.
            self.pending!.writeBuffer(&buffer)
            return
        }
        let taken = self.connection.write(buffer, to: id)
        buffer.moveReaderIndex(forwardBy: min(taken, buffer.readableBytes))
        if buffer.readableBytes > 0 {
            if self.pending == nil { self.pending = buffer } else { self.pending!.writeBuffer(&buffer) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.pending == nil, !self.localEOF { context.read() }
        context.fireChannelReadComplete()
    }

    func muxStreamWritable() {
        guard let id = self.id, let context = self.context, var pending = self.pending else { return }
        let taken = self.connection.write(pending, to: id)
        pending.moveReaderIndex(forwardBy: min(taken, pending.readableBytes))
        if pending.readableBytes > 0 {
            self.pending = pending
            return
        }
        self.pending = nil
        if self.localEOF { self.startLinger() } else { context.read() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.localEOF = true
            if self.pending == nil { self.startLinger() }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func startLinger() {
        guard let context = self.context, self.lingerTask == nil, !self.finished else { return }
        self.lingerTask = context.eventLoop.assumeIsolated().scheduleTask(in: self.linger) {
            guard !self.finished, let id = self.id else { return }
            self.connection.closeStream(id)
        }
    }

    /// Destination bytes arrive one data message (1 KiB) at a time: they are written at once and
    /// flushed once per event-loop tick, so a burst of messages is one send on the socket.
    /// (Unflushed bytes count toward the socket's writability, so backpressure is unchanged.)
    func muxStreamReceived(_ data: ByteBuffer) {
        guard let context = self.context else { return }
        context.write(self.wrapOutboundOut(data), promise: nil)
        guard !self.flushPending else { return }
        self.flushPending = true
        context.eventLoop.assumeIsolated().execute {
            self.flushPending = false
            self.context?.flush()
        }
    }

    var muxStreamCanReceive: Bool { self.context?.channel.isWritable ?? true }

    func muxStreamClosedByAgent() {
        self.finish()
    }

    func muxStreamFailed(_ reason: String) {
        self.finish()
    }

    func finish() {
        guard !self.finished, let context = self.context else { return }
        self.finished = true
        self.lingerTask?.cancel()
        // Writes complete in order: close once everything the destination sent is out.
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.lingerTask?.cancel()
        if !self.finished, let id = self.id {
            self.finished = true
            self.connection.abandonStream(id)
        }
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
