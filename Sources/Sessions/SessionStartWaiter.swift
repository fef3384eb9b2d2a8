import DataChannel
import NIOCore
import SSMProtocol

/// Waits for the handshake of a new data channel, then hands it over: the owner sets its own
/// delegate once `started` succeeds. Output that arrives before is held back (not acknowledged,
/// so the agent resends it to the new owner).
public final class SessionStartWaiter: DataChannelDelegate {
    let promise: EventLoopPromise<StartedSession>
    var done = false

    /// The session type, or why the channel ended before the agent said it.
    public var started: EventLoopFuture<StartedSession> { self.promise.futureResult }

    /// Becomes `channel`'s delegate and keeps itself alive (the channel holds delegates weakly)
    /// until the outcome is known.
    public init(channel: DataChannel) {
        self.promise = channel.eventLoop.makePromise()
        channel.delegate = self
        let retained = self
        self.promise.futureResult.assumeIsolated().whenComplete { _ in _ = retained }
    }

    public func dataChannel(_ channel: DataChannel, didStart session: StartedSession) {
        guard !self.done else { return }
        self.done = true
        self.promise.succeed(session)
    }

    public func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool { false }
    public func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType) {}
    public func dataChannelDidBecomeWritable(_ channel: DataChannel) {}

    public func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?) {
        guard !self.done else { return }
        self.done = true
        self.promise.fail(error ?? DataChannelError.closed)
    }
}
