import NIOCore
import Testing

@testable import SSMProtocol

@Suite("smux frames")
struct SmuxFrameTests {
    static func captured(_ group: String) throws -> [[String: Any]] {
        try Vectors.json("smux.json")[group] as! [[String: Any]]
    }

    static func check(_ frame: SmuxFrame, against vector: [String: Any]) {
        #expect(frame.version == vector["ver"] as! UInt8)
        #expect(frame.command.rawValue == vector["cmd"] as! UInt8)
        #expect(frame.streamID == vector["stream_id_le32"] as! UInt32)
        #expect(frame.payload.hex == vector["data_hex"] as! String)
    }

    @Test("v1 captures from both official copies decode and re-encode byte-exact", arguments: [
        "v1_session_plugin_copy", "v1_session_agent_copy", "nop_keepalive",
    ])
    func version1(group: String) throws {
        for vector in try Self.captured(group) {
            var bytes = ByteBuffer(hex: vector["hex"] as! String)
            var decoder = SmuxFrameDecoder()
            let frame = try #require(try decoder.decode(buffer: &bytes))
            #expect(bytes.readableBytes == 0)
            Self.check(frame, against: vector)
            var encoded = ByteBuffer()
            try frame.encode(into: &encoded)
            #expect(encoded.hex == vector["hex"] as! String)
        }
    }

    @Test("v2 frames, UPD included, decode when v2 is accepted and are refused by a v1 session")
    func version2() throws {
        for vector in try Self.captured("v2_for_recognition_only") {
            var bytes = ByteBuffer(hex: vector["hex"] as! String)
            var decoder = SmuxFrameDecoder(acceptedVersions: 1...2)
            let frame = try #require(try decoder.decode(buffer: &bytes))
            Self.check(frame, against: vector)
            if frame.command == .upd {
                let update = try #require(frame.windowUpdate)
                #expect(update.consumed == vector["upd_consumed_le32"] as! UInt32)
                #expect(update.window == vector["upd_window_le32"] as! UInt32)
                #expect(SmuxFrame.upd(frame.streamID, consumed: update.consumed, window: update.window) == frame)
            }
            var encoded = ByteBuffer()
            try frame.encode(into: &encoded)
            #expect(encoded.hex == vector["hex"] as! String)

            var v1Bytes = ByteBuffer(hex: vector["hex"] as! String)
            var v1 = SmuxFrameDecoder()
            let error = #expect(throws: SmuxError.self) { try v1.decode(buffer: &v1Bytes) }
            #expect(error?.code == .unsupportedVersion)
        }
    }

    @Test("malformed headers are typed errors", arguments: [
        ("0109000003000000", SmuxError.Code.unknownCommand),
        ("0104080003000000", .commandNotInVersion),
        ("0100050003000000", .unexpectedPayload),
        ("0103010000000000", .unexpectedPayload),
        ("0204040003000000", .malformedWindowUpdate),
        ("0300000003000000", .unsupportedVersion),
    ])
    func malformed(hex: String, code: SmuxError.Code) {
        var bytes = ByteBuffer(hex: hex)
        var decoder = SmuxFrameDecoder(acceptedVersions: 1...2)
        let error = #expect(throws: SmuxError.self) { try decoder.decode(buffer: &bytes) }
        #expect(error?.code == code)
    }

    @Test("a frame larger than the configured limit is refused before its data arrives")
    func limit() {
        var header = ByteBuffer()
        SmuxFrame.writeHeader(command: .psh, length: 40_000, streamID: 3, into: &header)
        var decoder = SmuxFrameDecoder(maximumPayloadLength: SmuxFrame.defaultMaximumFrameSize)
        let error = #expect(throws: SmuxError.self) { try decoder.decode(buffer: &header) }
        #expect(error?.code == .frameTooLarge)
    }

    @Test("incomplete frames wait for more bytes without consuming anything")
    func incremental() throws {
        var stream = ByteBuffer(hex: "010205000300000068656c6c6f")
        var decoder = SmuxFrameDecoder()
        var partial = stream.readSlice(length: 10)!
        #expect(try decoder.decode(buffer: &partial) == nil)
        #expect(partial.readableBytes == 10)
        partial.writeBuffer(&stream)
        let frame = try #require(try decoder.decode(buffer: &partial))
        #expect(String(buffer: frame.payload) == "hello")
    }

    @Test("port_mux transcript: smux reassembled across AgentMessages matches the recorded frames")
    func transcriptReassembly() throws {
        for name in ["port_mux", "port_mux_idle"] {
            var decoders: [String: (SmuxFrameDecoder, ByteBuffer, Set<Int64>)] = [:]
            var checkedFrames = 0
            for event in try Vectors.transcriptEvents(name) where event["event"] as? String == "frame" {
                guard let hex = event["hex"] as? String, let dir = event["dir"] as? String, dir.hasSuffix("->mgs") else { continue }
                let message = try AgentMessage.decode(ByteBuffer(hex: hex))
                guard message.messageType.isStreamData, message.payloadType == .output else { continue }
                var state = decoders[dir] ?? (SmuxFrameDecoder(), ByteBuffer(), [])
                guard state.2.insert(message.sequenceNumber).inserted else { continue }  // a resend
                var payload = message.payload
                state.1.writeBuffer(&payload)
                var produced: [SmuxFrame] = []
                while let frame = try state.0.decode(buffer: &state.1) { produced.append(frame) }
                decoders[dir] = state
                let recorded = (event["smux_frames_completed"] as? [[String: Any]]) ?? []
                #expect(produced.count == recorded.count, "\(name) seq \(message.sequenceNumber)")
                for (frame, expected) in zip(produced, recorded) {
                    #expect(frame.streamID == expected["sid"] as! UInt32)
                    #expect("\(frame.command)".uppercased() == expected["cmd"] as! String)
                    #expect(String(buffer: frame.payload) == expected["data"] as! String)
                    #expect(frame.payload.readableBytes == expected["len"] as! Int)
                    checkedFrames += 1
                }
            }
            #expect(checkedFrames > 8, "\(name): too few smux frames checked")
        }
    }
}
