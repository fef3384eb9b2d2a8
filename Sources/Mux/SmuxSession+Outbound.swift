import NIOCore
import SSMProtocol

/// Session-level frames that are sent ahead of stream data.
enum ControlFrame {
    /// A stream we opened. Sent before any stream data, so it always precedes that stream's PSH.
    case syn(SmuxStreamID)
    case nop
    /// Refuses a peer stream that exceeded the stream limit.
    case refusalFIN(SmuxStreamID)
}

/// The frame currently being written into the output byte stream.
struct OutboundFrame {
    var command: SmuxFrame.Command
    var streamID: SmuxStreamID
    var length: Int
    /// Header bytes already written (0...8).
    var headerWritten = 0
    /// Payload bytes still to copy from the stream's queue.
    var payloadRemaining: Int
    /// A stream's own FIN (not a refusal): completing it marks the stream's FIN as sent.
    var closesStream: Bool

    init(command: SmuxFrame.Command, streamID: SmuxStreamID, length: Int = 0, closesStream: Bool = false) {
        self.command = command
        self.streamID = streamID
        self.length = length
        self.payloadRemaining = length
        self.closesStream = closesStream
    }
}

extension SmuxSession {
    /// Whether ``nextOutbound(maximumBytes:)`` has bytes to hand out.
    public var hasPendingOutbound: Bool {
        self.failure == nil && (self.frameInProgress != nil || !self.control.isEmpty || !self.active.isEmpty)
    }

    /// The next piece of the outbound smux byte stream, at most `maximumBytes` long (fill one data
    /// message with it), or `nil` when nothing is pending.
    ///
    /// Order: the rest of a frame begun by the previous call; then control frames (SYN, NOP,
    /// refusal FIN) in the order queued; then stream frames by deficit round robin: each turn a
    /// stream gets ``SmuxConfiguration/quantum`` wire bytes, sent as PSH frames of at most
    /// min(maximumFrameSize, remaining deficit - 8) payload bytes, and its FIN once all its data is
    /// scheduled. Frames are not cut to `maximumBytes`: one that does not fit continues in the next call.
    public mutating func nextOutbound(maximumBytes: Int) -> ByteBuffer? {
        guard maximumBytes > 0, self.hasPendingOutbound else { return nil }
        var output = self.allocator.buffer(capacity: min(maximumBytes, 65536))
        let written = self.nextOutbound(into: &output, maximumBytes: maximumBytes)
        return written > 0 ? output : nil
    }

    /// Appends at most `maximumBytes` of the outbound byte stream to `buffer` (for instance straight
    /// into a message being built). Returns the number of bytes appended.
    @discardableResult
    public mutating func nextOutbound(into buffer: inout ByteBuffer, maximumBytes: Int) -> Int {
        guard self.failure == nil, maximumBytes > 0 else { return 0 }
        var space = maximumBytes
        while space > 0 {
            if self.frameInProgress != nil {
                self.continueFrame(into: &buffer, space: &space)
            } else if !self.control.isEmpty {
                self.startControlFrame(self.control.removeFirst())
            } else if let id = self.active.first {
                self.scheduleTurn(of: id)
            } else {
                break
            }
        }
        let written = maximumBytes - space
        self.statistics.bytesSent += written
        return written
    }
}

extension SmuxSession {
    private mutating func startControlFrame(_ control: ControlFrame) {
        switch control {
        case .syn(let id):
            self.frameInProgress = OutboundFrame(command: .syn, streamID: id)
        case .nop:
            self.keepAliveQueued = false
            self.frameInProgress = OutboundFrame(command: .nop, streamID: SmuxStreamID(0))
        case .refusalFIN(let id):
            self.queuedRefusals -= 1
            self.frameInProgress = OutboundFrame(command: .fin, streamID: id)
        }
    }

    /// One deficit-round-robin step for the stream at the head of the active list: assign its next
    /// frame, or pass the turn on.
    private mutating func scheduleTurn(of id: SmuxStreamID) {
        let header = SmuxFrame.headerSize
        guard let index = self.streams.index(forKey: id) else {
            // Cannot happen (a stream leaves the list before it can be removed); heal anyway.
            self.active.removeFirst()
            return
        }
        if !self.streams.values[index].inTurn {
            self.streams.values[index].inTurn = true
            self.streams.values[index].deficit += self.configuration.quantum
        }
        let stream = self.streams.values[index]
        if stream.unscheduledBytes > 0 {
            guard stream.deficit > header else {
                // Turn used up: to the back of the line, keeping the few bytes of deficit left.
                self.streams.values[index].inTurn = false
                self.active.removeFirst()
                self.active.append(id)
                return
            }
            let length = min(stream.unscheduledBytes, self.configuration.maximumFrameSize, stream.deficit - header)
            self.streams.values[index].unscheduledBytes -= length
            self.streams.values[index].deficit -= header + length
            self.frameInProgress = OutboundFrame(command: .psh, streamID: id, length: length)
        } else if stream.finQueued && !stream.finScheduled {
            // FIN rides in the stream's own turn, after all of its data.
            self.streams.values[index].finScheduled = true
            self.streams.values[index].deficit = max(0, stream.deficit - header)
            self.frameInProgress = OutboundFrame(command: .fin, streamID: id, closesStream: true)
        }
        if self.streams.values[index].hasNothingToSchedule {
            // Leave the list as soon as nothing is left, so `hasPendingOutbound` stays exact.
            self.streams.values[index].isActive = false
            self.streams.values[index].inTurn = false
            self.streams.values[index].deficit = 0
            self.active.removeFirst()
        }
    }

    /// Writes as much of the current frame as fits.
    private mutating func continueFrame(into output: inout ByteBuffer, space: inout Int) {
        guard var frame = self.frameInProgress else { return }
        let header = SmuxFrame.headerSize
        if frame.headerWritten == 0 && space >= header {
            self.writeHeader(of: frame, into: &output)
            frame.headerWritten = header
            space -= header
        } else if frame.headerWritten < header {
            if frame.headerWritten == 0 {
                self.outboundHeader.clear()
                self.writeHeader(of: frame, into: &self.outboundHeader)
            }
            var part = self.outboundHeader.readSlice(length: min(space, header - frame.headerWritten))!
            space -= part.readableBytes
            frame.headerWritten += part.readableBytes
            output.writeBuffer(&part)
        }
        if frame.headerWritten == header && frame.payloadRemaining > 0 && space > 0 {
            let count = min(space, frame.payloadRemaining)
            self.copyPayload(count, of: frame.streamID, into: &output)
            frame.payloadRemaining -= count
            space -= count
        }
        guard frame.headerWritten == header && frame.payloadRemaining == 0 else {
            self.frameInProgress = frame
            return
        }
        self.frameInProgress = nil
        if frame.closesStream, let index = self.streams.index(forKey: frame.streamID) {
            self.streams.values[index].finSent = true
            if self.streams.values[index].finReceived {
                self.finish(frame.streamID)
            }
        }
    }

    private func writeHeader(of frame: OutboundFrame, into buffer: inout ByteBuffer) {
        SmuxFrame.writeHeader(
            version: self.configuration.version,
            command: frame.command,
            length: UInt16(frame.length),
            streamID: frame.streamID.rawValue,
            into: &buffer
        )
    }

    private mutating func copyPayload(_ count: Int, of id: SmuxStreamID, into output: inout ByteBuffer) {
        guard let index = self.streams.index(forKey: id) else {
            preconditionFailure("smux stream \(id) vanished while its PSH frame was being written")
        }
        self.streams.values[index].dequeue(count, into: &output)
        let stream = self.streams.values[index]
        if stream.wantsWritable && stream.queuedBytes <= self.configuration.perStreamSendBufferLimit / 2 {
            self.streams.values[index].wantsWritable = false
            self.writableStreams.append(id)
        }
    }
}
