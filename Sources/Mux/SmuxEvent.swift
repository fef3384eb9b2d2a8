import NIOCore

/// What the peer did, as decoded by ``SmuxSession/receive(_:into:)``, in wire order.
public enum SmuxEvent: Hashable, Sendable {
    /// The peer opened a stream (SYN). On the agent side: dial the destination for it.
    case streamOpened(SmuxStreamID)
    /// The peer opened a stream beyond ``SmuxConfiguration/maximumStreams``; a FIN is queued for it
    /// and its data will be dropped.
    case streamRefused(SmuxStreamID)
    /// Stream data, a slice of the bytes given to `receive` (never copied). A PSH frame that spans
    /// several inputs arrives as several events, so nothing waits for a whole 32 KiB frame.
    case data(SmuxStreamID, ByteBuffer)
    /// The peer sent FIN: end of its data on this stream (smux: read side at EOF). The official agent
    /// and client treat their own FIN as a full close of the stream.
    case streamClosedByPeer(SmuxStreamID)
    /// The peer sent a NOP keepalive.
    case keepAlive
}
