import AWSClient
import AsyncHTTPClient
import DataChannel
import Foundation
import NIOCore
import NIOPosix
import Sessions

/// What every single-session command needs: resolved AWS settings, credentials, the API clients,
/// and the way from a StartSession response to an open data channel.
struct ClientContext: Sendable {
    let configuration: AWSClientConfiguration
    let credentials: CredentialChain
    let httpClient: HTTPClient
    let ssm: SSMClient
    let dataChannelConfiguration: DataChannelConfiguration

    init(profile: String?, region: String?, endpointURL: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        let home = environment["HOME"] ?? NSHomeDirectory()
        self.configuration = try AWSClientConfiguration.resolve(
            environment: environment, profile: profile, region: region, endpointURL: endpointURL, homeDirectory: home)
        self.httpClient = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton))
        self.credentials = CredentialChain(configuration: self.configuration, httpClient: self.httpClient)
        self.ssm = SSMClient(configuration: self.configuration, credentials: self.credentials, httpClient: self.httpClient)
        var dataChannel = DataChannelConfiguration()
        if let size = environment["SSMGATE_PAYLOAD_SIZE"].flatMap(Int.init), (1...65536).contains(size) {
            dataChannel.maximumPayloadSize = size
        }
        if let rate = environment["SSMGATE_MESSAGES_PER_SECOND"] {
            dataChannel.messagesPerSecond = rate == "unlimited" ? nil : Int(rate).flatMap { $0 > 0 ? $0 : nil } ?? dataChannel.messagesPerSecond
        }
        self.dataChannelConfiguration = dataChannel
    }

    func shutdown() async {
        try? await self.httpClient.shutdown()
    }

    var ec2: EC2Client { EC2Client(configuration: self.configuration, credentials: self.credentials, httpClient: self.httpClient) }
    var kms: KMSClient { KMSClient(configuration: self.configuration, credentials: self.credentials, httpClient: self.httpClient) }

    /// Builds the data channel for a started session on `loop`: ResumeSession after drops, KMS
    /// GenerateDataKey when the agent asks for encryption.
    func makeDataChannel(
        for response: StartSessionResponse, target: String, clientID: String, on loop: any EventLoop
    ) throws -> DataChannel {
        let ssm = self.ssm
        let kms = self.kms
        let sessionID = response.sessionID
        return try DataChannel(
            streamURL: response.streamURL, token: response.tokenValue, sessionID: sessionID, clientID: clientID,
            configuration: self.dataChannelConfiguration, eventLoop: loop,
            renewToken: { try await ssm.resumeSession(sessionID: sessionID).tokenValue },
            dataKeyProvider: { keyID in
                try await kms.generateDataKey(
                    keyID: keyID, encryptionContext: ["aws:ssm:SessionId": sessionID, "aws:ssm:TargetId": target], numberOfBytes: 64)
            })
    }
}

/// Runs one session on the terminal/stdio/a local port until it ends, and returns the exit status.
enum SessionRun {
    /// - Parameter notice: where the session's user-facing messages go.
    static func run(
        context: ClientContext, response: StartSessionResponse, target: String, bindHost: String = "127.0.0.1",
        notice: @escaping NoticeSink, onEnd: (@Sendable (SessionDispatcher.Outcome) -> Void)? = nil
    ) async throws -> SessionDispatcher.Outcome {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let clientID = DataChannel.uuid()
        let (ended, dispatcher) = try await loop.submit {
            let channel = try context.makeDataChannel(for: response, target: target, clientID: clientID, on: loop)
            let dispatcher = SessionDispatcher(channel: channel, bindHost: bindHost, notice: notice)
            channel.connect().whenFailure { _ in }  // failures arrive through the delegate
            return (dispatcher.ended.futureResult, NIOLoopBound(dispatcher, eventLoop: loop))
        }.get()
        let interrupts = SignalRelay(signals: [SIGINT, SIGTERM, SIGHUP]) {
            loop.execute { dispatcher.value.interrupt() }
        }
        defer { interrupts.cancel() }
        let outcome = try await ended.get()
        onEnd?(outcome)
        return outcome
    }
}

/// Turns signals into a callback (dispatch sources; the default action is suspended meanwhile).
final class SignalRelay {
    let sources: [any DispatchSourceSignal]

    init(signals: [CInt], handler: @escaping @Sendable () -> Void) {
        var sources: [any DispatchSourceSignal] = []
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler(handler: handler)
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    func cancel() {
        for source in self.sources { source.cancel() }
    }
}

/// Messages to the user on standard error.
enum Console {
    static func error(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }

    static func out(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
