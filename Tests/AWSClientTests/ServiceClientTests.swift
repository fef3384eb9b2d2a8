import AsyncHTTPClient
import Foundation
import LocalSSM
import SigV4
import Testing
import TestSupport

@testable import AWSClient

/// A configuration pointing SSM (`--endpoint-url`) and EC2 (`AWS_ENDPOINT_URL_EC2`) at `endpoint`.
func emulatorConfiguration(_ home: TemporaryHome, endpoint: String, secret: String = "test") throws -> AWSClientConfiguration {
    try configuration(
        home, ["AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL_EC2": endpoint],
        endpointURL: endpoint)
}

@Suite struct SSMEmulatorTests {
    @Test func sessionLifecycle() async throws {
        try await withEmulator { emulator in
            try await withHome { home in
                let config = try emulatorConfiguration(home, endpoint: emulator.server.endpointURL)
                try await withHTTPClient { client in
                    let ssm = SSMClient(configuration: config, credentials: CredentialChain(configuration: config, httpClient: client), httpClient: client)
                    let started = try await ssm.startSession(
                        target: LocalSSMConfiguration.defaultInstanceID, documentName: "AWS-StartPortForwardingSession",
                        parameters: ["portNumber": ["22"], "localPortNumber": ["0"]], reason: "test")
                    #expect(!started.sessionID.isEmpty)
                    #expect(!started.tokenValue.isEmpty)
                    #expect(started.streamURL.contains("/v1/data-channel/\(started.sessionID)"))
                    #expect(!"\(started)".contains(started.tokenValue))

                    let resumed = try await ssm.resumeSession(sessionID: started.sessionID)
                    #expect(resumed.sessionID == started.sessionID)
                    #expect(!resumed.isExpired)
                    #expect(resumed.tokenValue != started.tokenValue)

                    try await ssm.terminateSession(sessionID: started.sessionID)
                    let after = try await ssm.resumeSession(sessionID: started.sessionID)
                    #expect(after.isExpired)
                }
            }
        }
    }

    @Test func describeInstanceInformationAndEC2NameTags() async throws {
        try await withEmulator { emulator in
            try await withHome { home in
                let config = try emulatorConfiguration(home, endpoint: emulator.server.endpointURL)
                try await withHTTPClient { client in
                    let credentials = CredentialChain(configuration: config, httpClient: client)
                    let ssm = SSMClient(configuration: config, credentials: credentials, httpClient: client)
                    let all = try await ssm.describeInstanceInformation(filters: [])
                    let instance = try #require(all.first { $0.instanceID == LocalSSMConfiguration.defaultInstanceID })
                    #expect(instance.pingStatus == "Online")
                    #expect(instance.platformType == "Linux")
                    #expect(instance.resourceType == "EC2Instance")
                    #expect(instance.agentVersion == LocalSSMConfiguration.currentAgentVersion)
                    #expect(instance.ipAddress == "127.0.0.1")
                    let none = try await ssm.describeInstanceInformation(filters: [(key: "PingStatus", values: ["Inactive"])])
                    #expect(none.isEmpty)

                    let ec2 = EC2Client(configuration: config, credentials: credentials, httpClient: client)
                    let named = try await ec2.describeInstances(instanceIDs: [], filters: [(name: "tag:Name", values: ["local"])])
                    #expect(named.map(\.instanceID) == [LocalSSMConfiguration.defaultInstanceID])
                    #expect(named.first?.name == "local")
                    #expect(named.first?.state == "running")
                    #expect(named.first?.privateIPAddress == "127.0.0.1")
                    let other = try await ec2.describeInstances(instanceIDs: [], filters: [(name: "tag:Name", values: ["nope"])])
                    #expect(other.isEmpty)
                    let missing = await #expect(throws: AWSServiceError.self) {
                        try await ec2.describeInstances(instanceIDs: ["i-00000000000000bad"], filters: [])
                    }
                    #expect(missing?.code == "InvalidInstanceID.NotFound")
                    #expect(missing?.description.contains("i-00000000000000bad") == true)
                }
            }
        }
    }

    @Test func explicitConfigurationForTheEmbeddedEmulator() async throws {
        try await withEmulator { emulator in
            let url = URL(string: emulator.server.endpointURL)!
            let config = AWSClientConfiguration(
                region: "us-east-1", endpoints: AWSServiceEndpoints(ssm: url, ec2: url, kms: url, sts: url, sso: url))
            try await withHTTPClient { client in
                let credentials = StaticCredentialProvider(AWSCredentials(accessKeyID: "test", secretAccessKey: "test"))
                let ssm = SSMClient(configuration: config, credentials: credentials, httpClient: client)
                let list = try await ssm.describeInstanceInformation(filters: [(key: "InstanceIds", values: [LocalSSMConfiguration.defaultInstanceID])])
                #expect(list.map(\.instanceID) == [LocalSSMConfiguration.defaultInstanceID])
                await #expect(throws: AWSConfigurationError.self) {
                    try await CredentialChain(configuration: config, httpClient: client).credentials()
                }
            }
        }
    }

    @Test func wrongSecretIsRejectedWithoutShowingIt() async throws {
        try await withEmulator { emulator in
            try await withHome { home in
                let config = try emulatorConfiguration(home, endpoint: emulator.server.endpointURL, secret: "wrong-secret-value")
                try await withHTTPClient { client in
                    let ssm = SSMClient(configuration: config, credentials: CredentialChain(configuration: config, httpClient: client), httpClient: client)
                    let error = await #expect(throws: AWSServiceError.self) {
                        try await ssm.startSession(target: LocalSSMConfiguration.defaultInstanceID, documentName: nil, parameters: [:], reason: nil)
                    }
                    let failure = try #require(error)
                    #expect(["InvalidSignatureException", "UnrecognizedClientException"].contains(failure.code))
                    #expect(failure.httpStatus == 400 || failure.httpStatus == 403)
                    #expect(failure.attempts == 1)
                    #expect(failure.description.contains("credentials"))
                    #expect(!failure.description.contains("wrong-secret-value"))
                    #expect(!"\(failure)".contains("wrong-secret-value"))
                }
            }
        }
    }

    @Test func unknownTargetIsExplained() async throws {
        try await withEmulator { emulator in
            try await withHome { home in
                let config = try emulatorConfiguration(home, endpoint: emulator.server.endpointURL)
                try await withHTTPClient { client in
                    let ssm = SSMClient(configuration: config, credentials: CredentialChain(configuration: config, httpClient: client), httpClient: client)
                    let error = await #expect(throws: AWSServiceError.self) {
                        try await ssm.startSession(target: "i-0000000000000dead", documentName: nil, parameters: [:], reason: nil)
                    }
                    let failure = try #require(error)
                    #expect(failure.code == "TargetNotConnected")
                    #expect(failure.description.contains("The SSM agent on i-0000000000000dead is offline or not connected"))
                    #expect(failure.description.contains("us-east-1"))
                }
            }
        }
    }
}

@Suite struct ServiceErrorTests {
    @Test func tokensNeverAppearInErrors() async throws {
        let sessionToken = "IQoJb3JpZ2luX2VjSESSIONTOKEN"
        let streamToken = "stream-token-that-must-stay-secret"
        try await FakeHTTPServer.with({ request in
            switch request.header("X-Amz-Target") {
            case "AmazonSSM.StartSession":
                // A malformed success: TokenValue but no StreamUrl.
                return .json(["SessionId": "alice-0123", "TokenValue": streamToken])
            default:
                // A service message that echoes the caller's session token.
                return .json(["__type": "com.amazon#ValidationException", "message": "bad token \(sessionToken)"], status: 400)
            }
        }) { server in
            try await withHome { home in
                let config = try configuration(
                    home, ["AWS_ACCESS_KEY_ID": "ASIAX", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_SESSION_TOKEN": sessionToken],
                    endpointURL: server.baseURL)
                try await withHTTPClient { client in
                    let ssm = SSMClient(configuration: config, credentials: CredentialChain(configuration: config, httpClient: client), httpClient: client)
                    let started = await #expect(throws: AWSServiceError.self) {
                        try await ssm.startSession(target: "i-1", documentName: nil, parameters: [:], reason: nil)
                    }
                    let resumed = await #expect(throws: AWSServiceError.self) {
                        try await ssm.resumeSession(sessionID: "alice-0123")
                    }
                    #expect(resumed?.code == "ValidationException")
                    for error in [started, resumed].compactMap({ $0 }) {
                        for text in ["\(error)", String(reflecting: error), error.message] {
                            #expect(!text.contains(streamToken))
                            #expect(!text.contains(sessionToken))
                            #expect(!text.contains("s3cr3t-value"))
                        }
                    }
                }
                // The signed requests did carry the token, as they must.
                #expect(server.requests.first?.header("X-Amz-Security-Token") == sessionToken)
            }
        }
    }

    @Test func throttlingAndServerErrorsAreRetriedClientErrorsAreNot() async throws {
        let calls = Counter()
        try await FakeHTTPServer.with({ request in
            let body = String(decoding: request.body, as: UTF8.self)
            if body.contains("retry-me") {
                let n = calls.increment()
                if n == 1 { return .json(["__type": "ThrottlingException", "message": "Rate exceeded"], status: 400) }
                if n == 2 { return .json(["message": "oops"], status: 503) }
                return .json(["SessionId": "s-1"])
            }
            return .json(["__type": "InvalidDocument", "message": "Document with name X does not exist."], status: 400)
        }) { server in
            try await withHome { home in
                let config = try configuration(home, ["AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S"], endpointURL: server.baseURL)
                try await withHTTPClient { client in
                    let ssm = SSMClient(configuration: config, credentials: StaticCredentialProvider(.init(accessKeyID: "A", secretAccessKey: "S")), httpClient: client)
                    try await ssm.terminateSession(sessionID: "retry-me")
                    #expect(calls.count == 3)
                    let error = await #expect(throws: AWSServiceError.self) {
                        try await ssm.startSession(target: "i-1", documentName: "X", parameters: [:], reason: nil)
                    }
                    #expect(error?.code == "InvalidDocument")
                    #expect(server.requests.count == 4)
                }
            }
        }
    }

    @Test func expiredCredentialsAreFetchedAgainOnce() async throws {
        let fetches = Counter()
        let chain = CredentialChain(sources: [
            ClosureCredentialSource("rotating") {
                let n = fetches.increment()
                return AWSCredentials(accessKeyID: "ASIA\(n)", secretAccessKey: "s", expiration: Date().addingTimeInterval(3600))
            }
        ])
        try await FakeHTTPServer.with({ request in
            // The first key has been revoked on the service side although it has not reached its expiry.
            if request.header("Authorization")?.contains("Credential=ASIA1/") == true {
                return .json(["__type": "ExpiredTokenException", "message": "The security token included in the request is expired"], status: 400)
            }
            return .json(["SessionId": "s-1"])
        }) { server in
            try await withHome { home in
                let config = try configuration(home, [:], endpointURL: server.baseURL)
                try await withHTTPClient { client in
                    let ssm = SSMClient(configuration: config, credentials: chain, httpClient: client)
                    try await ssm.terminateSession(sessionID: "s-1")
                    #expect(fetches.count == 2)
                    #expect(server.requests.count == 2)
                }
            }
        }
    }

    @Test func accessDeniedNamesActionAndTarget() {
        let error = AWSServiceError(
            service: "ssm", operation: "StartSession", code: "AccessDeniedException",
            message: "User: arn:aws:iam::1:user/bob is not authorized to perform: ssm:StartSession", httpStatus: 400,
            requestID: "r-1", resource: "i-0abc", region: "eu-west-1")
        #expect(error.description.contains("ssm:StartSession"))
        #expect(error.description.contains("i-0abc"))
        #expect(error.description.contains("IAM"))
        let expired = AWSServiceError(service: "ssm", operation: "StartSession", code: "ExpiredTokenException", message: "", httpStatus: 400)
        #expect(expired.description.contains("Refresh"))
        #expect(!expired.isRetryable)
    }

    @Test func kmsGenerateDataKey() async throws {
        try await FakeHTTPServer.with({ request in
            guard request.header("X-Amz-Target") == "TrentService.GenerateDataKey",
                request.header("Content-Type") == "application/x-amz-json-1.1",
                request.header("Authorization")?.contains("/us-east-1/kms/aws4_request") == true,
                let body = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any],
                body["KeyId"] as? String == "alias/ssm", body["NumberOfBytes"] as? Int == 64,
                (body["EncryptionContext"] as? [String: String])?["aws:ssm:SessionId"] == "s-1"
            else { return .json(["__type": "ValidationException", "message": "unexpected request"], status: 400) }
            return .json([
                "KeyId": "arn:aws:kms:us-east-1:1:key/k", "Plaintext": Data((0..<64).map { UInt8($0) }).base64EncodedString(),
                "CiphertextBlob": Data([9, 8, 7]).base64EncodedString(),
            ])
        }) { server in
            try await withHome { home in
                let config = try configuration(
                    home, ["AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S", "AWS_ENDPOINT_URL_KMS": server.baseURL])
                try await withHTTPClient { client in
                    let kms = KMSClient(configuration: config, credentials: CredentialChain(configuration: config, httpClient: client), httpClient: client)
                    let key = try await kms.generateDataKey(
                        keyID: "alias/ssm", encryptionContext: ["aws:ssm:SessionId": "s-1", "aws:ssm:TargetId": "i-1"], numberOfBytes: 64)
                    #expect(key.plaintext == (0..<64).map { UInt8($0) })
                    #expect(key.ciphertextBlob == [9, 8, 7])
                }
            }
        }
    }
}
