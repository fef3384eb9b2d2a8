import NIOCore
import SSMProtocol
import TestSupport
import Testing

@testable import LocalSSM

@Suite("Service limits as pure rules")
struct LimitsTests {
    static let second: UInt64 = 1_000_000_000

    @Test("the agent's pacing: 1 MB/s charged per 1024-byte read holds ~976 messages/s, under MGS's 1000")
    func agentPacing() {
        var bucket = TokenBucket(rate: 1_000_000, capacity: 100_000)
        var now: UInt64 = 1
        var messages = 0
        // Simulated ten seconds: try to send every 100 µs.
        while now < 10 * Self.second {
            if bucket.take(1024, now: now) { messages += 1 }
            now += 100_000
        }
        let perSecond = Double(messages) / 10
        #expect(perSecond > 960 && perSecond < 1000, "\(perSecond) messages/s")
    }

    @Test("MGS holds a sender over 1000 messages/s, in order, and disconnects one that never stops")
    func messageRate() {
        var side = SessionRelay.Side()
        side.bucket = TokenBucket(rate: 1000, capacity: 1000)
        let frame = ByteBuffer(string: "x")
        var passed = 0
        var held = 0
        var pauses = 0
        for _ in 0..<2500 {
            switch SessionRelay.decide(&side, frame: frame, rate: 1000, now: 1) {
            case .pass: passed += 1
            case .hold(let first): held += 1; if first { pauses += 1 }
            case .drop, .close: Issue.record("dropped too early")
            }
        }
        #expect(passed == 1000)
        #expect(held == 1500)
        #expect(pauses == 1)
        #expect(side.paused)
        // Past the queue: dropped, then, after five seconds' worth, disconnected.
        var outcome = SessionRelay.RateDecision.pass
        for _ in 0..<(500 + 5001) { outcome = SessionRelay.decide(&side, frame: frame, rate: 1000, now: 1) }
        guard case .close = outcome else {
            Issue.record("expected the session to be closed, got \(outcome)")
            return
        }
    }

    @Test func unlimitedHasNoLimits() {
        #expect(LimitsProfile.unlimited.messagesPerSecond == nil)
        #expect(LimitsProfile.unlimited.agentBytesPerSecond == nil)
        #expect(LimitsProfile.aws.messagesPerSecond == 1000)
        #expect(LimitsProfile.aws.agentBytesPerSecond == 1_000_000)
    }
}
