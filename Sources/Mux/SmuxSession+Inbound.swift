import NIOCore
import SSMProtocol

/// Where the inbound byte stream is: between frames, or inside a frame's payload.
enum InboundState {
    case header
    case payload(SmuxStreamID, remaining: Int, PayloadSink)
}

/// What happens to the payload bytes of the current frame.
enum PayloadSink {
    /// PSH for a live stream: `.data` events.
    case deliver
    /// PSH for an unknown stream or after the peer's FIN: read and dropped, as smux does.
    case drop
    /// UPD body (v2 only, accepted for recognition): skipped.
    case skip
}

extension SmuxSession {
    /// Decodes smux bytes (one data message payload, any alignment) into events.
    ///
    /// Frame headers go through ``SmuxFrameDecoder`` (version, command and length checks). A PSH
    /// payload that continues into later inputs is delivered piece by piece as it arrives; only a
    /// header cut by an input boundary (at most 7 bytes) is buffered.
    /// - Throws: on bytes that are not smux; the session is then failed for good, as in smux
    ///   (events already appended describe frames before the bad one).
    public mutating func receive(_ bytes: ByteBuffer, into events: inout [SmuxEvent]) throws(SmuxSessionError) {
        if let failure = self.failure { throw failure }
        var input = bytes
        self.statistics.bytesReceived += input.readableBytes
        do {
            try self.decodeFrames(&input, into: &events)
        } catch {
            let failure = SmuxSessionError.protocolError(error)
            self.fail(failure)
            throw failure
        }
    }

    /// ``receive(_:into:)`` returning a fresh array.
    public mutating func receive(_ bytes: ByteBuffer) throws(SmuxSessionError) -> [SmuxEvent] {
        var events: [SmuxEvent] = []
        try self.receive(bytes, into: &events)
        return events
    }
}

extension SmuxSession {
    private mutating func decodeFrames(_ input: inout ByteBuffer, into events: inout [SmuxEvent]) throws(SmuxError) {
        while input.readableBytes > 0 {
            switch self.inbound {
            case .payload(let id, let remaining, let sink):
                let count = min(remaining, input.readableBytes)
                self.consume(input.readSlice(length: count)!, of: id, sink: sink, into: &events)
                self.inbound = count == remaining ? .header : .payload(id, remaining: remaining - count, sink)

            case .header where self.inboundHeader.readableBytes == 0 && input.readableBytes >= SmuxFrame.headerSize:
                if let frame = try self.decoder.decode(buffer: &input) {
                    let sink = self.begin(
                        frame.command,
                        frame.streamID,
                        length: frame.payload.readableBytes,
                        into: &events
                    )
                    if frame.payload.readableBytes > 0 {
                        self.consume(frame.payload, of: SmuxStreamID(frame.streamID), sink: sink, into: &events)
                    }
                } else {
                    // Valid header, payload continues in later inputs.
                    self.beginPartialFrame(header: &input, into: &events)
                }

            case .header:
                let count = min(SmuxFrame.headerSize - self.inboundHeader.readableBytes, input.readableBytes)
                var part = input.readSlice(length: count)!
                self.inboundHeader.writeBuffer(&part)
                guard self.inboundHeader.readableBytes == SmuxFrame.headerSize else { break }
                do {
                    // A local view (shared storage, nothing copied) so the decoder need not borrow `self`.
                    var header = self.inboundHeader
                    if let frame = try self.decoder.decode(buffer: &header) {
                        _ = self.begin(frame.command, frame.streamID, length: 0, into: &events)
                    } else {
                        self.beginPartialFrame(header: &header, into: &events)
                    }
                }
                self.inboundHeader.clear()
            }
        }
    }

    /// Consumes a header the decoder validated but could not complete (PSH or UPD with a payload).
    private mutating func beginPartialFrame(header buffer: inout ByteBuffer, into events: inout [SmuxEvent]) {
        let (_, rawCommand, length, streamID) = buffer.readMultipleIntegers(
            endianness: .little,
            as: (UInt8, UInt8, UInt16, UInt32).self
        )!
        let command = SmuxFrame.Command(rawValue: rawCommand)!  // validated by the decoder
        let sink = self.begin(command, streamID, length: Int(length), into: &events)
        self.inbound = .payload(SmuxStreamID(streamID), remaining: Int(length), sink)
    }

    /// Acts on a frame header; returns what to do with its payload.
    private mutating func begin(
        _ command: SmuxFrame.Command,
        _ rawStreamID: UInt32,
        length: Int,
        into events: inout [SmuxEvent]
    ) -> PayloadSink {
        self.statistics.framesReceived += 1
        self.receivedFrameSinceKeepAliveCheck = true
        let id = SmuxStreamID(rawStreamID)
        switch command {
        case .nop:
            self.statistics.keepAlivesReceived += 1
            events.append(.keepAlive)
        case .syn:
            self.receivedSYN(id, into: &events)
        case .fin:
            self.receivedFIN(id, into: &events)
        case .psh:
            if length > 0, let stream = self.streams[id], !stream.finReceived {
                return .deliver
            }
            if length > 0 {
                self.statistics.droppedDataFrames += 1
            }
            return .drop
        case .upd:
            self.statistics.windowUpdatesIgnored += 1
            return .skip
        }
        return .skip
    }

    private mutating func consume(
        _ payload: ByteBuffer,
        of id: SmuxStreamID,
        sink: PayloadSink,
        into events: inout [SmuxEvent]
    ) {
        switch sink {
        case .deliver:
            if let index = self.streams.index(forKey: id) {
                self.streams.values[index].bytesReceived += payload.readableBytes
                events.append(.data(id, payload))
            } else {
                self.statistics.droppedDataBytes += payload.readableBytes
            }
        case .drop:
            self.statistics.droppedDataBytes += payload.readableBytes
        case .skip:
            break
        }
    }

    /// smux: a SYN for a live id is ignored; otherwise the stream is created and queued for accept.
    private mutating func receivedSYN(_ id: SmuxStreamID, into events: inout [SmuxEvent]) {
        guard self.streams[id] == nil else {
            self.statistics.duplicateSYNs += 1
            return
        }
        guard self.streams.count < self.configuration.maximumStreams else {
            self.statistics.refusedStreams += 1
            // The refusal FINs are bounded too: a peer that floods SYNs without reading gets no more.
            if self.queuedRefusals < self.configuration.maximumStreams {
                self.queuedRefusals += 1
                self.control.append(.refusalFIN(id))
            }
            events.append(.streamRefused(id))
            return
        }
        self.streams[id] = SmuxStreamState()
        events.append(.streamOpened(id))
    }

    /// smux: FIN marks the read side at EOF; FIN for an unknown stream is ignored.
    private mutating func receivedFIN(_ id: SmuxStreamID, into events: inout [SmuxEvent]) {
        guard let index = self.streams.index(forKey: id), !self.streams.values[index].finReceived else { return }
        self.streams.values[index].finReceived = true
        events.append(.streamClosedByPeer(id))
        if self.streams.values[index].finSent {
            self.finish(id)
        }
    }
}
