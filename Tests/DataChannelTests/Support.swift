import Crypto
import DataChannel
import Foundation
import NIOCore
import NIOPosix
import SSMProtocol
import Sessions
import Synchronization
import TestSupport
import Testing

@testable import LocalSSM


struct StartedTestSession: Sendable {
    var sessionID: String
    var token: String
    var streamURL: String
}

/// StartSession through the emulator's API object (its SigV4 front is covered by the awscli tests).
func startSession(_ emulator: LocalEmulator, document: String, parameters: [String: String]) async throws -> StartedTestSession {
    let request = JSONValue.object([
        ("Target", .string(LocalSSMConfiguration.defaultInstanceID)),
        ("DocumentName", .string(document)),
        ("Parameters", .object(parameters.map { ($0.key, JSONValue.array([.string($0.value)])) })),
    ])
    let caller = try #require(emulator.configuration.credentials.first)
    let response = try await emulator.server.api.startSession(request, caller: caller)
    return StartedTestSession(
        sessionID: try #require(response["SessionId"]?.stringValue),
        token: try #require(response["TokenValue"]?.stringValue),
        streamURL: try #require(response["StreamUrl"]?.stringValue))
}

/// ResumeSession through the emulator's API object.
func resumer(_ emulator: LocalEmulator, sessionID: String) -> DataChannel.TokenRenewal {
    {
        let response = try emulator.server.api.resumeSession(.object([("SessionId", .string(sessionID))]))
        return response["TokenValue"]?.stringValue
    }
}



/// Collects notices from a session for assertions.
final class NoticeLog: Sendable {
    let lines = Mutex<[String]>([])
    var sink: NoticeSink { { text in self.lines.withLock { $0.append(text) } } }
    var text: String { self.lines.withLock { $0.joined() } }
}

/// Opens a data channel and a local port forwarder on one loop; returns the forwarder's port.
struct ForwarderHandle: Sendable {
    let forwarder: NIOLoopBound<LocalPortForwarder>
    let loop: any EventLoop
    let port: Int
    let ended: EventLoopFuture<DataChannelError?>

    static func open(
        _ session: StartedTestSession, emulator: LocalEmulator, configuration: DataChannelConfiguration = DataChannelConfiguration(messagesPerSecond: nil),
        notices: NoticeLog
    ) async throws -> ForwarderHandle {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let renew = resumer(emulator, sessionID: session.sessionID)
        let (bound, listening, ended) = try await loop.submit {
            let channel = try DataChannel(
                streamURL: session.streamURL, token: session.token, sessionID: session.sessionID, clientID: DataChannel.uuid(),
                configuration: configuration, eventLoop: loop, renewToken: renew)
            let forwarder = LocalPortForwarder(channel: channel, options: .init(linger: .seconds(2)), notice: notices.sink)
            channel.connect().whenFailure { _ in }
            return (NIOLoopBound(forwarder, eventLoop: loop), forwarder.listening.futureResult, forwarder.ended.futureResult)
        }.get()
        let port = try await listening.get()
        return ForwarderHandle(forwarder: bound, loop: loop, port: port, ended: ended)
    }

    func terminate() async throws {
        let forwarder = self.forwarder
        try await self.loop.submit { forwarder.value.terminate() }.get()
    }
}
