import NIOCore

/// One smux frame: `version(1) cmd(1) length(2, LE) streamID(4, LE)` then `length` bytes.
///
/// Both official peers speak version 1 (no flow-control frames). Version 2 adds UPD
/// window updates; it is decoded so a peer that enables it is recognised, not misread.
public struct SmuxFrame: Hashable, Sendable {
    public enum Command: UInt8, Hashable, Sendable {
        case syn = 0
        case fin = 1
        case psh = 2
        case nop = 3
        case upd = 4
    }

    public static let headerSize = 8
    /// Largest payload the 16-bit length field can describe.
    public static let maximumPayloadLength = Int(UInt16.max)
    /// What both official peers write at most per frame (smux MaxFrameSize).
    public static let defaultMaximumFrameSize = 32768

    public var version: UInt8
    public var command: Command
    public var streamID: UInt32
    /// PSH data or the 8-byte UPD body; empty for SYN, FIN and NOP.
    public var payload: ByteBuffer

    public init(version: UInt8 = 1, command: Command, streamID: UInt32, payload: ByteBuffer = ByteBuffer()) {
        self.version = version
        self.command = command
        self.streamID = streamID
        self.payload = payload
    }

    public static func syn(_ streamID: UInt32, version: UInt8 = 1) -> SmuxFrame {
        SmuxFrame(version: version, command: .syn, streamID: streamID)
    }

    public static func fin(_ streamID: UInt32, version: UInt8 = 1) -> SmuxFrame {
        SmuxFrame(version: version, command: .fin, streamID: streamID)
    }

    public static func psh(_ streamID: UInt32, _ data: ByteBuffer, version: UInt8 = 1) -> SmuxFrame {
        SmuxFrame(version: version, command: .psh, streamID: streamID, payload: data)
    }

    public static func nop(version: UInt8 = 1) -> SmuxFrame {
        SmuxFrame(version: version, command: .nop, streamID: 0)
    }

    /// A version-2 window update: bytes consumed so far and the receiver's window.
    public static func upd(_ streamID: UInt32, consumed: UInt32, window: UInt32) -> SmuxFrame {
        var body = ByteBuffer()
        body.writeInteger(consumed, endianness: .little)
        body.writeInteger(window, endianness: .little)
        return SmuxFrame(version: 2, command: .upd, streamID: streamID, payload: body)
    }

    /// The UPD body, when this is a well-formed UPD frame.
    public var windowUpdate: (consumed: UInt32, window: UInt32)? {
        guard self.command == .upd,
            let consumed = self.payload.getInteger(at: self.payload.readerIndex, endianness: .little, as: UInt32.self),
            let window = self.payload.getInteger(at: self.payload.readerIndex + 4, endianness: .little, as: UInt32.self)
        else { return nil }
        return (consumed, window)
    }

    public var encodedLength: Int { Self.headerSize + self.payload.readableBytes }

    /// Appends the frame. Splitting data into frames of at most 65535 bytes is the writer's job.
    public func encode(into buffer: inout ByteBuffer) throws(SmuxError) {
        try Self.validate(
            version: self.version,
            command: self.command.rawValue,
            length: self.payload.readableBytes,
            allowedVersions: 1...2
        )
        Self.writeHeader(
            version: self.version,
            command: self.command,
            length: UInt16(self.payload.readableBytes),
            streamID: self.streamID,
            into: &buffer
        )
        var payload = self.payload
        buffer.writeBuffer(&payload)
    }

    /// Writes a bare header; PSH writers use it to put data behind it without an intermediate frame.
    public static func writeHeader(version: UInt8 = 1, command: Command, length: UInt16, streamID: UInt32, into buffer: inout ByteBuffer) {
        buffer.writeInteger(version)
        buffer.writeInteger(command.rawValue)
        buffer.writeInteger(length, endianness: .little)
        buffer.writeInteger(streamID, endianness: .little)
    }

    static func validate(version: UInt8, command: UInt8, length: Int, allowedVersions: ClosedRange<UInt8>) throws(SmuxError) {
        guard allowedVersions.contains(version) else { throw .unsupportedVersion(version, expected: allowedVersions) }
        guard let command = Command(rawValue: command) else { throw .unknownCommand(command) }
        if command == .upd && version < 2 { throw .commandNotInVersion(command, version: version) }
        guard length <= Self.maximumPayloadLength else { throw .frameTooLarge(length, limit: Self.maximumPayloadLength) }
        switch command {
        case .syn, .fin, .nop:
            guard length == 0 else { throw .unexpectedPayload(command, length: length) }
        case .upd:
            guard length == 8 else { throw .malformedWindowUpdate(length: length) }
        case .psh:
            break
        }
    }
}

/// Incremental decoder for a smux byte stream.
///
/// smux frames are not aligned to AgentMessages: feed it every payload in order and take
/// frames out as they complete. Payloads are slices of the input: nothing is copied.
public struct SmuxFrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = SmuxFrame

    /// Versions accepted: 1 for both official peers; 1...2 to also accept UPD frames.
    public var acceptedVersions: ClosedRange<UInt8>
    /// Frames announcing more data are refused before it is buffered.
    public var maximumPayloadLength: Int

    public init(acceptedVersions: ClosedRange<UInt8> = 1...1, maximumPayloadLength: Int = SmuxFrame.maximumPayloadLength) {
        self.acceptedVersions = acceptedVersions
        self.maximumPayloadLength = maximumPayloadLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws(SmuxError) -> SmuxFrame? {
        guard
            let (version, command, length, streamID) = buffer.getMultipleIntegers(
                at: buffer.readerIndex,
                endianness: .little,
                as: (UInt8, UInt8, UInt16, UInt32).self
            )
        else { return nil }
        let payloadLength = Int(length)
        try SmuxFrame.validate(version: version, command: command, length: payloadLength, allowedVersions: self.acceptedVersions)
        guard payloadLength <= self.maximumPayloadLength else {
            throw .frameTooLarge(payloadLength, limit: self.maximumPayloadLength)
        }
        guard buffer.readableBytes >= SmuxFrame.headerSize + payloadLength else { return nil }
        buffer.moveReaderIndex(forwardBy: SmuxFrame.headerSize)
        let payload = buffer.readSlice(length: payloadLength)!
        return SmuxFrame(
            version: version,
            command: SmuxFrame.Command(rawValue: command)!,
            streamID: streamID,
            payload: payload
        )
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(SmuxError) -> SmuxFrame? {
        try self.decode(buffer: &buffer)
    }
}

/// Why smux bytes could not be decoded. Any of these ends the smux session, as in xtaci/smux.
public struct SmuxError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        case unsupportedVersion
        case unknownCommand
        case commandNotInVersion
        case frameTooLarge
        case unexpectedPayload
        case malformedWindowUpdate
    }

    public let code: Code
    public let detail: String

    public var description: String { "\(self.code.rawValue): \(self.detail)" }

    @inline(never)
    static func unsupportedVersion(_ version: UInt8, expected: ClosedRange<UInt8>) -> Self {
        .init(code: .unsupportedVersion, detail: "smux version \(version); this session speaks \(expected.lowerBound == expected.upperBound ? "\(expected.lowerBound)" : "\(expected)")")
    }

    @inline(never)
    static func unknownCommand(_ command: UInt8) -> Self {
        .init(code: .unknownCommand, detail: "smux command \(command) is not SYN, FIN, PSH, NOP or UPD")
    }

    @inline(never)
    static func commandNotInVersion(_ command: SmuxFrame.Command, version: UInt8) -> Self {
        .init(code: .commandNotInVersion, detail: "smux \(command) frames do not exist in version \(version)")
    }

    @inline(never)
    static func frameTooLarge(_ length: Int, limit: Int) -> Self {
        .init(code: .frameTooLarge, detail: "smux frame of \(length) bytes exceeds the limit of \(limit)")
    }

    @inline(never)
    static func unexpectedPayload(_ command: SmuxFrame.Command, length: Int) -> Self {
        .init(code: .unexpectedPayload, detail: "smux \(command) frame declares \(length) data bytes; it carries none")
    }

    @inline(never)
    static func malformedWindowUpdate(length: Int) -> Self {
        .init(code: .malformedWindowUpdate, detail: "smux UPD frame of \(length) bytes; it must be 8")
    }
}
