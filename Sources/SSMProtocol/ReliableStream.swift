import NIOCore

/// The sequencing, acknowledgement and retransmission rules of one side of a data channel.
///
/// Both Session Manager peers run the same design (reference section 5): stream messages are
/// numbered per direction, acknowledged one by one, buffered out of order, and the oldest
/// unacknowledged one is resent once its retransmission timeout passes. This is that design as
/// a pure state machine: the owner passes in the monotonic time and writes what it returns.
/// It records a message *before* it is written (so an early ack always finds it) and
/// acknowledges duplicates (so a peer's stale entry heals): traps 18 of the reference, fixed.
public struct ReliableStream: Sendable {
    public struct Configuration: Hashable, Sendable {
        /// Unacknowledged messages kept for resending. The owner stops producing when full.
        public var outgoingCapacity: Int
        /// Out-of-order messages kept until the gap fills; beyond it they are dropped unacknowledged.
        public var incomingCapacity: Int
        public var initialRTO: UInt64
        public var minimumRTOVariance: UInt64
        public var maximumRTO: UInt64

        /// The official agent's figures.
        public static let agent = Configuration(
            outgoingCapacity: 100_000, incomingCapacity: 100_000,
            initialRTO: 200_000_000, minimumRTOVariance: 10_000_000, maximumRTO: 1_000_000_000)
        /// The official client's figures.
        public static let client = Configuration(
            outgoingCapacity: 10_000, incomingCapacity: 10_000,
            initialRTO: 200_000_000, minimumRTOVariance: 10_000_000, maximumRTO: 1_000_000_000)
    }

    struct Outgoing: Sendable {
        var sequenceNumber: Int64
        var frame: ByteBuffer
        var firstSent: UInt64
        var lastSent: UInt64
        var resent: Bool
    }

    public let configuration: Configuration
    /// The sequence number the next outgoing stream message gets.
    public private(set) var nextOutgoingSequence: Int64 = 0
    /// The sequence number delivered next.
    public private(set) var expectedIncomingSequence: Int64 = 0
    private var outgoing = RingBuffer<Outgoing>()
    private var incoming: [Int64: AgentMessage] = [:]
    /// Smoothed round-trip time and its variance, in nanoseconds.
    public private(set) var roundTripTime: UInt64 = 100_000_000
    public private(set) var roundTripVariance: UInt64 = 0
    public private(set) var retransmissionTimeout: UInt64
    public private(set) var retransmissionCount: Int = 0

    public init(configuration: Configuration) {
        self.configuration = configuration
        self.retransmissionTimeout = configuration.initialRTO
    }

    public var unacknowledgedCount: Int { self.outgoing.count }
    public var canSend: Bool { self.outgoing.count < self.configuration.outgoingCapacity }
    public var bufferedIncomingCount: Int { self.incoming.count }
    /// The newest out-of-order message held, if any: a gap below it waits for the sender's resends.
    public var highestBufferedIncomingSequence: Int64? { self.incoming.keys.max() }

    // MARK: Sending

    /// Numbers, encodes and records a stream message; the caller writes the returned frame.
    ///
    /// Fails only for an empty payload. When the outgoing buffer is full the caller must wait
    /// for acknowledgements (`canSend`) rather than call this.
    public mutating func send(
        _ messageType: MessageType,
        payloadType: PayloadType,
        payload: ByteBuffer,
        messageID: MessageID,
        createdDate: UInt64,
        flags: AgentMessageFlags? = nil,
        now: UInt64,
        allocator: ByteBufferAllocator = ByteBufferAllocator()
    ) throws(AgentMessageError) -> ByteBuffer {
        let sequence = self.nextOutgoingSequence
        let message = AgentMessage(
            messageType: messageType,
            createdDate: createdDate,
            sequenceNumber: sequence,
            flags: flags ?? (sequence == 0 && messageType == .outputStreamData ? .syn : []),
            messageID: messageID,
            payloadType: payloadType,
            payload: payload
        )
        let frame = try message.encoded(allocator: allocator)
        self.nextOutgoingSequence += 1
        self.outgoing.append(Outgoing(sequenceNumber: sequence, frame: frame, firstSent: now, lastSent: now, resent: false))
        return frame
    }

    /// Removes the acknowledged message and updates the timeout estimate. Unknown sequence
    /// numbers are ignored, as both official peers do.
    @discardableResult
    public mutating func acknowledge(sequenceNumber: Int64, now: UInt64) -> Bool {
        guard let index = self.outgoing.firstIndex(where: { $0.sequenceNumber == sequenceNumber }) else { return false }
        let entry = self.outgoing.remove(at: index)
        // Karn: a resent message's round trip is ambiguous, so it does not feed the estimate.
        if !entry.resent {
            let sample = now >= entry.firstSent ? now - entry.firstSent : 0
            let difference = self.roundTripTime > sample ? self.roundTripTime - sample : sample - self.roundTripTime
            self.roundTripVariance = (self.roundTripVariance * 3 + difference) / 4
            self.roundTripTime = (self.roundTripTime * 7 + sample) / 8
            self.retransmissionTimeout = min(
                self.roundTripTime + max(self.configuration.minimumRTOVariance, 4 * self.roundTripVariance),
                self.configuration.maximumRTO
            )
        }
        return true
    }

    /// The oldest unacknowledged frame if its timeout has passed; only that one is ever resent.
    public mutating func retransmission(now: UInt64) -> ByteBuffer? {
        guard var oldest = self.outgoing.first, now >= oldest.lastSent, now - oldest.lastSent >= self.retransmissionTimeout else {
            return nil
        }
        oldest.lastSent = now
        oldest.resent = true
        self.outgoing.first = oldest
        self.retransmissionCount += 1
        return oldest.frame
    }

    /// When `retransmission(now:)` will next have something to send, if anything is outstanding.
    public var nextRetransmissionDeadline: UInt64? {
        self.outgoing.first.map { $0.lastSent + self.retransmissionTimeout }
    }

    /// Frames still unacknowledged, oldest first: resent after a reconnect.
    public var unacknowledgedFrames: [ByteBuffer] { self.outgoing.map(\.frame) }

    // MARK: Receiving

    public struct Reception: Sendable {
        /// The acknowledgement to send, if the message is to be acknowledged.
        public var acknowledgement: Acknowledgement?
        /// Messages now deliverable, in sequence order (the received one and any it unblocked).
        public var deliverable: Deliverable
    }

    /// The received message and any it unblocked. The usual case, one message in order, holds it
    /// inline: no array is made per message.
    public struct Deliverable: RandomAccessCollection, Sendable {
        var head: AgentMessage?
        var tail: [AgentMessage]

        static let none = Deliverable(head: nil, tail: [])

        public var startIndex: Int { 0 }
        public var endIndex: Int { self.head == nil ? 0 : 1 + self.tail.count }
        public subscript(position: Int) -> AgentMessage { position == 0 ? self.head! : self.tail[position - 1] }
    }

    /// Applies a received stream message.
    ///
    /// `ready` false means the consumer cannot take the next in-order message yet: it is neither
    /// acknowledged nor delivered, so the sender resends it later (the peers' "not ready").
    public mutating func receive(_ message: AgentMessage, ready: Bool = true) -> Reception {
        let sequence = message.sequenceNumber
        if sequence < self.expectedIncomingSequence {
            return Reception(acknowledgement: Acknowledgement(acknowledging: message), deliverable: .none)
        }
        if sequence > self.expectedIncomingSequence {
            if self.incoming[sequence] != nil {
                return Reception(acknowledgement: Acknowledgement(acknowledging: message), deliverable: .none)
            }
            guard self.incoming.count < self.configuration.incomingCapacity else {
                return Reception(acknowledgement: nil, deliverable: .none)
            }
            self.incoming[sequence] = message
            return Reception(acknowledgement: Acknowledgement(acknowledging: message), deliverable: .none)
        }
        guard ready else { return Reception(acknowledgement: nil, deliverable: .none) }
        var deliverable = Deliverable(head: message, tail: [])
        self.expectedIncomingSequence += 1
        if !self.incoming.isEmpty {
            deliverable.tail = self.drainBuffered()
        }
        return Reception(acknowledgement: Acknowledgement(acknowledging: message), deliverable: deliverable)
    }

    /// Delivers buffered messages that became in-order while the consumer was not ready.
    public mutating func drainBuffered() -> [AgentMessage] {
        var deliverable: [AgentMessage] = []
        while let next = self.incoming.removeValue(forKey: self.expectedIncomingSequence) {
            deliverable.append(next)
            self.expectedIncomingSequence += 1
        }
        return deliverable
    }
}

extension Acknowledgement {
    /// The complete `acknowledge` frame for this acknowledgement (seq 0, flags SYN|FIN, as both peers send).
    public func frame(messageID: MessageID, createdDate: UInt64, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var payload = allocator.buffer(capacity: 192)
        self.write(into: &payload)
        let message = AgentMessage(
            messageType: .acknowledge, createdDate: createdDate, sequenceNumber: 0, flags: .control,
            messageID: messageID, payloadType: .undefined, payload: payload)
        // The payload is never empty, so encoding cannot fail.
        return try! message.encoded(allocator: allocator)
    }
}
