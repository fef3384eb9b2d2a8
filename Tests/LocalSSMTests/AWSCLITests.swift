import Foundation
import TestSupport
import Testing

@testable import LocalSSM

/// The emulator's APIs as the real awscli sees them.
@Suite("LocalSSM API through the real awscli", .serialized)
struct AWSCLITests {
    static let configuration: LocalSSMConfiguration = {
        var configuration = LocalSSMConfiguration(listenPort: 0, limits: .unlimited)
        configuration.instances = [
            .init(id: "i-0123456789abcdef0", tags: ["Name": "local", "env": "dev"]),
            .init(id: "i-0fedcba9876543210", tags: ["Name": "offline"], pingStatus: .connectionLost),
            .init(id: "mi-0123456789abcdef0", tags: ["Name": "onprem"], agentVersion: "3.0.161.0"),
        ]
        configuration.credentials.append(.init(accessKeyID: "sshonly", secretAccessKey: "sshonly-secret", allowedDocuments: ["AWS-StartSSHSession"]))
        return configuration
    }()

    @Test func describeInstanceInformationListsTheConfiguredInstances() async throws {
        try await withEmulator(Self.configuration) { emulator in
            let result = try await aws(["ssm", "describe-instance-information"], endpoint: emulator.server.endpointURL)
            #expect(result.status == 0, "\(result.stderr)")
            let list = try #require(result.json?["InstanceInformationList"] as? [[String: Any]])
            let byID = Dictionary(uniqueKeysWithValues: list.map { ($0["InstanceId"] as! String, $0) })
            #expect(Set(byID.keys) == ["i-0123456789abcdef0", "i-0fedcba9876543210", "mi-0123456789abcdef0"])
            #expect(byID["i-0123456789abcdef0"]?["PingStatus"] as? String == "Online")
            #expect(byID["i-0fedcba9876543210"]?["PingStatus"] as? String == "ConnectionLost")
            #expect(byID["mi-0123456789abcdef0"]?["ResourceType"] as? String == "ManagedInstance")
            #expect(byID["mi-0123456789abcdef0"]?["AgentVersion"] as? String == "3.0.161.0")

            let filtered = try await aws(
                ["ssm", "describe-instance-information", "--filters", "Key=PingStatus,Values=Online", "Key=tag:env,Values=dev"],
                endpoint: emulator.server.endpointURL)
            let ids = (filtered.json?["InstanceInformationList"] as? [[String: Any]])?.compactMap { $0["InstanceId"] as? String }
            #expect(ids == ["i-0123456789abcdef0"])
        }
    }

    @Test func ec2DescribeInstancesFindsNameTags() async throws {
        try await withEmulator(Self.configuration) { emulator in
            let result = try await aws(
                ["ec2", "describe-instances", "--filters", "Name=tag:Name,Values=loc*"], endpoint: emulator.server.endpointURL)
            #expect(result.status == 0, "\(result.stderr)")
            let reservations = try #require(result.json?["Reservations"] as? [[String: Any]])
            let instances = reservations.flatMap { $0["Instances"] as? [[String: Any]] ?? [] }
            #expect(instances.map { $0["InstanceId"] as? String } == ["i-0123456789abcdef0"])
            let tags = instances.first?["Tags"] as? [[String: String]]
            #expect(tags?.contains(["Key": "Name", "Value": "local"]) == true)

            let missing = try await aws(["ec2", "describe-instances", "--instance-ids", "i-00000000000000000"], endpoint: emulator.server.endpointURL)
            #expect(missing.status != 0)
            #expect(missing.stderr.contains("InvalidInstanceID.NotFound"))
        }
    }

    @Test("STS AssumeRole: a temporary key that needs its session token; other accounts and bad names refused with STS's codes")
    func assumeRoleThroughAWSCLI() async throws {
        try await withEmulator(Self.configuration) { emulator in
            let endpoint = emulator.server.endpointURL
            let assumed = try await aws(
                ["sts", "assume-role", "--role-arn", "arn:aws:iam::111122223333:role/ops", "--role-session-name", "alice", "--source-identity", "alice"],
                endpoint: endpoint)
            #expect(assumed.status == 0, "\(assumed.stderr)")
            let credentials = try #require(assumed.json?["Credentials"] as? [String: Any], "\(assumed.stdout)")
            let key = try #require(credentials["AccessKeyId"] as? String)
            let secret = try #require(credentials["SecretAccessKey"] as? String)
            let token = try #require(credentials["SessionToken"] as? String)
            #expect(key.hasPrefix("ASIA") && key.count == 20)
            #expect(credentials["Expiration"] != nil)
            #expect((assumed.json?["AssumedRoleUser"] as? [String: Any])?["Arn"] as? String == "arn:aws:sts::111122223333:assumed-role/ops/alice")
            #expect(assumed.json?["SourceIdentity"] as? String == "alice")

            let asRole = try await aws(["ssm", "describe-instance-information"], endpoint: endpoint, environment: [
                "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": token,
            ])
            #expect(asRole.status == 0, "\(asRole.stderr)")
            let withoutToken = try await aws(["ssm", "describe-instance-information"], endpoint: endpoint, environment: [
                "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
            ])
            #expect(withoutToken.status != 0)
            #expect(!withoutToken.stderr.contains(secret) && !withoutToken.stderr.contains(token))

            let foreign = try await aws(
                ["sts", "assume-role", "--role-arn", "arn:aws:iam::999999999999:role/ops", "--role-session-name", "alice"], endpoint: endpoint)
            #expect(foreign.status != 0)
            #expect(foreign.stderr.contains("AccessDenied") && foreign.stderr.contains("not authorized to perform: sts:AssumeRole"), "\(foreign.stderr)")
            let badName = try await aws(
                ["sts", "assume-role", "--role-arn", "arn:aws:iam::111122223333:role/ops", "--role-session-name", "a b"], endpoint: endpoint)
            #expect(badName.status != 0)
            #expect(badName.stderr.contains("ValidationError"), "\(badName.stderr)")
        }
    }

    @Test func errorsHaveTheirAWSCodes() async throws {
        try await withEmulator(Self.configuration) { emulator in
            let endpoint = emulator.server.endpointURL
            let badSecret = try await aws(["ssm", "describe-instance-information"], endpoint: endpoint, environment: ["AWS_SECRET_ACCESS_KEY": "wrong"])
            #expect(badSecret.status != 0)
            #expect(badSecret.stderr.contains("InvalidSignatureException"))
            #expect(!badSecret.stderr.contains("wrong"))

            let unknownKey = try await aws(["ssm", "describe-instance-information"], endpoint: endpoint, environment: ["AWS_ACCESS_KEY_ID": "nobody"])
            #expect(unknownKey.stderr.contains("UnrecognizedClientException"))

            let ec2BadSecret = try await aws(["ec2", "describe-instances"], endpoint: endpoint, environment: ["AWS_SECRET_ACCESS_KEY": "wrong"])
            #expect(ec2BadSecret.stderr.contains("AuthFailure") || ec2BadSecret.stderr.contains("SignatureDoesNotMatch"))

            let unknownTarget = try await aws(["ssm", "start-session", "--target", "i-00000000000000bad"], endpoint: endpoint)
            #expect(unknownTarget.stderr.contains("TargetNotConnected"))
            let offline = try await aws(["ssm", "start-session", "--target", "i-0fedcba9876543210"], endpoint: endpoint)
            #expect(offline.stderr.contains("TargetNotConnected"))
            #expect(offline.stderr.contains("i-0fedcba9876543210 is not connected"))

            let badDocument = try await aws(
                ["ssm", "start-session", "--target", "i-0123456789abcdef0", "--document-name", "AWS-NoSuchDocument"], endpoint: endpoint)
            #expect(badDocument.stderr.contains("InvalidDocument"))

            let missingHost = try await aws(
                ["ssm", "start-session", "--target", "i-0123456789abcdef0", "--document-name", "AWS-StartPortForwardingSessionToRemoteHost",
                 "--parameters", #"{"portNumber":["5432"]}"#], endpoint: endpoint)
            #expect(missingHost.stderr.contains("InvalidParameters"))
            #expect(missingHost.stderr.contains("host"))

            let denied = try await aws(
                ["ssm", "start-session", "--target", "i-0123456789abcdef0", "--document-name", "AWS-StartPortForwardingSession"],
                endpoint: endpoint, environment: ["AWS_ACCESS_KEY_ID": "sshonly", "AWS_SECRET_ACCESS_KEY": "sshonly-secret"])
            #expect(denied.stderr.contains("AccessDeniedException"))
            #expect(denied.stderr.contains("ssm:StartSession"))

            let resumeUnknown = try await aws(["ssm", "resume-session", "--session-id", "nobody-0123"], endpoint: endpoint)
            #expect(resumeUnknown.stderr.contains("DoesNotExistException"))

            // The emulator is still serving after all that.
            let healthy = try await aws(["ssm", "describe-instance-information"], endpoint: endpoint)
            #expect(healthy.status == 0)
        }
    }

    @Test func serviceSpecificEndpointVariableWorks() async throws {
        try await withEmulator(Self.configuration) { emulator in
            // Without --endpoint-url: AWS_ENDPOINT_URL_SSM, as `ssmgate local` prints it.
            var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") }
            environment["AWS_ACCESS_KEY_ID"] = "test"
            environment["AWS_SECRET_ACCESS_KEY"] = "test"
            environment["AWS_DEFAULT_REGION"] = "us-east-1"
            environment["AWS_CONFIG_FILE"] = "/dev/null"
            environment["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"
            environment["AWS_ENDPOINT_URL_SSM"] = emulator.server.endpointURL
            let executable = try #require(findExecutable("aws"))
            let result = try await run(executable, ["ssm", "describe-instance-information", "--output", "json"], environment: environment)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.contains("i-0123456789abcdef0"))
        }
    }
}
