// libFuzzer target for the wire decoders. Built by scripts/fuzz.sh with
// `--sanitize fuzzer --sanitize address -Xswiftc -DFUZZING`; a normal build gets a main
// that replays input files, to reproduce a crash under the debugger or in a test.
//
// The first input byte picks the decoder; the rest is its input. Besides "never traps",
// each branch checks a property and traps when it fails, so the fuzzer finds wrong answers too.
import NIOCore
import SSMProtocol

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let input = ByteBuffer(bytes: UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 3 {
    case 0: fuzzAgentMessage(input)
    case 1: fuzzSmuxStream(input)
    default: fuzzPayloads(input)
    }
    return 0
}

/// A frame that decodes must re-encode to a frame that decodes to the same message.
func fuzzAgentMessage(_ frame: ByteBuffer) {
    for options in [AgentMessage.DecodingOptions(), AgentMessage.DecodingOptions(maximumPayloadLength: 64, verifiesDigest: false)] {
        guard let message = try? AgentMessage.decode(frame, options: options) else { continue }
        precondition(message.payload.readableBytes <= options.maximumPayloadLength, "payload over the limit was accepted")
        guard message.payload.readableBytes > 0 else { continue }
        let reencoded: ByteBuffer
        do {
            reencoded = try message.encoded()
        } catch {
            preconditionFailure("a decoded message could not be re-encoded: \(error)")
        }
        let again = try? AgentMessage.decode(reencoded)
        precondition(again?.payload == message.payload, "re-encoded frame lost its payload")
        precondition(again?.sequenceNumber == message.sequenceNumber, "re-encoded frame changed its sequence number")
    }
}

/// Frames decoded from a stream re-encode to exactly the bytes they were read from, and the
/// decoder never consumes bytes without producing a frame.
func fuzzSmuxStream(_ stream: ByteBuffer) {
    var pending = stream
    var decoder = SmuxFrameDecoder(acceptedVersions: 1...2)
    while true {
        let before = pending
        let frame: SmuxFrame?
        do {
            frame = try decoder.decode(buffer: &pending)
        } catch {
            return
        }
        guard let frame else {
            precondition(pending.readerIndex == before.readerIndex, "an incomplete frame consumed input")
            return
        }
        let consumed = before.getSlice(at: before.readerIndex, length: pending.readerIndex - before.readerIndex)!
        var encoded = ByteBuffer()
        do {
            try frame.encode(into: &encoded)
        } catch {
            preconditionFailure("a decoded smux frame could not be re-encoded: \(error)")
        }
        precondition(encoded == consumed, "smux frame re-encoded differently")
    }
}

/// JSON payload decoders: anything they accept must survive encode → decode unchanged.
func fuzzPayloads(_ payload: ByteBuffer) {
    if let value = try? JSONValue(parsing: payload) {
        precondition((try? JSONValue(parsing: value.encoded)) == value, "JSON did not round-trip")
    }
    func roundTrip<P: JSONPayload & Equatable>(_ type: P.Type) {
        guard let value = try? P(decoding: payload) else { return }
        precondition((try? P(decoding: value.encoded())) == value, "\(P.self) did not round-trip")
    }
    roundTrip(Acknowledgement.self)
    roundTrip(HandshakeRequest.self)
    roundTrip(HandshakeResponse.self)
    roundTrip(HandshakeComplete.self)
    roundTrip(ChannelClosed.self)
    roundTrip(AgentSessionState.self)
    roundTrip(TerminalSize.self)
    roundTrip(EncryptionChallenge.self)
    roundTrip(OpenDataChannelInput.self)
    _ = try? PortFlag(decoding: payload)
    _ = try? ExitCode(decoding: payload)
}

#if !FUZZING
/// Normal builds: replay the files named on the command line through the same checks.
@main
struct ReplayInputs {
    static func main() {
        let paths = CommandLine.arguments.dropFirst()
        if paths.isEmpty {
            print("usage: SSMProtocolFuzz FILE...  (replays fuzz inputs; scripts/fuzz.sh builds the real fuzzer)")
            return
        }
        for path in paths {
            guard let file = fopen(path, "rb") else {
                print("\(path): cannot open")
                exit(1)
            }
            defer { fclose(file) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while case let count = fread(&chunk, 1, chunk.count, file), count > 0 { bytes += chunk[0..<count] }
            bytes.append(0)  // keeps baseAddress non-nil for empty files
            _ = bytes.withUnsafeBufferPointer { fuzzOneInput($0.baseAddress!, $0.count - 1) }
            print("\(path): ok")
        }
    }
}
#endif
