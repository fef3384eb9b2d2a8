import NIOCore
import Relay
import Synchronization

/// The meeting point of one relayed channel: two rings between the session thread and the
/// destination's event loop, and the wake-ups each side uses to tell the other to look.
final class SSHChannelRelay: Sendable {
    /// Client → destination; the session thread writes, the event loop reads.
    let toDestination: ByteRing
    /// Destination → client; the event loop writes, the session thread reads.
    let toClient: ByteRing
    let eventLoop: any EventLoop
    let route: RouteDescription
    private let sessionWakeup: WakeupFD
    private let adapter: NIOLoopBoundBox<SSHDestinationAdapter?>
    /// Coalesces wake-ups of the event loop: one `execute` in flight at a time.
    private let loopWakePending = Atomic<Bool>(false)
    private let destinationError = Mutex<String?>(nil)

    /// Call on `stream.eventLoop`: binds the stream to this relay as its delegate.
    init(stream: any DestinationStream, ringCapacity: Int, sessionWakeup: WakeupFD) {
        self.toDestination = ByteRing(capacity: ringCapacity)
        self.toClient = ByteRing(capacity: ringCapacity)
        self.eventLoop = stream.eventLoop
        self.route = stream.routeDescription
        self.sessionWakeup = sessionWakeup
        self.adapter = NIOLoopBoundBox(nil, eventLoop: stream.eventLoop)
        let adapter = SSHDestinationAdapter(stream: stream, relay: self)
        stream.delegate = adapter
        self.adapter.value = adapter
    }

    /// From the session thread: the event loop should move bytes (either ring changed).
    func wakeEventLoop() {
        guard !self.loopWakePending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        self.eventLoop.execute {
            self.loopWakePending.store(false, ordering: .releasing)
            self.adapter.value?.pump()
        }
    }

    /// From the event loop: the session thread should move bytes.
    func wakeSession() {
        self.sessionWakeup.signal()
    }

    func recordDestinationError(_ error: String) {
        self.destinationError.withLock { $0 = $0 ?? error }
    }

    var destinationErrorText: String? { self.destinationError.withLock { $0 } }

    /// From the session thread, once, when the channel is over: no more bytes either way; the
    /// destination is aborted unless it already closed, and the adapter lets go of the stream.
    func release() {
        self.toClient.closeForReading()
        self.toDestination.closeForWriting()
        self.eventLoop.execute {
            self.adapter.value?.finish()
            self.adapter.value = nil
        }
    }
}

/// The destination side of a relayed channel, confined to the stream's event loop: moves bytes
/// from the client ring into `DestinationStream.write` and from `destinationReceived` into the
/// client ring, holding the destination back while that ring is full.
final class SSHDestinationAdapter: DestinationStreamDelegate {
    /// Largest chunk taken from the ring per write: bounds what sits in one ByteBuffer.
    static let chunk = 64 * 1024

    private var stream: (any DestinationStream)?
    private unowned let relay: SSHChannelRelay
    /// Bytes read from the ring that the stream has not taken yet (its buffer was full).
    private var pending: ByteBuffer
    /// Bytes the destination delivered while the client ring was full; at most one read's worth,
    /// since `destinationCanReceive` is false meanwhile.
    private var overflow: ByteBuffer?
    private var finishedWriting = false
    private var destinationDone = false
    private var receivePaused = false

    init(stream: any DestinationStream, relay: SSHChannelRelay) {
        self.stream = stream
        self.relay = relay
        self.pending = ByteBufferAllocator().buffer(capacity: 0)
    }

    /// Moves whatever can move now, in both directions.
    func pump() {
        guard let stream = self.stream else { return }
        var consumed = false
        while true {
            if self.pending.readableBytes > 0 {
                let taken = stream.write(self.pending)
                self.pending.moveReaderIndex(forwardBy: min(taken, self.pending.readableBytes))
                if self.pending.readableBytes > 0 { break }  // resumes on destinationWritable
            }
            self.pending.clear()
            if self.relay.toDestination.read(into: &self.pending, maximumBytes: Self.chunk) == 0 {
                if !self.finishedWriting, self.relay.toDestination.isDrained {
                    self.finishedWriting = true
                    stream.finishWriting()
                }
                break
            }
            consumed = true
        }
        if consumed { self.relay.wakeSession() }

        if var overflow = self.overflow {
            let taken = self.relay.toClient.write(from: &overflow)
            if taken == nil || overflow.readableBytes == 0 { self.overflow = nil } else { self.overflow = overflow }
            if (taken ?? 0) > 0 { self.relay.wakeSession() }
        }
        if self.destinationDone, self.overflow == nil, !self.relay.toClient.isClosedForWriting {
            self.relay.toClient.closeForWriting()
            self.relay.wakeSession()
        }
        if self.receivePaused, self.overflow == nil, self.relay.toClient.writableBytes > 0 {
            self.receivePaused = false
            stream.resumeReceiving()
        }
    }

    /// The channel is over (from the session thread, via the loop).
    func finish() {
        if !self.destinationDone { self.stream?.abort() }
        self.destinationDone = true
        self.stream = nil
        self.overflow = nil
    }

    func destinationReceived(_ data: ByteBuffer) {
        var data = data
        if self.overflow != nil {
            self.overflow!.writeBuffer(&data)
            return
        }
        guard let taken = self.relay.toClient.write(from: &data) else { return }  // the client is gone
        if taken > 0 { self.relay.wakeSession() }
        if data.readableBytes > 0 { self.overflow = data }
    }

    func destinationWritable() {
        self.pump()
    }

    func destinationClosed(error: String?) {
        guard !self.destinationDone else { return }
        if let error { self.relay.recordDestinationError(error) }
        self.destinationDone = true
        self.pump()
        // A closed destination takes no more: let the session thread discard what the client sends.
        self.relay.toDestination.closeForReading()
        self.relay.wakeSession()
    }

    /// False while the client ring is full; remembering that we said so lets `pump` resume the
    /// destination once the session thread has drained the ring.
    var destinationCanReceive: Bool {
        let can = self.overflow == nil && self.relay.toClient.writableBytes > 0
        if !can { self.receivePaused = true }
        return can
    }
}

@available(*, unavailable)
extension SSHDestinationAdapter: Sendable {}
