// Throughput of the protocol core on this machine: `swift run -c release ProtocolBenchmarks`.
//
// Decoding a frame is a bounds check, a few integer loads and a SHA-256 of the payload, so its
// cost should stay within 2x of hashing the same bytes. The table shows the ratio.
import Crypto
import NIOCore
import SSMProtocol

struct Measurement {
    var name: String
    var operations: Int
    var payloadBytes: Int
    var seconds: Double
    var opsPerSecond: Double { Double(self.operations) / self.seconds }
    var megabytesPerSecond: Double { Double(self.payloadBytes) / self.seconds / 1_000_000 }
    var nanosecondsPerOp: Double { self.seconds * 1e9 / Double(self.operations) }
}

/// Runs `body` in batches until `duration` has passed, three times, and keeps the fastest run.
func measure(_ name: String, payloadBytesPerOp: Int, duration: Duration = .milliseconds(700), _ body: (Int) -> Int) -> Measurement {
    var best: Measurement?
    var sink = 0
    let clock = ContinuousClock()
    for _ in 0..<3 {
        var operations = 0
        let start = clock.now
        var elapsed = Duration.zero
        while elapsed < duration {
            sink &+= body(operations)
            operations += 1
            if operations % 256 == 0 { elapsed = clock.now - start }
        }
        elapsed = clock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let run = Measurement(name: name, operations: operations, payloadBytes: operations * payloadBytesPerOp, seconds: seconds)
        if best == nil || run.opsPerSecond > best!.opsPerSecond { best = run }
    }
    if sink == 42 { print("", terminator: "") }  // keeps the work observable
    return best!
}

let payloadSize = 1024
let distinct = 1024
var generator = SystemRandomNumberGenerator()
let messages: [AgentMessage] = (0..<distinct).map { index in
    var payload = ByteBuffer()
    payload.reserveCapacity(payloadSize)
    while payload.readableBytes < payloadSize { payload.writeInteger(generator.next()) }
    return AgentMessage(
        messageType: .inputStreamData, createdDate: 1_700_000_000_123, sequenceNumber: Int64(index), flags: [],
        messageID: .random(using: &generator), payloadType: .output, payload: payload)
}
let frames: [ByteBuffer] = messages.map { try! $0.encoded() }
let payloadSlices: [ByteBuffer] = frames.map { $0.getSlice(at: AgentMessage.headerSize, length: payloadSize)! }
let frameSize = frames[0].readableBytes

var scratch = ByteBufferAllocator().buffer(capacity: frameSize)
let sha = measure("SHA-256 of the 1 KiB payload", payloadBytesPerOp: payloadSize) { i in
    let digest = payloadSlices[i % distinct].withUnsafeReadableBytes { SHA256.hash(data: $0) }
    return digest.withUnsafeBytes { Int($0[0]) }
}
let encode = measure("encode input_stream_data (digest + copy)", payloadBytesPerOp: payloadSize) { i in
    scratch.clear()
    try! messages[i % distinct].encode(into: &scratch)
    return scratch.readableBytes
}
let decodeVerify = measure("decode + verify digest", payloadBytesPerOp: payloadSize) { i in
    let message = try! AgentMessage.decode(frames[i % distinct])
    return Int(message.sequenceNumber)
}
let decodeOnly = measure("decode, digest not checked (agent mode)", payloadBytesPerOp: payloadSize) { i in
    let message = try! AgentMessage.decode(frames[i % distinct], options: .init(verifiesDigest: false))
    return Int(message.sequenceNumber)
}
let ack = Acknowledgement(messageType: .outputStreamData, messageID: messages[0].messageID, sequenceNumber: 12345)
let ackMessage = AgentMessage(
    messageType: .acknowledge, createdDate: 1_700_000_000_123, sequenceNumber: 0, flags: .control,
    messageID: messages[1].messageID, payloadType: .undefined, payload: {
        var buffer = ByteBuffer()
        ack.write(into: &buffer)
        return buffer
    }())
let ackFrame = try! ackMessage.encoded()
let ackRoundTrip = measure("acknowledge: decode frame + parse JSON", payloadBytesPerOp: ackMessage.payload.readableBytes) { _ in
    let message = try! AgentMessage.decode(ackFrame)
    let parsed = try! Acknowledgement(decoding: message.payload)
    return Int(parsed.acknowledgedSequenceNumber)
}
let ackEncode = measure("acknowledge: build payload + encode frame", payloadBytesPerOp: ackMessage.payload.readableBytes) { i in
    var payload = ByteBuffer()
    Acknowledgement(messageType: .outputStreamData, messageID: messages[i % distinct].messageID, sequenceNumber: Int64(i)).write(into: &payload)
    scratch.clear()
    try! AgentMessage(
        messageType: .acknowledge, createdDate: 1_700_000_000_123, sequenceNumber: 0, flags: .control,
        messageID: messages[(i + 1) % distinct].messageID, payloadType: .undefined, payload: payload
    ).encode(into: &scratch)
    return scratch.readableBytes
}
var smuxStream = ByteBuffer()
for slice in payloadSlices { try! SmuxFrame.psh(3, slice).encode(into: &smuxStream) }
var smuxDecoder = SmuxFrameDecoder()
var smuxCursor = smuxStream
let smuxDecode = measure("smux PSH decode (1 KiB)", payloadBytesPerOp: payloadSize) { _ in
    if smuxCursor.readableBytes == 0 { smuxCursor = smuxStream }
    return try! smuxDecoder.decode(buffer: &smuxCursor)!.payload.readableBytes
}

let results = [sha, encode, decodeVerify, decodeOnly, ackEncode, ackRoundTrip, smuxDecode]
func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
    let padding = String(repeating: " ", count: max(0, width - text.count))
    return right ? padding + text : text + padding
}
func fixed(_ value: Double, _ digits: Int) -> String {
    var scaled = (value * pow10(digits)).rounded() / pow10(digits)
    if scaled == -0 { scaled = 0 }
    let text = "\(scaled)"
    guard let dot = text.firstIndex(of: ".") else { return text }
    let decimals = text.distance(from: dot, to: text.endIndex) - 1
    return decimals < digits ? text + String(repeating: "0", count: digits - decimals) : text
}
func pow10(_ n: Int) -> Double { (0..<n).reduce(1.0) { acc, _ in acc * 10 } }

print("ssmgate protocol core, payload \(payloadSize) bytes (frame \(frameSize) bytes), best of 3 runs of 0.7 s")
print("")
print("| \(pad("operation", 42)) | \(pad("messages/s", 11, right: true)) | \(pad("MB/s", 8, right: true)) | \(pad("ns/msg", 8, right: true)) | \(pad("x SHA-256", 9, right: true)) |")
print("|\(String(repeating: "-", count: 44))|\(String(repeating: "-", count: 12)):|\(String(repeating: "-", count: 9)):|\(String(repeating: "-", count: 9)):|\(String(repeating: "-", count: 10)):|")
for result in results {
    let ratio = result.nanosecondsPerOp / sha.nanosecondsPerOp
    print("| \(pad(result.name, 42)) | \(pad(String(Int(result.opsPerSecond)), 11, right: true)) | \(pad(fixed(result.megabytesPerSecond, 1), 8, right: true)) | \(pad(fixed(result.nanosecondsPerOp, 0), 8, right: true)) | \(pad(fixed(ratio, 2), 9, right: true)) |")
}
let ratio = decodeVerify.nanosecondsPerOp / sha.nanosecondsPerOp
print("")
print("decode + verify costs \(fixed(ratio, 2))x bare SHA-256 of the same bytes (target: at most 2x): \(ratio <= 2 ? "met" : "NOT met")")
