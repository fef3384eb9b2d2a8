import NIOCore

/// Per-stream bookkeeping of a ``SmuxSession``. Mutated in place inside the session's dictionary
/// (through `streams.values[index]`) so the pending queue is never copied.
struct SmuxStreamState {
    /// Bytes written by the caller and not yet copied into the output: slices of the caller's
    /// buffers, no copy on `write`.
    var pending = CircularBuffer<ByteBuffer>(initialCapacity: 4)
    /// Bytes in `pending`; bounded by the send buffer limit.
    var queuedBytes = 0
    /// Bytes in `pending` not yet assigned to a PSH frame by the scheduler.
    var unscheduledBytes = 0

    /// In the scheduler's active list.
    var isActive = false
    /// The deficit-round-robin quantum for the current turn has been granted.
    var inTurn = false
    /// Wire bytes this stream may still send in its current turn.
    var deficit = 0

    /// `closeStream` was called: no more writes, FIN goes out after the queued data.
    var finQueued = false
    /// The FIN has been given a place in the output.
    var finScheduled = false
    /// The FIN has been written completely into the output.
    var finSent = false
    /// The peer's FIN arrived.
    var finReceived = false

    /// A write was refused for lack of space: report the stream once it has drained to half the limit.
    var wantsWritable = false

    var bytesSent = 0
    var bytesReceived = 0

    init() {}
}

extension SmuxStreamState {
    /// Takes as much of `data` as the limit allows and returns the count.
    mutating func enqueue(_ data: ByteBuffer, limit: Int) -> Int {
        let accepted = min(data.readableBytes, max(0, limit - self.queuedBytes))
        if accepted < data.readableBytes {
            self.wantsWritable = true
        }
        guard accepted > 0 else { return 0 }
        self.pending.append(data.getSlice(at: data.readerIndex, length: accepted)!)
        self.queuedBytes += accepted
        self.unscheduledBytes += accepted
        return accepted
    }

    /// Moves `count` queued bytes into `output`.
    mutating func dequeue(_ count: Int, into output: inout ByteBuffer) {
        precondition(count <= self.queuedBytes, "smux scheduler took more bytes than were queued")
        var remaining = count
        while remaining > 0 {
            let first = self.pending.startIndex
            let available = self.pending[first].readableBytes
            if available <= remaining {
                var chunk = self.pending.removeFirst()
                output.writeBuffer(&chunk)
                remaining -= available
            } else {
                let chunk = self.pending[first].getSlice(at: self.pending[first].readerIndex, length: remaining)!
                output.writeImmutableBuffer(chunk)
                self.pending[first].moveReaderIndex(forwardBy: remaining)
                remaining = 0
            }
        }
        self.queuedBytes -= count
        self.bytesSent += count
    }

    /// Whether the scheduler has nothing more to assign for this stream.
    var hasNothingToSchedule: Bool {
        self.unscheduledBytes == 0 && (!self.finQueued || self.finScheduled)
    }

    var counters: SmuxSession.StreamCounters {
        SmuxSession.StreamCounters(bytesSent: self.bytesSent, bytesReceived: self.bytesReceived)
    }

    var publicState: SmuxSession.StreamState {
        switch (self.finQueued, self.finReceived) {
        case (false, false): .open
        case (true, false): .localClosed
        case (false, true): .remoteClosed
        case (true, true): .closing
        }
    }
}
