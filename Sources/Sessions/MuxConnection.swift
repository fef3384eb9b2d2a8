import DataChannel
import Mux
import NIOCore
import SSMProtocol

/// The local end of one smux stream: a TCP socket, an SSH channel, a pipe.
///
/// Calls arrive on the connection's event loop.
public protocol MuxStreamPeer: AnyObject {
    /// Bytes from the destination, in order.
    func muxStreamReceived(_ data: ByteBuffer)
    /// The agent's FIN: the destination connection is gone (the agent never half-closes).
    func muxStreamClosedByAgent()
    /// The stream's send buffer has room again after a short write.
    func muxStreamWritable()
    /// The agent could not reach the destination (ConnectToPortError), or the session ended.
    func muxStreamFailed(_ reason: String)
    /// Whether the peer can take more destination bytes now; false holds back the whole session
    /// (smux v1 has no per-stream window) until it can.
    var muxStreamCanReceive: Bool { get }
}

/// Many TCP connections over one port session in mux mode: the smux client of reference 7.4.5
/// on top of a `DataChannel`, with fair per-stream scheduling (deficit round robin in `SmuxSession`)
/// and a bounded send buffer per stream, so an interactive stream never waits behind a bulk one.
///
/// Lives on the data channel's event loop; not thread-safe.
public final class MuxConnection: DataChannelDelegate {
    public let channel: DataChannel
    var smux: SmuxSession
    var peers: [SmuxStreamID: any MuxStreamPeer] = [:]
    var keepAliveTask: Scheduled<Void>?
    var closed = false
    var events: [SmuxEvent] = []
    /// Streams inside `write` (nested when one peer's notification makes another write). A stream
    /// that drains while its own write is still running hears `muxStreamWritable` on the next tick:
    /// its peer has not yet kept the bytes the write did not take, and a notification now would
    /// find nothing waiting and be lost, or send what is waiting twice.
    var streamsInWrite: [SmuxStreamID] = []
    var deferredWritable: Set<SmuxStreamID> = []
    /// Called once when the session ends, with the reason (nil: closed by us).
    public var onClose: ((DataChannelError?) -> Void)?
    /// Called with user-facing notices (ConnectToPortError, customer messages).
    public var onNotice: ((String) -> Void)?

    /// Streams opened so far and bytes moved, for metrics and audit.
    public private(set) var streamsOpened = 0

    /// Takes over a data channel whose session has started as Port in mux mode.
    public init(channel: DataChannel, session: StartedSession) {
        self.channel = channel
        var configuration = SmuxConfiguration()
        // Agents after 3.1.1511.0 turn smux keepalive off on their side; so do we (reference 8.3).
        if AgentVersion(session.agentVersion).isGreater(than: "3.1.1511.0") { configuration.keepAlive = nil }
        self.smux = SmuxSession(role: .client, configuration: configuration)
        channel.delegate = self
        self.scheduleKeepAlive()
    }

    public var streamCount: Int { self.peers.count }
    public var isClosed: Bool { self.closed }

    /// Opens a stream (its SYN goes out with the next data) and attaches the local peer.
    public func openStream(peer: any MuxStreamPeer) throws -> SmuxStreamID {
        guard !self.closed else { throw DataChannelError.closed }
        let id = try self.smux.openStream()
        self.peers[id] = peer
        self.streamsOpened += 1
        self.pump()
        return id
    }

    /// Queues bytes for the stream; returns how many were taken (fewer when its buffer is full:
    /// keep the rest, stop reading, and wait for `muxStreamWritable`).
    public func write(_ data: ByteBuffer, to id: SmuxStreamID) -> Int {
        switch self.smux.write(data, to: id) {
        case .accepted(let count):
            self.streamsInWrite.append(id)
            self.pump()
            self.streamsInWrite.removeLast()
            if !self.streamsInWrite.contains(id), self.deferredWritable.remove(id) != nil {
                self.channel.eventLoop.assumeIsolated().execute {
                    guard !self.closed else { return }
                    self.peers[id]?.muxStreamWritable()
                }
            }
            return count
        case .streamClosed, .unknownStream, .sessionFailed:
            return data.readableBytes
        }
    }

    /// Sends FIN after what is queued; the peer is forgotten once the agent's FIN arrives.
    public func closeStream(_ id: SmuxStreamID) {
        _ = self.smux.closeStream(id)
        self.pump()
    }

    /// Drops the stream's peer without waiting for the agent (the local side is gone).
    public func abandonStream(_ id: SmuxStreamID) {
        _ = self.smux.closeStream(id)
        self.peers[id] = nil
        self.pump()
    }

    public func sendBufferFree(_ id: SmuxStreamID) -> Int { self.smux.sendBufferFree(id) }

    /// Ends the session: the in-band TerminateSession flag first (as the official client does on
    /// exit), then the channel closes once that flag is acknowledged or after a short grace.
    public func terminate(grace: TimeAmount = .seconds(2)) {
        guard !self.closed else { return }
        for (_, peer) in self.peers { peer.muxStreamFailed("the session is ending") }
        self.peers = [:]
        self.pump()
        self.channel.send(PortFlag.terminateSession.encoded(), type: .flag)
        self.channel.closeWhenAcknowledged(within: grace)
    }

    // MARK: Output scheduling

    /// Cuts smux bytes into data messages while the channel takes them; wakes stalled streams.
    func pump() {
        guard !self.closed else { return }
        let size = self.channel.maximumPayloadSize
        // Only mutating calls on `smux` here: a getter on a struct stored in a class, called across
        // modules, copies the whole struct (every reference in it retained and released) per message.
        while self.channel.isWritable, let payload = self.smux.nextOutbound(maximumBytes: size) {
            self.channel.send(payload, type: .output)
        }
        // Cheap when nothing paces the channel; with a rate limit, at worst one wake finds nothing to send.
        if !self.channel.isWritable { self.channel.requestWritabilityNotification() }
        for id in self.smux.drainWritableStreams() {
            if self.streamsInWrite.contains(id) {
                self.deferredWritable.insert(id)
            } else {
                self.peers[id]?.muxStreamWritable()
            }
        }
        for finished in self.smux.drainFinishedStreams() { self.peers[finished.id] = nil }
    }

    func scheduleKeepAlive() {
        guard !self.closed else { return }
        switch self.smux.keepAliveCheck(now: .now()) {
        case .disabled:
            return
        case .wait(let next), .keepAliveQueued(let next):
            self.pump()
            self.keepAliveTask = self.channel.eventLoop.assumeIsolated().scheduleTask(deadline: next) { self.scheduleKeepAlive() }
        case .sessionFailed(let error):
            self.onNotice?("The session's stream multiplexer failed: \(error)")
            self.channel.close()
        }
    }

    // MARK: DataChannelDelegate

    public func dataChannel(_ channel: DataChannel, didStart session: StartedSession) {}

    public func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool {
        for peer in self.peers.values where !peer.muxStreamCanReceive { return false }
        return true
    }

    public func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType) {
        switch type {
        case .output:
            self.events.removeAll(keepingCapacity: true)
            do {
                try self.smux.receive(payload, into: &self.events)
            } catch {
                self.onNotice?("The agent's stream multiplexer failed: \(error)")
                self.channel.close()
                return
            }
            for event in self.events {
                switch event {
                case .data(let id, let data):
                    self.peers[id]?.muxStreamReceived(data)
                case .streamClosedByPeer(let id):
                    if let peer = self.peers[id] {
                        // The agent closed the destination: our side of the stream ends too.
                        _ = self.smux.closeStream(id)
                        peer.muxStreamClosedByAgent()
                    }
                case .streamOpened, .streamRefused, .keepAlive:
                    break
                }
            }
            self.pump()
        case .flag:
            if (try? PortFlag(decoding: payload)) == .connectToPortError {
                self.onNotice?("Connection to destination port failed, check SSM Agent logs.")
            }
        default:
            break
        }
    }

    public func dataChannelDidBecomeWritable(_ channel: DataChannel) {
        self.pump()
    }

    public func dataChannel(_ channel: DataChannel, customerMessage: String) {
        self.onNotice?(customerMessage)
    }

    public func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?) {
        guard !self.closed else { return }
        self.closed = true
        self.keepAliveTask?.cancel()
        let peers = self.peers
        self.peers = [:]
        let reason = error?.description ?? "the session was closed"
        for (_, peer) in peers { peer.muxStreamFailed(reason) }
        self.onClose?(error)
    }
}
