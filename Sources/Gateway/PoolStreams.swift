import DataChannel
import Mux
import NIOCore
import SSMProtocol
import Sessions

/// A destination stream that is one smux stream on a pooled session.
final class PooledStream: DestinationStream, MuxStreamPeer {
    let channel: PooledChannel
    let routeDescription: RouteDescription
    let linger: TimeAmount
    var id: SmuxStreamID?
    weak var delegate: (any DestinationStreamDelegate)?
    var finished = false
    var lingerTask: Scheduled<Void>?
    /// Counted in the channel's `lingering` from the client's EOF until the stream ends.
    var isLingering = false

    init(channel: PooledChannel, linger: TimeAmount) {
        self.channel = channel
        self.linger = linger
        self.routeDescription = RouteDescription(
            target: channel.route.target, document: channel.document, sessionID: channel.sessionID)
    }

    var eventLoop: any EventLoop { self.channel.mux.channel.eventLoop }

    func write(_ data: ByteBuffer) -> Int {
        guard let id, !self.finished else { return data.readableBytes }
        return self.channel.mux.write(data, to: id)
    }

    func finishWriting() {
        // The agent would close the destination on our FIN: wait for it to close first, or linger out.
        guard self.lingerTask == nil, !self.finished else { return }
        self.isLingering = true
        self.channel.lingering += 1
        self.lingerTask = self.eventLoop.assumeIsolated().scheduleTask(in: self.linger) {
            guard !self.finished, let id = self.id else { return }
            self.channel.mux.closeStream(id)
        }
    }

    func abort() {
        guard !self.finished, let id else { return }
        self.finish()
        self.channel.mux.abandonStream(id)
    }

    func resumeReceiving() {
        // smux v1 has no window: an unacknowledged message is resent by the agent, nothing to do here.
    }

    func finish() {
        guard !self.finished else { return }
        self.finished = true
        self.lingerTask?.cancel()
        self.channel.streamEnded(wasLingering: self.isLingering)
    }

    // MARK: MuxStreamPeer

    func muxStreamReceived(_ data: ByteBuffer) { self.delegate?.destinationReceived(data) }

    func muxStreamClosedByAgent() {
        guard !self.finished else { return }
        self.finish()
        self.delegate?.destinationClosed(error: nil)
    }

    func muxStreamWritable() { self.delegate?.destinationWritable() }

    func muxStreamFailed(_ reason: String) {
        guard !self.finished else { return }
        self.finish()
        self.delegate?.destinationClosed(error: reason)
    }

    var muxStreamCanReceive: Bool { self.delegate?.destinationCanReceive ?? true }
}

/// A destination stream that is a whole session of its own: AWS-StartSSHSession (where IAM allows
/// only that document) or a basic-mode port session (agents without smux). Bytes go raw.
final class DedicatedSessionStream: DestinationStream, DataChannelDelegate {
    let channel: DataChannel
    let routeDescription: RouteDescription
    let linger: TimeAmount
    let onEnd: () -> Void
    weak var delegate: (any DestinationStreamDelegate)?
    var finished = false
    var lingerTask: Scheduled<Void>?
    var started: EventLoopPromise<Void>?

    init(channel: DataChannel, route: RouteDescription, linger: TimeAmount, onEnd: @escaping () -> Void) {
        self.channel = channel
        self.routeDescription = route
        self.linger = linger
        self.onEnd = onEnd
    }

    var eventLoop: any EventLoop { self.channel.eventLoop }

    func write(_ data: ByteBuffer) -> Int {
        guard !self.finished else { return data.readableBytes }
        guard self.channel.isWritable else {
            self.channel.requestWritabilityNotification()
            return 0
        }
        var buffer = data
        self.channel.send(splitting: &buffer)
        if buffer.readableBytes > 0 { self.channel.requestWritabilityNotification() }
        return data.readableBytes - buffer.readableBytes
    }

    func finishWriting() {
        guard self.lingerTask == nil, !self.finished else { return }
        self.lingerTask = self.eventLoop.assumeIsolated().scheduleTask(in: self.linger) { self.end() }
    }

    func abort() {
        guard !self.finished else { return }
        self.finished = true
        self.end()
    }

    func resumeReceiving() {}

    /// Ends the session: the TerminateSession flag where the agent takes it, then close.
    func end() {
        self.lingerTask?.cancel()
        if AgentVersion(self.channel.session?.agentVersion ?? "").takesTerminateFlag {
            self.channel.send(PortFlag.terminateSession.encoded(), type: .flag)
        }
        self.channel.closeWhenAcknowledged()
    }

    func dataChannel(_ channel: DataChannel, didStart session: StartedSession) {
        self.started?.succeed(())
        self.started = nil
    }

    func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool { self.delegate?.destinationCanReceive ?? true }

    func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType) {
        guard type == .output else { return }
        self.delegate?.destinationReceived(payload)
    }

    func dataChannelDidBecomeWritable(_ channel: DataChannel) { self.delegate?.destinationWritable() }

    func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?) {
        self.lingerTask?.cancel()
        self.started?.fail(error ?? DataChannelError.closed)
        self.started = nil
        let wasFinished = self.finished
        self.finished = true
        self.onEnd()
        // The service closing the channel is how a raw session ends when the destination closes.
        if case .closedByService? = error { return self.reportClosed(wasFinished, nil) }
        self.reportClosed(wasFinished, error.map { "\($0)" })
    }

    func reportClosed(_ wasFinished: Bool, _ reason: String?) {
        if !wasFinished { self.delegate?.destinationClosed(error: reason) }
    }
}
