import AWSClient
import AsyncHTTPClient
import DataChannel
import Foundation
import NIOCore
import NIOPosix

/// What every session needs, for single-session commands and the gateway alike: resolved AWS settings, credentials, the API clients,
/// and the way from a StartSession response to an open data channel.
public struct AWSContext: Sendable {
    public let configuration: AWSClientConfiguration
    public let credentials: any AWSCredentialProvider
    public let httpClient: HTTPClient
    public let ssm: SSMClient
    public let dataChannelConfiguration: DataChannelConfiguration

    public init(profile: String?, region: String?, endpointURL: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        let home = environment["HOME"] ?? NSHomeDirectory()
        // Everything that can throw comes before the HTTP client, which must be shut down once made.
        self.dataChannelConfiguration = try Self.dataChannelConfiguration(environment: environment)
        self.configuration = try AWSClientConfiguration.resolve(
            environment: environment, profile: profile, region: region, endpointURL: endpointURL, homeDirectory: home)
        self.httpClient = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton))
        let chain = CredentialChain(configuration: self.configuration, httpClient: self.httpClient)
        self.credentials = chain
        self.ssm = SSMClient(configuration: self.configuration, credentials: chain, httpClient: self.httpClient)
    }

    /// The data-channel settings with the measurement overrides of the environment applied. A value
    /// out of range is an error (naming the variable), not silently the default.
    public static func dataChannelConfiguration(environment: [String: String]) throws -> DataChannelConfiguration {
        func integer(_ name: String, in range: ClosedRange<Int>) throws -> Int? {
            guard let text = environment[name] else { return nil }
            guard let value = Int(text), range.contains(value) else {
                throw AWSConfigurationError(
                    problem: "\(name) is '\(text)', not a whole number from \(range.lowerBound) to \(range.upperBound)",
                    remedy: "set it to such a number, or unset it for the default")
            }
            return value
        }
        var dataChannel = DataChannelConfiguration()
        if let size = try integer("SSMGATE_PAYLOAD_SIZE", in: 1...65536) { dataChannel.maximumPayloadSize = size }
        if environment["SSMGATE_MESSAGES_PER_SECOND"] == "unlimited" {
            dataChannel.messagesPerSecond = nil
        } else if let rate = try? integer("SSMGATE_MESSAGES_PER_SECOND", in: 1...1_000_000) {
            dataChannel.messagesPerSecond = rate
        } else if let text = environment["SSMGATE_MESSAGES_PER_SECOND"] {
            throw AWSConfigurationError(
                problem: "SSMGATE_MESSAGES_PER_SECOND is '\(text)', not a whole number from 1 to 1000000 or 'unlimited'",
                remedy: "set it to such a value, or unset it for the default (900)")
        }
        // Without the service's rate to keep under, the round trip bounds a stream: a wider window.
        if dataChannel.messagesPerSecond == nil { dataChannel.sendWindow = DataChannelConfiguration.unpacedSendWindow }
        if let window = try integer("SSMGATE_SEND_WINDOW", in: 1...100_000) { dataChannel.sendWindow = window }
        return dataChannel
    }

    init(configuration: AWSClientConfiguration, credentials: any AWSCredentialProvider, httpClient: HTTPClient,
         dataChannelConfiguration: DataChannelConfiguration) {
        self.configuration = configuration
        self.credentials = credentials
        self.httpClient = httpClient
        self.ssm = SSMClient(configuration: configuration, credentials: credentials, httpClient: httpClient)
        self.dataChannelConfiguration = dataChannelConfiguration
    }

    /// The same settings with other credentials (a user's assumed role); shares the HTTP client.
    public func with(credentials: any AWSCredentialProvider) -> AWSContext {
        AWSContext(configuration: self.configuration, credentials: credentials, httpClient: self.httpClient,
                   dataChannelConfiguration: self.dataChannelConfiguration)
    }

    public var sts: STSClient { STSClient(configuration: self.configuration, credentials: self.credentials, httpClient: self.httpClient) }

    public func shutdown() async {
        try? await self.httpClient.shutdown()
    }

    public var ec2: EC2Client { EC2Client(configuration: self.configuration, credentials: self.credentials, httpClient: self.httpClient) }
    public var kms: KMSClient { KMSClient(configuration: self.configuration, credentials: self.credentials, httpClient: self.httpClient) }

    /// Builds the data channel for a started session on `loop`: ResumeSession after drops, KMS
    /// GenerateDataKey when the agent asks for encryption.
    public func makeDataChannel(
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

