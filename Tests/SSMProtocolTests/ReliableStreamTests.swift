import SSMProtocol
import NIOCore
import Testing

@testable import SSMProtocol

@Suite("Reliable stream state machine")
struct ReliableStreamTests {
    static let ms: UInt64 = 1_000_000

    static func stream(_ seq: Int64, _ text: String = "x") -> AgentMessage {
        AgentMessage(
            messageType: .inputStreamData, createdDate: 1, sequenceNumber: seq, flags: [],
            messageID: MessageID(high: UInt64(seq), low: 1), payloadType: .output, payload: ByteBuffer(string: text))
    }

    @Test func inOrderDeliveryAcksEach() {
        var receiver = ReliableStream(configuration: .agent)
        for seq in 0..<5 {
            let reception = receiver.receive(Self.stream(Int64(seq)))
            #expect(reception.acknowledgement?.acknowledgedSequenceNumber == Int64(seq))
            #expect(reception.deliverable.map(\.sequenceNumber) == [Int64(seq)])
        }
        #expect(receiver.expectedIncomingSequence == 5)
    }

    @Test func outOfOrderIsBufferedAckedAndDrained() {
        var receiver = ReliableStream(configuration: .agent)
        let early = receiver.receive(Self.stream(2))
        #expect(early.acknowledgement?.acknowledgedSequenceNumber == 2)
        #expect(early.deliverable.isEmpty)
        _ = receiver.receive(Self.stream(1))
        let gapFilled = receiver.receive(Self.stream(0))
        #expect(gapFilled.deliverable.map(\.sequenceNumber) == [0, 1, 2])
        #expect(receiver.bufferedIncomingCount == 0)
    }

    @Test func duplicatesAreReAckedNotRedelivered() {
        var receiver = ReliableStream(configuration: .client)
        _ = receiver.receive(Self.stream(0))
        let again = receiver.receive(Self.stream(0))
        #expect(again.acknowledgement?.acknowledgedSequenceNumber == 0)
        #expect(again.deliverable.isEmpty)
    }

    @Test func notReadyMeansNoAckAndNoProgress() {
        var receiver = ReliableStream(configuration: .agent)
        let refused = receiver.receive(Self.stream(0), ready: false)
        #expect(refused.acknowledgement == nil)
        #expect(refused.deliverable.isEmpty)
        #expect(receiver.expectedIncomingSequence == 0)
        let accepted = receiver.receive(Self.stream(0))
        #expect(accepted.deliverable.count == 1)
    }

    @Test func fullIncomingBufferDropsWithoutAck() {
        var config = ReliableStream.Configuration.client
        config.incomingCapacity = 2
        var receiver = ReliableStream(configuration: config)
        _ = receiver.receive(Self.stream(1))
        _ = receiver.receive(Self.stream(2))
        let dropped = receiver.receive(Self.stream(3))
        #expect(dropped.acknowledgement == nil)
    }

    @Test func sendRecordsBeforeWritingAndAckRemoves() throws {
        var sender = ReliableStream(configuration: .agent)
        let frame = try sender.send(
            .outputStreamData, payloadType: .output, payload: ByteBuffer(string: "hi"),
            messageID: .random(), createdDate: 5, now: 0)
        let message = try AgentMessage.decode(frame)
        #expect(message.sequenceNumber == 0)
        #expect(message.flags == .syn)  // the agent marks its first stream message
        #expect(sender.unacknowledgedCount == 1)
        let removed = sender.acknowledge(sequenceNumber: 0, now: 50 * Self.ms)
        #expect(removed)
        #expect(sender.unacknowledgedCount == 0)
        let unknown = sender.acknowledge(sequenceNumber: 0, now: 60 * Self.ms)
        #expect(!unknown)
        // One 50 ms sample: RTT = 7/8·100 + 1/8·50, RTTV = 1/4·50, RTO = RTT + 4·RTTV.
        #expect(sender.roundTripTime == 93_750_000)
        #expect(sender.retransmissionTimeout == 93_750_000 + 50_000_000)
    }

    @Test func onlyTheOldestIsResentOncePerTimeout() throws {
        var sender = ReliableStream(configuration: .client)
        for i in 0..<3 {
            _ = try sender.send(
                .inputStreamData, payloadType: .output, payload: ByteBuffer(string: "m\(i)"),
                messageID: .random(), createdDate: 5, now: 0)
        }
        let early = sender.retransmission(now: 100 * Self.ms)
        #expect(early == nil)
        let due = sender.retransmission(now: 200 * Self.ms)
        let first = try #require(due)
        #expect(try AgentMessage.decode(first).sequenceNumber == 0)
        let tick = sender.retransmission(now: 300 * Self.ms)
        #expect(tick == nil)  // not every tick: once per RTO
        let again = sender.retransmission(now: 400 * Self.ms)
        #expect(again != nil)
        _ = sender.acknowledge(sequenceNumber: 0, now: 410 * Self.ms)
        let following = sender.retransmission(now: 410 * Self.ms)
        let next = try #require(following)
        #expect(try AgentMessage.decode(next).sequenceNumber == 1)
        #expect(sender.unacknowledgedFrames.count == 2)
    }

    @Test("a lossy, reordering, duplicating link still delivers every message once, in order")
    func lossyLink() throws {
        var rng = SplitMix64(seed: 77)
        var sender = ReliableStream(configuration: .client)
        var receiver = ReliableStream(configuration: .agent)
        var inFlight: [ByteBuffer] = []
        var delivered: [String] = []
        var now: UInt64 = 0
        var nextToSend = 0
        let total = 500
        while delivered.count < total, now < 600_000 * Self.ms {
            now += 10 * Self.ms
            while nextToSend < total, sender.unacknowledgedCount < 32 {
                inFlight.append(try sender.send(
                    .inputStreamData, payloadType: .output, payload: ByteBuffer(string: "\(nextToSend)"),
                    messageID: .random(using: &rng), createdDate: 1, now: now))
                nextToSend += 1
            }
            if let resend = sender.retransmission(now: now) { inFlight.append(resend) }
            inFlight.shuffle(using: &rng)
            var acks: [Acknowledgement] = []
            for frame in inFlight {
                let roll = Int.random(in: 0..<10, using: &rng)
                if roll == 0 { continue }  // lost
                let message = try AgentMessage.decode(frame)
                let copies = roll == 1 ? 2 : 1
                for _ in 0..<copies {
                    let reception = receiver.receive(message)
                    if let ack = reception.acknowledgement, Int.random(in: 0..<10, using: &rng) != 0 { acks.append(ack) }
                    delivered += reception.deliverable.map { String(buffer: $0.payload) }
                }
            }
            inFlight.removeAll()
            for ack in acks { sender.acknowledge(sequenceNumber: ack.acknowledgedSequenceNumber, now: now) }
        }
        #expect(delivered == (0..<total).map(String.init))
    }
}
