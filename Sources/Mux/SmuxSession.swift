import NIOCore
import SSMProtocol

/// One end of an smux (xtaci/smux protocol v1) session, as a pure state machine.
///
/// It does no I/O and reads no clock, so the same engine runs the gateway's client side and the
/// agent simulator's server side, on their event loops, and in plain unit tests. The smux bytes
/// travel inside Session Manager data messages of at most 1024 payload bytes and frames are not
/// aligned to them, so both directions are byte streams:
///
/// * feed every received payload, in order, to ``receive(_:into:)`` and act on the ``SmuxEvent``s;
/// * after ``openStream()``, ``write(_:to:)``, ``closeStream(_:)`` or ``queueKeepAlive()``, call
///   ``nextOutbound(maximumBytes:)`` while ``hasPendingOutbound`` and send each result as one message.
///
/// Output is scheduled by deficit round robin over the streams with queued data, so a few
/// interactive bytes never wait behind a bulk transfer for more than about one quantum per busy stream.
///
/// - Important: loop-confined; not `Sendable`.
public struct SmuxSession {
    /// Which end: it fixes the parity of the stream ids this side opens.
    public enum Role: Hashable, Sendable {
        /// Opens streams 3, 5, 7, … (the session-manager-plugin side).
        case client
        /// Opens streams 2, 4, 6, … (the agent side; the official agent never opens any).
        case server
    }

    /// Outcome of ``SmuxSession/write(_:to:)``.
    public enum WriteResult: Hashable, Sendable {
        /// This many bytes from the front of the data were queued; fewer than offered means the
        /// stream's send buffer is full: keep the rest and wait for ``SmuxSession/drainWritableStreams()``.
        case accepted(Int)
        /// ``SmuxSession/closeStream(_:)`` was already called for this stream.
        case streamClosed
        /// No such stream (never opened, refused, or already fully closed).
        case unknownStream
        /// The session failed (see ``SmuxSession/failure``).
        case sessionFailed
    }

    /// Where a live stream is in its close handshake. A stream is removed once FINs went both ways.
    public enum StreamState: Hashable, Sendable {
        case open
        /// ``SmuxSession/closeStream(_:)`` was called; our FIN is queued or sent.
        case localClosed
        /// The peer's FIN arrived; we may still write.
        case remoteClosed
        /// Both closed; our FIN is still queued behind data.
        case closing
    }

    /// Payload byte counts of one stream, for metrics.
    public struct StreamCounters: Hashable, Sendable {
        /// Payload bytes handed out by `nextOutbound`.
        public var bytesSent: Int
        /// Payload bytes delivered in `.data` events.
        public var bytesReceived: Int

        public init(bytesSent: Int = 0, bytesReceived: Int = 0) {
            self.bytesSent = bytesSent
            self.bytesReceived = bytesReceived
        }
    }

    /// A snapshot of one live stream.
    public struct StreamInfo: Hashable, Sendable {
        public var state: StreamState
        public var counters: StreamCounters
        /// Bytes accepted by `write` and not yet handed out by `nextOutbound`.
        public var queuedBytes: Int

        public init(state: StreamState, counters: StreamCounters, queuedBytes: Int) {
            self.state = state
            self.counters = counters
            self.queuedBytes = queuedBytes
        }
    }

    /// A stream that was removed after FINs went both ways, with its final counters.
    public struct FinishedStream: Hashable, Sendable {
        public var id: SmuxStreamID
        public var counters: StreamCounters

        public init(id: SmuxStreamID, counters: StreamCounters) {
            self.id = id
            self.counters = counters
        }
    }

    /// Session-wide counters, for metrics.
    public struct Statistics: Hashable, Sendable {
        /// smux bytes given to `receive`.
        public internal(set) var bytesReceived = 0
        /// smux bytes handed out by `nextOutbound`.
        public internal(set) var bytesSent = 0
        public internal(set) var framesReceived = 0
        public internal(set) var keepAlivesReceived = 0
        /// SYNs for a stream id that is already live (ignored, as in smux).
        public internal(set) var duplicateSYNs = 0
        /// Peer SYNs refused because ``SmuxConfiguration/maximumStreams`` streams were live.
        public internal(set) var refusedStreams = 0
        /// PSH frames for an unknown stream or after the peer's FIN (read and dropped, as in smux).
        public internal(set) var droppedDataFrames = 0
        public internal(set) var droppedDataBytes = 0
        /// Version-2 UPD frames (only accepted when configured; ignored).
        public internal(set) var windowUpdatesIgnored = 0
    }

    /// What the caller should do after ``SmuxSession/keepAliveCheck(now:)``.
    public enum KeepAliveAction: Hashable, Sendable {
        /// Keepalive is off for this session.
        case disabled
        /// Nothing due; check again at this deadline.
        case wait(until: NIODeadline)
        /// A NOP was queued: flush with `nextOutbound`, then check again at the deadline.
        case keepAliveQueued(nextCheck: NIODeadline)
        /// The session is dead (a keepalive timeout detected now, or an earlier failure): close it.
        case sessionFailed(SmuxSessionError)
    }

    public let role: Role
    public let configuration: SmuxConfiguration
    /// Set once a protocol error or keepalive timeout ended the session; every later call reports it.
    public internal(set) var failure: SmuxSessionError?
    public internal(set) var statistics = Statistics()

    // MARK: Streams
    var streams: [SmuxStreamID: SmuxStreamState] = [:]
    /// The last id this side used; the next open adds 2 first (smux: client starts at 1, server at 0).
    var lastLocalStreamID: UInt32
    var streamIDsExhausted = false

    // MARK: Inbound
    var decoder: SmuxFrameDecoder
    var inbound: InboundState = .header
    /// Up to 7 header bytes of a frame whose header straddles two inputs.
    var inboundHeader: ByteBuffer
    var receivedFrameSinceKeepAliveCheck = false
    var keepAliveDeadlines: (ping: NIODeadline, timeout: NIODeadline)?

    // MARK: Outbound
    /// SYN, NOP and refusal FINs: sent before any stream data, in order.
    var control = CircularBuffer<ControlFrame>(initialCapacity: 8)
    var keepAliveQueued = false
    var queuedRefusals = 0
    /// Streams with something to schedule, in round-robin order; the head is the one whose turn it is.
    var active = CircularBuffer<SmuxStreamID>(initialCapacity: 8)
    /// The frame being written; it may straddle `nextOutbound` calls.
    var frameInProgress: OutboundFrame?
    /// The header of `frameInProgress` when it did not fit whole into one output.
    var outboundHeader: ByteBuffer
    var writableStreams: [SmuxStreamID] = []
    var finishedStreams: [FinishedStream] = []
    let allocator = ByteBufferAllocator()

    /// - Precondition: `configuration.validate()` succeeds; validate user-supplied values first.
    public init(role: Role, configuration: SmuxConfiguration = SmuxConfiguration()) {
        do {
            try configuration.validate()
        } catch {
            preconditionFailure("\(error)")
        }
        self.role = role
        self.configuration = configuration
        self.lastLocalStreamID = role == .client ? 1 : 0
        self.decoder = SmuxFrameDecoder(acceptedVersions: configuration.acceptedVersions)
        self.inboundHeader = self.allocator.buffer(capacity: SmuxFrame.headerSize)
        self.outboundHeader = self.allocator.buffer(capacity: SmuxFrame.headerSize)
    }
}

@available(*, unavailable)
extension SmuxSession: Sendable {}

// MARK: - Streams

extension SmuxSession {
    /// Opens a stream: queues its SYN (ahead of any stream data) and returns its id.
    public mutating func openStream() throws(SmuxSessionError) -> SmuxStreamID {
        if let failure = self.failure { throw failure }
        guard self.streams.count < self.configuration.maximumStreams else {
            throw .tooManyStreams(self.configuration.maximumStreams)
        }
        var id: SmuxStreamID
        repeat {
            // smux: `if nextStreamID+2 < nextStreamID { goAway }`: ids are never reused.
            let (next, overflow) = self.lastLocalStreamID.addingReportingOverflow(2)
            guard !overflow, !self.streamIDsExhausted else {
                self.streamIDsExhausted = true
                throw .streamIDsExhausted()
            }
            self.lastLocalStreamID = next
            id = SmuxStreamID(next)
        } while self.streams[id] != nil  // the peer opened this id itself (smux never checks parity)
        self.streams[id] = SmuxStreamState()
        self.control.append(.syn(id))
        return id
    }

    /// Queues data on a stream, at most the free space of its send buffer.
    ///
    /// Writing after the peer's FIN is allowed (half-close, as in smux), but a FIN from the official
    /// agent means it already closed the destination: data written after it is lost.
    /// - Returns: how much was taken; the caller keeps the rest (backpressure).
    public mutating func write(_ data: ByteBuffer, to id: SmuxStreamID) -> WriteResult {
        guard self.failure == nil else { return .sessionFailed }
        guard let index = self.streams.index(forKey: id) else { return .unknownStream }
        guard !self.streams.values[index].finQueued else { return .streamClosed }
        let accepted = self.streams.values[index].enqueue(data, limit: self.configuration.perStreamSendBufferLimit)
        if accepted > 0 {
            self.activate(at: index, id)
        }
        return .accepted(accepted)
    }

    /// Queues the stream's FIN behind its queued data. Only the first call does anything.
    /// - Returns: whether a FIN was queued.
    @discardableResult
    public mutating func closeStream(_ id: SmuxStreamID) -> Bool {
        guard self.failure == nil, let index = self.streams.index(forKey: id),
            !self.streams.values[index].finQueued
        else { return false }
        self.streams.values[index].finQueued = true
        self.streams.values[index].wantsWritable = false
        self.activate(at: index, id)
        return true
    }

    /// Queues a NOP ahead of stream data; one pending NOP at most.
    public mutating func queueKeepAlive() {
        guard self.failure == nil, !self.keepAliveQueued else { return }
        self.keepAliveQueued = true
        self.control.append(.nop)
    }

    /// Free space in the stream's send buffer; 0 when the stream is unknown or closed by us.
    public func sendBufferFree(_ id: SmuxStreamID) -> Int {
        guard self.failure == nil, let stream = self.streams[id], !stream.finQueued else { return 0 }
        return self.configuration.perStreamSendBufferLimit - stream.queuedBytes
    }

    /// A snapshot of a live stream, or `nil` once it is gone.
    public func streamInfo(_ id: SmuxStreamID) -> StreamInfo? {
        guard let stream = self.streams[id] else { return nil }
        return StreamInfo(state: stream.publicState, counters: stream.counters, queuedBytes: stream.queuedBytes)
    }

    /// Live streams, counted against ``SmuxConfiguration/maximumStreams`` (the Pool's load figure).
    public var streamCount: Int { self.streams.count }

    /// Streams whose refused writes can now go on: they drained to half their send buffer limit
    /// since a write was cut short. Each such episode is reported once.
    public mutating func drainWritableStreams() -> [SmuxStreamID] {
        guard !self.writableStreams.isEmpty else { return [] }
        defer { self.writableStreams.removeAll(keepingCapacity: true) }
        return self.writableStreams.filter { self.streams[$0].map { !$0.finQueued } ?? false }
    }

    /// Streams removed since the last call (FINs went both ways), with their final counters.
    /// Kept until drained: call it after `receive` and `nextOutbound`.
    public mutating func drainFinishedStreams() -> [FinishedStream] {
        guard !self.finishedStreams.isEmpty else { return [] }
        defer { self.finishedStreams.removeAll(keepingCapacity: true) }
        return self.finishedStreams
    }
}

// MARK: - Keepalive

extension SmuxSession {
    /// smux's keepalive rule, driven by the caller's clock: a NOP every interval, and the session
    /// fails when no frame at all arrived during a whole timeout window. The first call starts both
    /// timers; call again at the returned deadline.
    ///
    /// Unlike smux (which skips the check while its receive buffer is full), this cannot know that the
    /// caller stopped reading: keep feeding `receive`, or don't call this while paused.
    public mutating func keepAliveCheck(now: NIODeadline) -> KeepAliveAction {
        if let failure = self.failure { return .sessionFailed(failure) }
        guard let keepAlive = self.configuration.keepAlive else { return .disabled }
        guard var deadlines = self.keepAliveDeadlines else {
            self.keepAliveDeadlines = (now + keepAlive.interval, now + keepAlive.timeout)
            self.receivedFrameSinceKeepAliveCheck = false
            return .wait(until: min(now + keepAlive.interval, now + keepAlive.timeout))
        }
        if now >= deadlines.timeout {
            guard self.receivedFrameSinceKeepAliveCheck else {
                let failure = SmuxSessionError.keepAliveTimeout(keepAlive.timeout.nanoseconds)
                self.fail(failure)
                return .sessionFailed(failure)
            }
            self.receivedFrameSinceKeepAliveCheck = false
            deadlines.timeout = Self.nextTick(after: now, from: deadlines.timeout, every: keepAlive.timeout)
        }
        var queued = false
        if now >= deadlines.ping {
            self.queueKeepAlive()
            queued = true
            deadlines.ping = Self.nextTick(after: now, from: deadlines.ping, every: keepAlive.interval)
        }
        self.keepAliveDeadlines = deadlines
        let next = min(deadlines.ping, deadlines.timeout)
        return queued ? .keepAliveQueued(nextCheck: next) : .wait(until: next)
    }

    /// Like a Go ticker: missed ticks are skipped, not replayed.
    private static func nextTick(
        after now: NIODeadline,
        from tick: NIODeadline,
        every period: TimeAmount
    ) -> NIODeadline {
        let missed = (now - tick).nanoseconds / period.nanoseconds
        return tick + .nanoseconds(period.nanoseconds * (missed + 1))
    }
}

// MARK: - Internals

extension SmuxSession {
    /// Puts a stream at the tail of the round robin if it is not in it.
    mutating func activate(at index: Dictionary<SmuxStreamID, SmuxStreamState>.Index, _ id: SmuxStreamID) {
        guard !self.streams.values[index].isActive else { return }
        self.streams.values[index].isActive = true
        self.streams.values[index].inTurn = false
        self.streams.values[index].deficit = 0
        self.active.append(id)
    }

    /// Ends the session: remembers the error and releases every queued buffer.
    mutating func fail(_ error: SmuxSessionError) {
        guard self.failure == nil else { return }
        self.failure = error
        self.streams.removeAll()
        self.active.removeAll()
        self.control.removeAll()
        self.frameInProgress = nil
        self.writableStreams.removeAll()
        self.inbound = .header
        self.inboundHeader.clear()
    }

    /// Removes a stream whose FINs went both ways.
    mutating func finish(_ id: SmuxStreamID) {
        guard let stream = self.streams.removeValue(forKey: id) else { return }
        self.finishedStreams.append(FinishedStream(id: id, counters: stream.counters))
    }
}
