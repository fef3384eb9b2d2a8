import Mux
import NIOCore
import Testing

/// smux keepalive (reference 8.3): NOP every interval, dead after a silent timeout window.
@Suite struct KeepAliveTests {
    static let nop = "0103000000000000"
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    static func at(_ seconds: Int64) -> NIODeadline { t0 + .seconds(seconds) }

    @Test func disabledByConfiguration() {
        var session = SmuxSession(role: .client, configuration: .test())
        #expect(session.keepAliveCheck(now: Self.t0) == .disabled)
        #expect(!session.hasPendingOutbound)
    }

    @Test func pingsEveryIntervalAndDiesAfterASilentWindow() throws {
        var session = SmuxSession(role: .client, configuration: SmuxConfiguration(keepAlive: .smuxDefault))
        #expect(session.keepAliveCheck(now: Self.t0) == .wait(until: Self.at(10)))
        #expect(session.keepAliveCheck(now: Self.at(5)) == .wait(until: Self.at(10)))
        #expect(session.keepAliveCheck(now: Self.at(10)) == .keepAliveQueued(nextCheck: Self.at(20)))
        #expect(session.drainOutbound().hex == Self.nop)
        _ = try session.receive(ByteBuffer(hex: Self.nop))  // the peer is alive
        #expect(session.keepAliveCheck(now: Self.at(20)) == .keepAliveQueued(nextCheck: Self.at(30)))
        #expect(session.keepAliveCheck(now: Self.at(30)) == .keepAliveQueued(nextCheck: Self.at(40)))
        // One NOP pending at most, however many ticks passed.
        #expect(session.drainOutbound().hex == Self.nop)
        // Nothing arrives from 30 s to 60 s: dead.
        _ = session.keepAliveCheck(now: Self.at(40))
        _ = session.keepAliveCheck(now: Self.at(50))
        guard case .sessionFailed(let error) = session.keepAliveCheck(now: Self.at(60)) else {
            Issue.record("no timeout")
            return
        }
        #expect(error.code == .keepAliveTimeout)
        #expect(expectSessionError { _ = try session.receive(ByteBuffer(hex: Self.nop)) } == error)
    }

    @Test func silenceFromTheStartTimesOut() {
        var session = SmuxSession(
            role: .server,
            configuration: SmuxConfiguration(keepAlive: .init(interval: .seconds(1), timeout: .seconds(3)))
        )
        _ = session.keepAliveCheck(now: Self.t0)
        #expect(session.keepAliveCheck(now: Self.at(1)) == .keepAliveQueued(nextCheck: Self.at(2)))
        #expect(session.keepAliveCheck(now: Self.at(2)) == .keepAliveQueued(nextCheck: Self.at(3)))
        guard case .sessionFailed = session.keepAliveCheck(now: Self.at(3)) else {
            Issue.record("no timeout")
            return
        }
    }

    @Test func lateChecksSkipMissedTicks() throws {
        var session = SmuxSession(role: .client, configuration: SmuxConfiguration(keepAlive: .smuxDefault))
        _ = session.keepAliveCheck(now: Self.t0)
        _ = try session.receive(ByteBuffer(hex: Self.nop))
        #expect(session.keepAliveCheck(now: Self.at(35)) == .keepAliveQueued(nextCheck: Self.at(40)))
        #expect(session.drainOutbound().hex == Self.nop)
    }
}
