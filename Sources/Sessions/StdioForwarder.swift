import DataChannel
import NIOCore
import NIOPosix
import SSMProtocol

/// Standard-stream forwarding (reference 7.4.3): the session's bytes on stdin/stdout, for ssh's
/// `ProxyCommand` with `AWS-StartSSHSession`. Reads stdin only while the channel takes data, and
/// holds the agent's output back (unacknowledged) while stdout is full.
///
/// On stdin EOF the official client exits at once; here what was sent is first acknowledged
/// (bounded), so the last bytes of an upload are not lost with the process.
public final class StdioForwarder: DataChannelDelegate {
    let channel: DataChannel
    let notice: NoticeSink
    var pipe: (any Channel)?
    var handler: StdioPipeHandler?
    var pendingInput: ByteBuffer?
    /// Output that arrived before stdout was set up (bounded by `dataChannelCanAcceptOutput`).
    var earlyOutput = ByteBuffer()
    var inputEnded = false
    /// Completes when the session ends (nil: ended by stdin EOF or by us).
    public let ended: EventLoopPromise<DataChannelError?>

    public init(channel: DataChannel, notice: @escaping NoticeSink) {
        self.channel = channel
        self.notice = notice
        self.ended = channel.eventLoop.makePromise()
        channel.delegate = self
    }

    var started = false

    /// Attaches to the given descriptors (normally 0 and 1), which are owned from then on. Call
    /// before connecting, so the agent's first bytes find stdout ready; stdin is read only once
    /// the session has started.
    public func attach(input: CInt = 0, output: CInt = 1) {
        let bound = NIOLoopBound(self, eventLoop: self.channel.eventLoop)
        NIOPipeBootstrap(group: self.channel.eventLoop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { pipe in
                pipe.eventLoop.makeCompletedFuture {
                    let handler = StdioPipeHandler(forwarder: bound.value)
                    bound.value.handler = handler
                    try pipe.pipeline.syncOperations.addHandler(handler)
                }
            }
            .takingOwnershipOfDescriptors(input: StandardStreams.readable(input), output: StandardStreams.writable(output))
            .assumeIsolated().whenComplete { result in
                let forwarder = bound.value
                switch result {
                case .success(let pipe):
                    forwarder.pipe = pipe
                    if forwarder.earlyOutput.readableBytes > 0 {
                        pipe.writeAndFlush(forwarder.earlyOutput, promise: nil)
                        forwarder.earlyOutput = ByteBuffer()
                    }
                    if forwarder.started { pipe.read() }
                case .failure(let error):
                    forwarder.channel.fail(.local("Cannot use standard input/output: \(error)"))
                }
            }
    }

    func input(_ buffer: ByteBuffer) {
        var buffer = buffer
        if self.pendingInput != nil {
            // Keep order: new bytes queue behind what the channel has not taken yet.
            self.pendingInput!.writeBuffer(&buffer)
            return
        }
        self.channel.send(splitting: &buffer)
        if buffer.readableBytes > 0 {
            self.pendingInput = buffer
        } else {
            self.pipe?.read()
        }
    }

    func inputClosed() {
        self.inputEnded = true
        guard self.pendingInput == nil else { return }
        self.drainThenClose()
    }

    func drainThenClose() {
        self.channel.closeWhenAcknowledged()
    }

    // MARK: DataChannelDelegate

    public func dataChannel(_ channel: DataChannel, didStart session: StartedSession) {
        if session.isPort, session.properties["type"]?.stringValue == "LocalPortForwarding" {
            self.notice("This session is local port forwarding; standard-stream forwarding needs AWS-StartSSHSession.\n")
            channel.close()
            return
        }
        self.started = true
        self.pipe?.read()
    }

    public func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool {
        self.pipe?.isWritable ?? (self.earlyOutput.readableBytes < 1 << 20)
    }

    public func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType) {
        switch type {
        case .output, .standardError:
            if let pipe = self.pipe {
                pipe.writeAndFlush(payload, promise: nil)
            } else {
                var payload = payload
                self.earlyOutput.writeBuffer(&payload)
            }
        default:
            break
        }
    }

    public func dataChannelDidBecomeWritable(_ channel: DataChannel) {
        guard let pending = self.pendingInput else { return }
        self.pendingInput = nil
        self.input(pending)
        if self.pendingInput == nil, self.inputEnded { self.drainThenClose() }
    }

    public func dataChannel(_ channel: DataChannel, customerMessage: String) {
        self.notice(customerMessage + "\n")
    }

    public func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?) {
        guard let pipe = self.pipe else {
            self.ended.succeed(error)
            return
        }
        // Let what the destination sent reach stdout before reporting the end.
        pipe.writeAndFlush(ByteBuffer()).assumeIsolated().whenComplete { _ in
            pipe.close(promise: nil)
            self.ended.succeed(error)
        }
    }
}

final class StdioPipeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let forwarder: StdioForwarder

    init(forwarder: StdioForwarder) { self.forwarder = forwarder }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.forwarder.input(self.unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.forwarder.inputClosed()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // stdout went away (EPIPE): nobody is listening any more.
        self.forwarder.channel.close()
    }
}
