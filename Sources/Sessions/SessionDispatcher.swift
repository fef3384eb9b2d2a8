import DataChannel
import NIOCore
import SSMProtocol

/// Picks what runs on a data channel from what the agent says the session is, as the official
/// client does (reference 1.4, 7.4.2): it never looks at the document name.
///
/// Port + `LocalPortForwarding` → a local listener (mux or basic); other Port sessions → stdin/stdout
/// forwarding; shells and commands → the terminal.
public final class SessionDispatcher: DataChannelDelegate {
    public enum Running {
        case waiting
        case localPort(LocalPortForwarder)
        case standardStreams(StdioForwarder)
        case shell(ShellSession)
    }

    public struct Outcome: Sendable {
        public var error: DataChannelError?
        public var exitCode: Int32?
    }

    let channel: DataChannel
    let notice: NoticeSink
    let bindHost: String
    public private(set) var running: Running = .waiting
    public let ended: EventLoopPromise<Outcome>

    public init(channel: DataChannel, bindHost: String = "127.0.0.1", notice: @escaping NoticeSink) {
        self.channel = channel
        self.notice = notice
        self.bindHost = bindHost
        self.ended = channel.eventLoop.makePromise()
        channel.delegate = self
    }

    /// What the user's Ctrl-C means for the running session.
    public func interrupt() {
        switch self.running {
        case .localPort(let forwarder):
            self.notice("\n\nExiting session with sessionId: \(self.channel.sessionID).\n\n")
            forwarder.terminate()
        case .standardStreams, .waiting:
            self.channel.close()
        case .shell:
            break  // the shell session turns signals into control bytes itself
        }
    }

    public func dataChannel(_ channel: DataChannel, didStart session: StartedSession) {
        let ended = self.ended
        if session.isPort, session.properties["type"]?.stringValue == "LocalPortForwarding" {
            let port = Int(session.properties["localPortNumber"]?.stringValue ?? "") ?? 0
            let forwarder = LocalPortForwarder(
                channel: channel, options: .init(bindHost: self.bindHost, localPort: port), notice: self.notice)
            self.running = .localPort(forwarder)
            forwarder.ended.futureResult.whenSuccess { ended.succeed(Outcome(error: $0, exitCode: nil)) }
            forwarder.dataChannel(channel, didStart: session)
        } else if session.isPort {
            let forwarder = StdioForwarder(channel: channel, notice: self.notice)
            self.running = .standardStreams(forwarder)
            forwarder.attach()
            forwarder.ended.futureResult.whenSuccess { ended.succeed(Outcome(error: $0, exitCode: nil)) }
            forwarder.dataChannel(channel, didStart: session)
        } else {
            let shell = ShellSession(channel: channel, notice: self.notice)
            self.running = .shell(shell)
            shell.attach()
            shell.ended.futureResult.assumeIsolated().whenSuccess { ended.succeed(Outcome(error: $0, exitCode: shell.exitCode)) }
            shell.dataChannel(channel, didStart: session)
        }
    }

    public func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool { true }
    public func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType) {}
    public func dataChannelDidBecomeWritable(_ channel: DataChannel) {}
    public func dataChannel(_ channel: DataChannel, customerMessage: String) { self.notice(customerMessage + "\n") }

    public func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?) {
        self.ended.succeed(Outcome(error: error, exitCode: nil))
    }
}
