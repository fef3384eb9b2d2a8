import AWSClient
import DataChannel
import LocalSSM
import NIOCore
import NIOPosix
import Sessions

/// One `AWS-StartPortForwardingSession` through the emulator, as `ssmgate forward` runs it:
/// StartSession over HTTP (SigV4), a data channel, and a `LocalPortForwarder` (mux mode with the
/// emulator's current agent) listening on a loopback port; all of it on one event loop.
struct ForwardingSession: Sendable {
    let forwarder: NIOLoopBound<LocalPortForwarder>
    let loop: any EventLoop
    let localPort: Int
    let ended: EventLoopFuture<DataChannelError?>

    static func start(ssm: SSMClient, destinationPort: Int, configuration: DataChannelConfiguration) async throws -> ForwardingSession {
        let response = try await ssm.startSession(
            target: LocalSSMConfiguration.defaultInstanceID, documentName: "AWS-StartPortForwardingSession",
            parameters: ["portNumber": ["\(destinationPort)"], "localPortNumber": ["0"]], reason: "SessionBenchmarks")
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let sessionID = response.sessionID
        let (forwarder, listening, ended) = try await loop.submit {
            let channel = try DataChannel(
                streamURL: response.streamURL, token: response.tokenValue, sessionID: sessionID, clientID: DataChannel.uuid(),
                configuration: configuration, eventLoop: loop,
                renewToken: { try await ssm.resumeSession(sessionID: sessionID).tokenValue })
            let forwarder = LocalPortForwarder(channel: channel, options: .init(), notice: { _ in })
            // A failed connect ends the session, which fails `listening` with the reason.
            channel.connect().whenFailure { _ in }
            return (NIOLoopBound(forwarder, eventLoop: loop), forwarder.listening.futureResult, forwarder.ended.futureResult)
        }.get()
        let port = try await listening.get()
        return ForwardingSession(forwarder: forwarder, loop: loop, localPort: port, ended: ended)
    }

    /// The data channel's counters so far.
    func statistics() async throws -> DataChannelStatistics {
        let forwarder = self.forwarder
        return try await self.loop.submit { forwarder.value.channelStatistics }.get()
    }

    /// Ends the session with the TerminateSession flag and waits until it is over.
    func end() async throws {
        let forwarder = self.forwarder
        try await self.loop.submit { forwarder.value.terminate() }.get()
        if let error = try await self.ended.get() {
            throw TransferError(description: "the session ended with an error: \(error)")
        }
    }
}
