import NIOCore
import SSMProtocol

/// RFC 6455 framing on a channel: bytes in, `WebSocketMessage`s out, and back.
///
/// Frames are parsed straight out of each read, payloads sliced rather than copied (a masked
/// payload is unmasked into one copy); only a frame split across reads is copied, once. Outgoing
/// messages become one buffer each, header and payload, masked in the same pass when this end is
/// the client. Pings are answered here; a peer's close is answered and
/// the connection closed; a protocol error or an over-long message sends the matching close code
/// (1002, 1009) and closes — nothing is delivered half.
public final class WebSocketFrameCodec: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = WebSocketMessage
    public typealias OutboundIn = WebSocketMessage
    public typealias OutboundOut = ByteBuffer

    /// Which end of the connection this is: clients mask what they send (RFC 6455 section 5.3).
    public enum Role: Sendable {
        case client
        case server
    }

    /// Close status codes this codec sends (RFC 6455 section 7.4.1).
    public enum CloseCode: UInt16, Sendable {
        case normalClosure = 1000
        case protocolError = 1002
        case messageTooBig = 1009
    }

    public let role: Role
    /// The largest message accepted, fragments joined.
    public let maximumMessageSize: Int

    /// Bytes of a frame that has not fully arrived yet.
    private var partialFrame: ByteBuffer?
    /// A fragmented message being joined: its opcode and what arrived so far.
    private var fragments: (opcode: WebSocketFrameOpcode, data: ByteBuffer)?
    /// Set once a close was sent or the channel went away: nothing more is decoded.
    private var isClosing = false
    /// Masking keys (clients only): unpredictable to intermediaries, not secret.
    private var random = FastRandom()

    public init(role: Role, maximumMessageSize: Int) {
        self.role = role
        self.maximumMessageSize = maximumMessageSize
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.isClosing else { return }
        var bytes = self.unwrapInboundIn(data)
        if var partial = self.partialFrame {
            // Complete the split frame with only the bytes it lacks, then go on in the read itself:
            // a frame split across reads costs one copy of that frame, never of the whole read.
            self.partialFrame = nil
            while partial.readableBytes > 0 {
                let missing: Int
                do {
                    missing = try WebSocketFrameHeader.missingByteCount(in: partial, maximumPayloadLength: self.maximumMessageSize)
                } catch {
                    return self.fail(.messageTooBig, context: context)
                }
                guard bytes.readableBytes >= missing else {
                    partial.writeBuffer(&bytes)
                    self.partialFrame = partial
                    return
                }
                var completion = bytes.readSlice(length: missing)!
                partial.writeBuffer(&completion)
                self.decodeFrames(from: &partial, context: context)
                if self.isClosing { return }
            }
        }
        self.decodeFrames(from: &bytes, context: context)
        if !self.isClosing, bytes.readableBytes > 0 { self.keepPartialFrame(bytes, allocator: context.channel.allocator) }
    }

    /// Copies the start of a split frame out of the read, sized for the whole frame when its
    /// header is there: holding a slice would pin the channel's receive buffer, and growing the
    /// copy read by read would reallocate it.
    private func keepPartialFrame(_ bytes: ByteBuffer, allocator: ByteBufferAllocator) {
        var bytes = bytes
        let header = try? WebSocketFrameHeader.peek(in: bytes, maximumPayloadLength: self.maximumMessageSize)
        let frameSize = header.flatMap { $0 }.map { $0.headerLength + $0.payloadLength } ?? 14
        var partial = allocator.buffer(capacity: max(frameSize, bytes.readableBytes))
        partial.writeBuffer(&bytes)
        self.partialFrame = partial
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.isClosing = true
        self.partialFrame = nil
        self.fragments = nil
        context.fireChannelInactive()
    }

    private func decodeFrames(from buffer: inout ByteBuffer, context: ChannelHandlerContext) {
        while !self.isClosing {
            let header: WebSocketFrameHeader
            do {
                guard let peeked = try WebSocketFrameHeader.peek(in: buffer, maximumPayloadLength: self.maximumMessageSize) else { return }
                header = peeked
            } catch {
                return self.fail(.messageTooBig, context: context)
            }
            guard buffer.readableBytes >= header.headerLength + header.payloadLength else { return }
            buffer.moveReaderIndex(forwardBy: header.headerLength)
            var payload = buffer.readSlice(length: header.payloadLength)!
            if let mask = header.mask { payload.applyWebSocketMask(mask) }
            guard header.reservedBits == 0, let opcode = header.opcode,
                !header.isControl || (header.fin && header.payloadLength <= 125)
            else {
                return self.fail(.protocolError, context: context)
            }
            self.handleFrame(opcode: opcode, fin: header.fin, payload: payload, context: context)
        }
    }

    private func handleFrame(opcode: WebSocketFrameOpcode, fin: Bool, payload: ByteBuffer, context: ChannelHandlerContext) {
        switch opcode {
        case .ping:
            context.writeAndFlush(self.wrapOutboundOut(self.frame(.pong, payload: payload, allocator: context.channel.allocator)), promise: nil)
        case .pong:
            context.fireChannelRead(self.wrapInboundOut(.pong(payload)))
        case .connectionClose:
            // Echo the peer's status code (an empty close gets an empty answer), then hang up.
            self.isClosing = true
            let status = payload.getSlice(at: payload.readerIndex, length: min(payload.readableBytes, 2)) ?? ByteBuffer()
            context.fireUserInboundEventTriggered(WebSocketClosedByPeer(status: status.getInteger(at: status.readerIndex, as: UInt16.self)))
            let answer = self.frame(.connectionClose, payload: status, allocator: context.channel.allocator)
            context.writeAndFlush(self.wrapOutboundOut(answer)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case .text, .binary:
            guard self.fragments == nil else { return self.fail(.protocolError, context: context) }
            if fin {
                context.fireChannelRead(self.wrapInboundOut(opcode == .text ? .text(payload) : .binary(payload)))
            } else {
                self.fragments = (opcode, payload)
            }
        case .continuation:
            guard var fragments = self.fragments else { return self.fail(.protocolError, context: context) }
            guard fragments.data.readableBytes + payload.readableBytes <= self.maximumMessageSize else {
                return self.fail(.messageTooBig, context: context)
            }
            self.fragments = nil
            var payload = payload
            fragments.data.writeBuffer(&payload)
            if fin {
                let message: WebSocketMessage = fragments.opcode == .text ? .text(fragments.data) : .binary(fragments.data)
                context.fireChannelRead(self.wrapInboundOut(message))
            } else {
                self.fragments = fragments
            }
        }
    }

    /// Sends a close frame with `code` and closes: what the peer sent cannot be made sense of.
    private func fail(_ code: CloseCode, context: ChannelHandlerContext) {
        // The handlers learn why the connection ends (they close it on any error; so does this).
        context.fireErrorCaught(WebSocketProtocolViolation(code: code))
        self.isClosing = true
        self.partialFrame = nil
        self.fragments = nil
        var status = context.channel.allocator.buffer(capacity: 2)
        status.writeInteger(code.rawValue)
        let frame = self.frame(.connectionClose, payload: status, allocator: context.channel.allocator)
        context.writeAndFlush(self.wrapOutboundOut(frame)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Nothing may follow a close frame.
        guard !self.isClosing else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        let frame: ByteBuffer
        switch self.unwrapOutboundIn(data) {
        case .binary(let payload): frame = self.frame(.binary, payload: payload, allocator: context.channel.allocator)
        case .text(let payload): frame = self.frame(.text, payload: payload, allocator: context.channel.allocator)
        case .ping(let payload): frame = self.frame(.ping, payload: payload, allocator: context.channel.allocator)
        case .pong(let payload): frame = self.frame(.pong, payload: payload, allocator: context.channel.allocator)
        }
        context.write(self.wrapOutboundOut(frame), promise: promise)
    }

    /// One frame in one buffer: one allocation, one pass over the payload.
    private func frame(_ opcode: WebSocketFrameOpcode, payload: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        let mask: WebSocketMask? = self.role == .client ? WebSocketMask(using: &self.random) : nil
        var frame = allocator.buffer(capacity: ByteBuffer.webSocketFrameSize(payloadLength: payload.readableBytes, masked: mask != nil))
        frame.writeWebSocketFrame(opcode: opcode, mask: mask, payload: payload)
        return frame
    }
}

@available(*, unavailable)
extension WebSocketFrameCodec: Sendable {}

/// What `WebSocketFrameCodec` fires before it closes a connection whose peer broke the framing rules.
public struct WebSocketProtocolViolation: Error, CustomStringConvertible {
    public let code: WebSocketFrameCodec.CloseCode
    public var description: String {
        self.code == .messageTooBig ? "the peer sent a WebSocket message over the size limit" : "the peer broke the WebSocket framing rules"
    }
}

/// A user inbound event: the peer sent a WebSocket close frame (status code if it gave one); the
/// codec answers it and closes the connection.
public struct WebSocketClosedByPeer: Sendable {
    public let status: UInt16?
}
