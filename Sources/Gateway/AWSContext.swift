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
        self.configuration = try AWSClientConfiguration.resolve(
            environment: environment, profile: profile, region: region, endpointURL: endpointURL, homeDirectory: home)
        self.httpClient = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton))
        let chain = CredentialChain(configuration: self.configuration, httpClient: self.httpClient)
        self.credentials = chain
        self.ssm = SSMClient(configuration: self.configuration, credentials: chain, httpClient: self.httpClient)
        var dataChannel = DataChannelConfiguration()
        if let size = environment["SSMGATE_PAYLOAD_SIZE"].flatMap(Int.init), (1...65536).contains(size) {
            dataChannel.maximumPayloadSize = size
        }
        if let rate = environment["SSMGATE_MESSAGES_PER_SECOND"] {
            dataChannel.messagesPerSecond = rate == "unlimited" ? nil : Int(rate).flatMap { $0 > 0 ? $0 : nil } ?? dataChannel.messagesPerSecond
        }
        self.dataChannelConfiguration = dataChannel
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

