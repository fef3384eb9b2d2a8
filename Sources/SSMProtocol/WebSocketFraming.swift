import NIOCore

/// The 4-byte key a WebSocket client masks each frame's payload with (RFC 6455 section 5.3).
public struct WebSocketMask: Hashable, Sendable {
    public var b0: UInt8
    public var b1: UInt8
    public var b2: UInt8
    public var b3: UInt8

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8) {
        (self.b0, self.b1, self.b2, self.b3) = (b0, b1, b2, b3)
    }

    /// A key from 32 random bits (the key needs to be unpredictable to proxies, not secret).
    public init<Generator: RandomNumberGenerator>(using generator: inout Generator) {
        let bits = UInt32(truncatingIfNeeded: generator.next())
        self.init(UInt8(truncatingIfNeeded: bits), UInt8(truncatingIfNeeded: bits >> 8),
                  UInt8(truncatingIfNeeded: bits >> 16), UInt8(truncatingIfNeeded: bits >> 24))
    }

    @inlinable
    public subscript(index: Int) -> UInt8 {
        switch index & 3 {
        case 0: self.b0
        case 1: self.b1
        case 2: self.b2
        default: self.b3
        }
    }

    /// XORs `count` bytes from `source` into `destination` (which may be `source`: in place), the
    /// first byte with key byte `keyOffset % 4`. Eight bytes per step: NIO's byte-at-a-time loop
    /// was the largest single cost of a 1 KiB data message on both ends of a WebSocket.
    public func apply(from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, count: Int, keyOffset: Int = 0) {
        // The key repeated to 8 bytes, rotated so that word byte j meets key byte (j + keyOffset) % 4;
        // loaded the same way as the data, so it is right on either byte order.
        var pattern: UInt64 = 0
        withUnsafeMutableBytes(of: &pattern) { bytes in
            for index in 0..<8 { bytes[index] = self[index + keyOffset] }
        }
        var offset = 0
        while offset + 8 <= count {
            let word = source.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            destination.storeBytes(of: word ^ pattern, toByteOffset: offset, as: UInt64.self)
            offset += 8
        }
        while offset < count {
            let byte = source.load(fromByteOffset: offset, as: UInt8.self)
            destination.storeBytes(of: byte ^ self[offset + keyOffset], toByteOffset: offset, as: UInt8.self)
            offset += 1
        }
    }
}

/// WebSocket opcodes the data channel uses.
public enum WebSocketFrameOpcode: UInt8, Sendable {
    case continuation = 0x0
    case text = 0x1
    case binary = 0x2
    case connectionClose = 0x8
    case ping = 0x9
    case pong = 0xA
}

extension ByteBuffer {
    /// XORs the readable bytes with `mask` in place (masking and unmasking are one operation).
    public mutating func applyWebSocketMask(_ mask: WebSocketMask, keyOffset: Int = 0) {
        self.withUnsafeMutableReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            mask.apply(from: base, to: base, count: bytes.count, keyOffset: keyOffset)
        }
    }

    /// Writes one whole WebSocket frame: header, then `payload` masked with `mask` when given (a
    /// client's frames) — one pass that copies and masks, leaving `payload` itself untouched (the
    /// data channel keeps it for resending).
    @discardableResult
    public mutating func writeWebSocketFrame(
        fin: Bool = true, opcode: WebSocketFrameOpcode, mask: WebSocketMask?, payload: ByteBuffer
    ) -> Int {
        let length = payload.readableBytes
        let start = self.writerIndex
        let maskBit: UInt8 = mask == nil ? 0 : 0x80
        self.writeInteger((fin ? 0x80 : 0) | opcode.rawValue)
        if length < 126 {
            self.writeInteger(maskBit | UInt8(length))
        } else if length <= Int(UInt16.max) {
            self.writeInteger(maskBit | 126)
            self.writeInteger(UInt16(length))
        } else {
            self.writeInteger(maskBit | 127)
            self.writeInteger(UInt64(length))
        }
        guard let mask else {
            var payload = payload
            self.writeBuffer(&payload)
            return self.writerIndex - start
        }
        self.writeMultipleIntegers(mask.b0, mask.b1, mask.b2, mask.b3)
        self.reserveCapacity(minimumWritableBytes: length)
        let written = self.withUnsafeMutableWritableBytes { destination in
            payload.withUnsafeReadableBytes { source in
                if let from = source.baseAddress, let to = destination.baseAddress {
                    mask.apply(from: from, to: to, count: length)
                }
                return length
            }
        }
        self.moveWriterIndex(forwardBy: written)
        return self.writerIndex - start
    }

    /// The size `writeWebSocketFrame` gives a frame carrying `payloadLength` bytes.
    public static func webSocketFrameSize(payloadLength: Int, masked: Bool) -> Int {
        let lengthBytes = payloadLength < 126 ? 0 : payloadLength <= Int(UInt16.max) ? 2 : 8
        return 2 + lengthBytes + (masked ? 4 : 0) + payloadLength
    }
}

/// The fixed part of one WebSocket frame (RFC 6455 section 5.2), read without consuming anything
/// until the whole frame is there: the transport's decoder parses frames straight out of the
/// bytes a read delivered, slicing payloads rather than copying them.
public struct WebSocketFrameHeader: Hashable, Sendable {
    public var fin: Bool
    /// The three reserved bits, which no extension we negotiate may set.
    public var reservedBits: UInt8
    /// The raw 4-bit opcode: unknown values are the caller's protocol error to report.
    public var opcodeValue: UInt8
    public var mask: WebSocketMask?
    public var payloadLength: Int
    /// Header bytes before the payload (2 to 14).
    public var headerLength: Int

    public var opcode: WebSocketFrameOpcode? { WebSocketFrameOpcode(rawValue: self.opcodeValue) }
    public var isControl: Bool { self.opcodeValue & 0x8 != 0 }

    public enum ParseError: Error, Hashable, Sendable {
        /// The 64-bit length has its top bit set, or exceeds `maximumPayloadLength`.
        case payloadTooLarge(Int)
    }

    /// Reads the header at `buffer`'s reader index without moving it; nil until enough bytes are
    /// there. Payloads longer than `maximumPayloadLength` fail before any of them is buffered.
    public static func peek(in buffer: ByteBuffer, maximumPayloadLength: Int) throws(ParseError) -> WebSocketFrameHeader? {
        let start = buffer.readerIndex
        guard let (first, second) = buffer.getMultipleIntegers(at: start, as: (UInt8, UInt8).self) else { return nil }
        var headerLength = 2
        var length = Int(second & 0x7F)
        if length == 126 {
            guard let extended = buffer.getInteger(at: start + 2, as: UInt16.self) else { return nil }
            length = Int(extended)
            headerLength += 2
        } else if length == 127 {
            guard let extended = buffer.getInteger(at: start + 2, as: UInt64.self) else { return nil }
            guard extended <= UInt64(Int.max) else { throw .payloadTooLarge(Int.max) }
            length = Int(extended)
            headerLength += 8
        }
        guard length <= maximumPayloadLength else { throw .payloadTooLarge(length) }
        var mask: WebSocketMask?
        if second & 0x80 != 0 {
            guard let (b0, b1, b2, b3) = buffer.getMultipleIntegers(at: start + headerLength, as: (UInt8, UInt8, UInt8, UInt8).self)
            else { return nil }
            mask = WebSocketMask(b0, b1, b2, b3)
            headerLength += 4
        }
        return WebSocketFrameHeader(
            fin: first & 0x80 != 0, reservedBits: (first >> 4) & 0x7, opcodeValue: first & 0x0F,
            mask: mask, payloadLength: length, headerLength: headerLength)
    }

    /// How many more bytes `buffer` needs before its first frame is whole: the rest of the header
    /// while that is incomplete, then the rest of the payload; 0 once the frame is all there. A
    /// decoder holding a split frame takes exactly this many from the next read, no more.
    public static func missingByteCount(in buffer: ByteBuffer, maximumPayloadLength: Int) throws(ParseError) -> Int {
        if let header = try self.peek(in: buffer, maximumPayloadLength: maximumPayloadLength) {
            return max(0, header.headerLength + header.payloadLength - buffer.readableBytes)
        }
        guard let second = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) else { return 2 - buffer.readableBytes }
        let lengthField = second & 0x7F
        let headerLength = 2 + (lengthField == 126 ? 2 : lengthField == 127 ? 8 : 0) + (second & 0x80 != 0 ? 4 : 0)
        return headerLength - buffer.readableBytes
    }
}
