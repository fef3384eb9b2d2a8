import NIOCore
import Testing

@testable import SSMProtocol

/// The per-message fast paths give exactly what the general code gives.
@Suite("Fast paths")
struct FastPathTests {
    @Test("acknowledgements read in place equal the general JSON parser's reading")
    func compactAcknowledgement() throws {
        var random = FastRandom(seed: 7)
        for sequence: Int64 in [0, 1, 9, 10, 1023, 1_000_000, Int64(999_999_999_999_999_999), -1, -42] {
            for type in [MessageType.inputStreamData, .outputStreamData] {
                let ack = Acknowledgement(
                    messageType: type, messageID: .random(using: &random), sequenceNumber: sequence, isSequentialMessage: sequence % 2 == 0)
                var buffer = ByteBuffer()
                ack.write(into: &buffer)
                #expect(buffer == ack.json.encoded)
                #expect(Acknowledgement.decodeCompact(buffer) == ack)
                #expect(try Acknowledgement(decoding: buffer) == ack)
            }
        }
    }

    @Test("anything but the exact compact form goes through the general parser, with the same outcome")
    func nonCompactAcknowledgements() throws {
        let id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0"
        let texts = [
            #"{"AcknowledgedMessageType": "input_stream_data","AcknowledgedMessageId":"\#(id)","AcknowledgedMessageSequenceNumber":5,"IsSequentialMessage":true}"#,
            #"{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"\#(id.uppercased())","AcknowledgedMessageSequenceNumber":5,"IsSequentialMessage":true}"#,
            #"{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"\#(id)","AcknowledgedMessageSequenceNumber":05,"IsSequentialMessage":true}"#,
            #"{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"\#(id)","AcknowledgedMessageSequenceNumber":12345678901234567890,"IsSequentialMessage":true}"#,
            #"{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"\#(id)","AcknowledgedMessageSequenceNumber":1234567890123456789,"IsSequentialMessage":true}"#,
            #"{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"\#(id)","AcknowledgedMessageSequenceNumber":5}"#,
            #"{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"\#(id)","AcknowledgedMessageSequenceNumber":5,"IsSequentialMessage":true} "#,
            #"{"AcknowledgedMessageType":"input\u005fstream_data","AcknowledgedMessageId":"\#(id)","AcknowledgedMessageSequenceNumber":5,"IsSequentialMessage":false}"#,
            #"{"AcknowledgedMessageType":"no_such_type","AcknowledgedMessageId":"\#(id)","AcknowledgedMessageSequenceNumber":5,"IsSequentialMessage":true}"#,
            #"{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"not-a-uuid","AcknowledgedMessageSequenceNumber":5,"IsSequentialMessage":true}"#,
        ]
        for text in texts {
            let buffer = ByteBuffer(string: text)
            let general = Result { () throws(PayloadError) in try Acknowledgement(json: JSONValue(parsing: buffer)) }
            let fast = Result { () throws(PayloadError) in try Acknowledgement(decoding: buffer) }
            #expect((try? general.get()) == (try? fast.get()), "\(text)")
            if let compact = Acknowledgement.decodeCompact(buffer) { #expect(compact == (try? general.get()), "\(text)") }
        }
    }

    @Test("fast message ids are version-4 UUIDs, distinct, and written as their description")
    func fastMessageIDs() {
        var random = FastRandom()
        var seen = Set<MessageID>()
        for _ in 0..<10_000 {
            let id = MessageID.random(using: &random)
            #expect(id.high & 0xF000 == 0x4000)
            #expect(id.low >> 62 == 0b10)
            var buffer = ByteBuffer()
            id.write(into: &buffer)
            #expect(String(buffer: buffer) == id.description)
            #expect(MessageID(id.description) == id)
            seen.insert(id)
        }
        #expect(seen.count == 10_000)
        var first = FastRandom(seed: 1)
        var second = FastRandom(seed: 1)
        #expect(first.next() == second.next())
    }
}
