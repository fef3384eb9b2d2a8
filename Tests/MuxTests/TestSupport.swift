import Mux
import NIOCore
import SSMProtocol
import Testing

extension ByteBuffer {
    init(hex: String) {
        var buffer = ByteBuffer()
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            buffer.writeInteger(UInt8(Self.nibble(high) << 4 | Self.nibble(low)))
        }
        self = buffer
    }

    private static func nibble(_ character: UInt8) -> UInt8 {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): character - UInt8(ascii: "a") + 10
        default: preconditionFailure("not a lowercase hex digit")
        }
    }

    var hex: String {
        self.readableBytesView.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}


func randomBytes(_ count: Int, using rng: inout SplitMix64) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.reserveCapacity(count + 8)
    while buffer.readableBytes + 8 <= count {
        buffer.writeInteger(rng.next())
    }
    while buffer.readableBytes < count {
        buffer.writeInteger(UInt8.random(in: 0...255, using: &rng))
    }
    return buffer
}

extension SmuxConfiguration {
    /// Test default: keepalive off so no test depends on time unless it means to.
    static func test(
        perStreamSendBufferLimit: Int = 65536,
        quantum: Int = 1024,
        maximumFrameSize: Int = 32768,
        maximumStreams: Int = 1024,
        acceptedVersions: ClosedRange<UInt8>? = nil
    ) -> SmuxConfiguration {
        SmuxConfiguration(
            acceptedVersions: acceptedVersions,
            maximumFrameSize: maximumFrameSize,
            perStreamSendBufferLimit: perStreamSendBufferLimit,
            quantum: quantum,
            maximumStreams: maximumStreams,
            keepAlive: nil
        )
    }
}

extension SmuxSession {
    /// Everything pending, in pieces of at most `maximumBytes`, concatenated.
    mutating func drainOutbound(maximumBytes: Int = 1024) -> ByteBuffer {
        var all = ByteBuffer()
        while var piece = self.nextOutbound(maximumBytes: maximumBytes) {
            #expect(piece.readableBytes <= maximumBytes)
            all.writeBuffer(&piece)
        }
        #expect(!self.hasPendingOutbound)
        return all
    }
}

/// Merges adjacent `.data` events of one stream, so event lists compare independently of chunking.
func coalesced(_ events: [SmuxEvent]) -> [SmuxEvent] {
    var result: [SmuxEvent] = []
    for event in events {
        if case .data(let id, var more) = event, case .data(let lastID, var last)? = result.last, lastID == id {
            last.writeBuffer(&more)
            result[result.count - 1] = .data(id, last)
        } else {
            result.append(event)
        }
    }
    return result
}

/// Runs `body` and returns the session error it throws, recording an issue when it does not throw.
func expectSessionError(
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> SmuxSessionError? {
    do {
        try body()
        Issue.record("expected an SmuxSessionError", sourceLocation: sourceLocation)
        return nil
    } catch let error as SmuxSessionError {
        return error
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// Decodes a complete outbound byte stream into frames with the SSMProtocol decoder.
func decodeFrames(_ bytes: ByteBuffer) throws -> [SmuxFrame] {
    var buffer = bytes
    var decoder = SmuxFrameDecoder()
    var frames: [SmuxFrame] = []
    while let frame = try decoder.decode(buffer: &buffer) {
        frames.append(frame)
    }
    #expect(buffer.readableBytes == 0, "trailing partial frame")
    return frames
}
