import DataChannel
import Mux
import NIOCore
import NIOPosix
import SSMProtocol

/// Where user-facing session messages go (stderr or stdout in the CLI, a log in the gateway).
public typealias NoticeSink = @Sendable (String) -> Void

/// The local side of a port session started as `LocalPortForwarding`: a TCP listener whose
/// connections go over smux streams (agents after 3.0.196.0) or, one at a time, over the basic
/// byte stream (older agents), as the official client chooses (reference 7.4.2).
public final class LocalPortForwarder: DataChannelDelegate {
    public struct Options: Sendable {
        public var bindHost: String
        /// 0 lets the system choose.
        public var localPort: Int
        /// How long a stream stays open after the local side's EOF, waiting for the destination.
        public var linger: TimeAmount

        public init(bindHost: String = "127.0.0.1", localPort: Int = 0, linger: TimeAmount = .seconds(30)) {
            self.bindHost = bindHost
            self.localPort = localPort
            self.linger = linger
        }
    }

    let channel: DataChannel
    let options: Options
    let notice: NoticeSink
    var listener: (any Channel)?
    var mux: MuxConnection?
    var basic: BasicPortBridge?
    var announcedFirstConnection = false
    /// Completes with the bound port once the session started and the listener is up.
    public let listening: EventLoopPromise<Int>
    /// Completes when the session ends (nil error: ended by us).
    public let ended: EventLoopPromise<DataChannelError?>

    public init(channel: DataChannel, options: Options, notice: @escaping NoticeSink) {
        self.channel = channel
        self.options = options
        self.notice = notice
        self.listening = channel.eventLoop.makePromise()
        self.ended = channel.eventLoop.makePromise()
        channel.delegate = self
    }

    /// The data channel's counters (reconnects, retransmissions, bytes).
    public var channelStatistics: DataChannelStatistics { self.channel.statistics }

    /// One line on where the forwarder stands, for a report when a connection stalls.
    public var stateSummary: String {
        let stats = self.channel.statistics
        var mode = "starting"
        if let basic = self.basic {
            mode = "basic: current \(basic.current == nil ? "none" : "open"), waiting \(basic.waiting.count), "
                + "held input \(basic.pendingInput?.readableBytes ?? 0) B, writable \(self.channel.isWritable)"
        } else if self.mux != nil {
            mode = "mux"
        }
        return "\(mode); messages sent \(stats.messagesSent) (\(stats.payloadBytesSent) B), received \(stats.messagesReceived) "
            + "(\(stats.payloadBytesReceived) B), unacknowledged \(self.channel.unacknowledgedCount), "
            + "retransmissions \(stats.retransmissions), reconnects \(stats.reconnects)"
    }

    var terminating = false

    /// Ends the session the way the official client does on Ctrl-C: the TerminateSession flag.
    public func terminate() {
        self.terminating = true
        self.listener?.close(promise: nil)
        if let mux = self.mux {
            mux.terminate()
        } else {
            self.basic?.terminate()
        }
    }

    // MARK: DataChannelDelegate (until the session type is known)

    public func dataChannel(_ channel: DataChannel, didStart session: StartedSession) {
        guard session.isPort, session.properties["type"]?.stringValue == "LocalPortForwarding" else {
            self.notice("This document does not start a local port forwarding session (type \(session.properties["type"]?.stringValue ?? "none")); use `ssmgate proxy` for AWS-StartSSHSession.")
            channel.close()
            return
        }
        let sessionID = channel.sessionID
        if AgentVersion(session.agentVersion).supportsMux {
            let mux = MuxConnection(channel: channel, session: session)
            mux.onNotice = { [notice] text in notice("\n" + text + "\n") }
            mux.onClose = { [weak self] error in self?.finish(error) }
            self.mux = mux
        } else {
            let basic = BasicPortBridge(channel: channel, notice: self.notice)
            basic.onClose = { [weak self] error in self?.finish(error) }
            self.basic = basic
        }
        let linger = self.options.linger
        let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        ServerBootstrap(group: channel.eventLoop)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    let forwarder = bound.value
                    if !forwarder.announcedFirstConnection {
                        forwarder.announcedFirstConnection = true
                        forwarder.notice("\nConnection accepted for session [\(sessionID)]\n")
                    }
                    if let mux = forwarder.mux {
                        guard !mux.isClosed else { throw DataChannelError.closed }
                        try child.pipeline.syncOperations.addHandler(TCPStreamBridge(connection: mux, linger: linger))
                    } else if let basic = forwarder.basic {
                        basic.accept(child)
                    }
                }
            }
            .bind(host: self.options.bindHost, port: self.options.localPort)
            .assumeIsolated().whenComplete { result in
                let forwarder = bound.value
                switch result {
                case .success(let listener):
                    forwarder.listener = listener
                    let port = listener.localAddress?.port ?? forwarder.options.localPort
                    forwarder.notice("Port \(port) opened for sessionId \(sessionID).\n")
                    if forwarder.mux != nil { forwarder.notice("Waiting for connections...\n") }
                    forwarder.isListening = true
                    forwarder.listening.succeed(port)
                case .failure(let error):
                    forwarder.channel.fail(.local(
                        "Cannot listen on \(forwarder.options.bindHost):\(forwarder.options.localPort): \(error). Choose another local port."))
                }
            }
    }

    public func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool { true }
    public func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType) {}
    public func dataChannelDidBecomeWritable(_ channel: DataChannel) {}
    public func dataChannel(_ channel: DataChannel, customerMessage: String) { self.notice(customerMessage + "\n") }

    public func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?) {
        self.finish(error)
    }

    var finished = false
    var isListening = false

    func finish(_ error: DataChannelError?) {
        guard !self.finished else { return }
        self.finished = true
        var error = error
        // After our TerminateSession flag, the service closing the channel is the expected end.
        if self.terminating, case .closedByService? = error { error = nil }
        self.listener?.close(promise: nil)
        self.listener = nil
        if !self.isListening { self.listening.fail(error ?? DataChannelError.closed) }
        self.ended.succeed(error)
    }
}

/// Basic port forwarding (reference 7.4.4): the session is one byte stream, so local connections
/// take turns; a local EOF sends DisconnectToPort and the next waiting connection goes on.
final class BasicPortBridge: DataChannelDelegate {
    let channel: DataChannel
    let notice: NoticeSink
    var current: (any Channel)?
    var waiting: [any Channel] = []
    var onClose: ((DataChannelError?) -> Void)?
    var pendingInput: ByteBuffer?
    static let maximumWaiting = 64

    init(channel: DataChannel, notice: @escaping NoticeSink) {
        self.channel = channel
        self.notice = notice
        channel.delegate = self
    }

    func accept(_ child: any Channel) {
        guard self.waiting.count < Self.maximumWaiting,
            (try? child.pipeline.syncOperations.addHandler(BasicConnectionHandler(bridge: self))) != nil
        else {
            child.close(promise: nil)
            return
        }
        if self.current == nil { self.current = child } else { self.waiting.append(child) }
        // A connection that closes before it ever became active hears no channelInactive.
        child.closeFuture.assumeIsolated().whenComplete { _ in self.localClosed(child) }
    }

    /// The next waiting connection gets the byte stream (closed ones have left `waiting`). An
    /// accepted connection becomes active a tick after it is handed over, so the next one may not
    /// be active yet: its `channelActive` then starts the reads. (Skipping such a connection
    /// orphaned it: neither current nor waiting, never read, its client waiting forever.)
    func attachNext() {
        guard !self.waiting.isEmpty else { return }
        let child = self.waiting.removeFirst()
        self.current = child
        if child.isActive { child.read() }
    }

    /// Called by the connection's handler with what the local side sent.
    func localData(_ buffer: ByteBuffer) {
        var buffer = buffer
        if self.pendingInput != nil {
            self.pendingInput!.writeBuffer(&buffer)
            return
        }
        self.channel.send(splitting: &buffer)
        if buffer.readableBytes > 0 {
            self.pendingInput = buffer
        } else {
            self.current?.read()
        }
    }

    func localClosed(_ child: any Channel) {
        guard child === self.current else {
            self.waiting.removeAll { $0 === child }
            return
        }
        self.current = nil
        self.pendingInput = nil
        self.channel.send(PortFlag.disconnectToPort.encoded(), type: .flag)
        self.attachNext()
    }

    func terminate() {
        if AgentVersion(self.channel.session?.agentVersion ?? "").takesTerminateFlag {
            self.channel.send(PortFlag.terminateSession.encoded(), type: .flag)
        }
        self.channel.closeWhenAcknowledged()
    }

    func dataChannel(_ channel: DataChannel, didStart session: StartedSession) {}

    func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool {
        self.current?.isWritable ?? false
    }

    func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType) {
        guard type == .output else { return }
        self.current?.writeAndFlush(payload, promise: nil)
    }

    func dataChannelDidBecomeWritable(_ channel: DataChannel) {
        if let pending = self.pendingInput {
            self.pendingInput = nil
            self.localData(pending)
        }
    }

    func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?) {
        self.current?.close(promise: nil)
        for child in self.waiting { child.close(promise: nil) }
        self.waiting = []
        self.onClose?(error)
    }
}

final class BasicConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let bridge: BasicPortBridge

    init(bridge: BasicPortBridge) { self.bridge = bridge }

    func channelActive(context: ChannelHandlerContext) {
        // Reads are manual (autoRead off): the first one once the socket is up.
        if context.channel === self.bridge.current { context.read() }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.bridge.localData(self.unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.bridge.localClosed(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
