import NIOCore

/// One WebSocket message as the data channel and the emulator see it: whole (fragments joined)
/// and unmasked. A single-payload-type enum, so it fits `NIOAny`'s inline storage and passing
/// one down a pipeline allocates nothing.
///
/// Pings are not delivered: `WebSocketFrameCodec` answers them itself.
public enum WebSocketMessage: Sendable {
    case binary(ByteBuffer)
    case text(ByteBuffer)
    /// Outbound: a keepalive. Inbound pings never arrive here.
    case ping(ByteBuffer)
    case pong(ByteBuffer)
}
