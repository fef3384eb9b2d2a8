import AsyncHTTPClient
import Crypto
import Foundation
import SigV4
import TestSupport
import Testing

@testable import AWSClient

@Suite struct CredentialChainTests {
    // MARK: - Environment and files

    @Test func environmentKeysComeFirst() async throws {
        try await withHome { home in
            try home.write(".aws/credentials", "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = filesecret\n")
            let config = try configuration(
                home, ["AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_SESSION_TOKEN": "envtoken"])
            try await withHTTPClient { client in
                let chain = CredentialChain(configuration: config, httpClient: client)
                let credentials = try await chain.credentials()
                #expect(credentials.accessKeyID == "AKIDENV")
                #expect(credentials.secretAccessKey == "envsecret")
                #expect(credentials.sessionToken == "envtoken")
                #expect(chain.sourceDescription == "environment")
            }
        }
    }

    @Test func explicitProfileSkipsEnvironmentKeys() async throws {
        try await withHome { home in
            try home.write(".aws/credentials", "[dev]\naws_access_key_id = AKIDDEV\naws_secret_access_key = devsecret\n")
            let config = try configuration(
                home, ["AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "envsecret"], profile: "dev")
            try await withHTTPClient { client in
                let credentials = try await CredentialChain(configuration: config, httpClient: client).credentials()
                #expect(credentials.accessKeyID == "AKIDDEV")
            }
        }
    }

    @Test func profileFromEnvironmentAndFileLocations() async throws {
        try await withHome { home in
            // Custom file locations; AWS_PROFILE selects; the config file's keys are used when the credentials file has none.
            try home.write("elsewhere/config", "# comment\n[profile dev]\nregion = eu-west-1\naws_access_key_id = AKIDCFG\n; another\naws_secret_access_key = cfgsecret\n")
            try home.write("elsewhere/creds", "[other]\naws_access_key_id = X\naws_secret_access_key = Y\n")
            let config = try configuration(
                home,
                [
                    "AWS_PROFILE": "dev", "AWS_CONFIG_FILE": "\(home.path)/elsewhere/config",
                    "AWS_SHARED_CREDENTIALS_FILE": "\(home.path)/elsewhere/creds",
                ], region: nil)
            #expect(config.region == "eu-west-1")
            #expect(config.effectiveProfile == "dev")
            try await withHTTPClient { client in
                let chain = CredentialChain(configuration: config, httpClient: client)
                let key = try await chain.credentials().accessKeyID
                #expect(key == "AKIDCFG")
                #expect(chain.sourceDescription == "config-file (profile dev)")
            }
        }
    }

    @Test func noCredentialsNamesWhatWasTried() async throws {
        try await withHome { home in
            let config = try configuration(home, [:])
            try await withHTTPClient { client in
                let error = await #expect(throws: AWSConfigurationError.self) {
                    try await CredentialChain(configuration: config, httpClient: client).credentials()
                }
                let text = "\(error!)"
                #expect(text.contains("environment"))
                #expect(text.contains("sso (profile default)"))
                #expect(text.contains("aws sso login"))
            }
        }
    }

    // MARK: - AssumeRole

    @Test func sourceProfileAssumeRoleIsSignedAndChained() async throws {
        let base = AWSCredentials(accessKeyID: "AKIDBASE", secretAccessKey: "basesecret")
        let first = AWSCredentials(accessKeyID: "ASIAFIRST", secretAccessKey: "firstsecret", sessionToken: "firsttoken")
        let expiration = Date().addingTimeInterval(3600)
        let verifier = SigV4Verifier(region: "us-east-1", services: ["sts"], credentials: [base, first])
        try await FakeHTTPServer.with({ request in
            guard case .success(let caller) = verifier.verify(request.sigV4, now: Date()) else {
                return FakeHTTPServer.Response(status: 403, body: "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>bad</Message></Error></ErrorResponse>")
            }
            if caller.accessKeyID == "AKIDBASE" {
                return .init(body: stsCredentialsXML(action: "AssumeRole", key: "ASIAFIRST", secret: "firstsecret", token: "firsttoken", expiration: expiration))
            }
            return .init(body: stsCredentialsXML(action: "AssumeRole", key: "ASIASECOND", secret: "secondsecret", token: "secondtoken", expiration: expiration))
        }) { sts in
            try await withHome { home in
                try home.write(".aws/credentials", "[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = basesecret\n")
                try home.write(
                    ".aws/config",
                    """
                    [profile first]
                    role_arn = arn:aws:iam::111122223333:role/first
                    source_profile = base
                    external_id = ext-123
                    role_session_name = alice
                    duration_seconds = 1800

                    [profile second]
                    role_arn = arn:aws:iam::444455556666:role/second
                    source_profile = first
                    """)
                let config = try configuration(home, ["AWS_ENDPOINT_URL_STS": sts.baseURL], profile: "second")
                try await withHTTPClient { client in
                    let chain = CredentialChain(configuration: config, httpClient: client)
                    let credentials = try await chain.credentials()
                    #expect(credentials.accessKeyID == "ASIASECOND")
                    #expect(credentials.sessionToken == "secondtoken")
                    #expect(abs(credentials.expiration!.timeIntervalSince(expiration)) < 1)
                    #expect(chain.sourceDescription == "assume-role (profile second)")
                }
                let requests = sts.requests
                try #require(requests.count == 2)
                let firstForm = requests[0].form
                #expect(requests[0].header("Authorization")?.contains("Credential=AKIDBASE/") == true)
                #expect(requests[0].header("Content-Type")?.hasPrefix("application/x-www-form-urlencoded") == true)
                #expect(firstForm["Action"] == "AssumeRole")
                #expect(firstForm["Version"] == "2011-06-15")
                #expect(firstForm["RoleArn"] == "arn:aws:iam::111122223333:role/first")
                #expect(firstForm["RoleSessionName"] == "alice")
                #expect(firstForm["ExternalId"] == "ext-123")
                #expect(firstForm["DurationSeconds"] == "1800")
                let secondForm = requests[1].form
                #expect(requests[1].header("Authorization")?.contains("Credential=ASIAFIRST/") == true)
                #expect(requests[1].header("X-Amz-Security-Token") == "firsttoken")
                #expect(secondForm["RoleArn"] == "arn:aws:iam::444455556666:role/second")
                #expect(secondForm["RoleSessionName"]?.hasPrefix("ssmgate-session-") == true)
                #expect(secondForm["ExternalId"] == nil)
            }
        }
    }

    @Test func assumeRoleFailureIsExplainedWithoutSecrets() async throws {
        try await FakeHTTPServer.with({ _ in
            .init(status: 403, body: "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: arn:aws:iam::1:user/base is not authorized to perform: sts:AssumeRole (basesecret)</Message></Error><RequestId>rid-1</RequestId></ErrorResponse>")
        }) { sts in
            try await withHome { home in
                try home.write(".aws/credentials", "[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = basesecret\n")
                try home.write(".aws/config", "[profile role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = base\n")
                let config = try configuration(home, ["AWS_ENDPOINT_URL_STS": sts.baseURL], profile: "role")
                try await withHTTPClient { client in
                    let error = await #expect(throws: AWSCredentialsError.self) {
                        try await CredentialChain(configuration: config, httpClient: client).credentials()
                    }
                    let text = "\(error!)"
                    #expect(text.contains("arn:aws:iam::1:role/r"))
                    #expect(text.contains("sts:AssumeRole"))
                    #expect(text.contains("rid-1"))
                    #expect(!text.contains("basesecret"))
                    #expect(sts.requests.count == 1)  // a 4xx is not retried
                }
            }
        }
    }

    @Test func sourceProfileLoopIsReported() async throws {
        try await withHome { home in
            try home.write(
                ".aws/config",
                "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n[profile b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = a\n")
            let config = try configuration(home, [:], profile: "a")
            try await withHTTPClient { client in
                let error = await #expect(throws: AWSConfigurationError.self) {
                    try await CredentialChain(configuration: config, httpClient: client).credentials()
                }
                #expect("\(error!)".contains("a -> b -> a"))
            }
        }
    }

    // MARK: - credential_process

    @Test func credentialProcessOutputIsUsed() async throws {
        try await withHome { home in
            let expiration = isoString(Date().addingTimeInterval(3600))
            let script = try home.script(
                "bin/creds.sh",
                "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"ASIAPROC\", \"SecretAccessKey\": \"procsecret\", \"SessionToken\": \"proctoken\", \"Expiration\": \"\(expiration)\"}'\n")
            try home.write(".aws/config", "[profile proc]\ncredential_process = \"\(script)\" --flag 'two words'\n")
            let config = try configuration(home, [:], profile: "proc")
            try await withHTTPClient { client in
                let chain = CredentialChain(configuration: config, httpClient: client)
                let credentials = try await chain.credentials()
                #expect(credentials.accessKeyID == "ASIAPROC")
                #expect(credentials.sessionToken == "proctoken")
                #expect(credentials.expiration != nil)
                #expect(chain.sourceDescription == "credential_process (profile proc)")
            }
        }
    }

    @Test func credentialProcessFailureNamesTheProgram() async throws {
        try await withHome { home in
            let script = try home.script("bin/fail.sh", "#!/bin/sh\necho 'login required' >&2\nexit 3\n")
            try home.write(".aws/config", "[profile proc]\ncredential_process = \(script)\n")
            let config = try configuration(home, [:], profile: "proc")
            try await withHTTPClient { client in
                let error = await #expect(throws: AWSCredentialsError.self) {
                    try await CredentialChain(configuration: config, httpClient: client).credentials()
                }
                let text = "\(error!)"
                #expect(text.contains("status 3"))
                #expect(text.contains("login required"))
                #expect(text.contains("profile proc"))
            }
        }
        #expect(try CredentialSourceBuilder.splitCommandLine(#"a "b c" 'd e' f\ g"#) == ["a", "b c", "d e", "f g"])
    }

    // MARK: - SSO

    static func sha1(_ text: String) -> String {
        Insecure.SHA1.hash(data: Array(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    @Test func ssoSessionTokenIsExchangedAtThePortal() async throws {
        let expiry = Date().addingTimeInterval(3600)
        try await FakeHTTPServer.with({ request in
            guard request.header("x-amz-sso_bearer_token") == "sso-access-token" else {
                return .json(["message": "Session token not found or invalid"], status: 401)
            }
            return .json([
                "roleCredentials": [
                    "accessKeyId": "ASIASSO", "secretAccessKey": "ssosecret", "sessionToken": "ssotoken",
                    "expiration": Int64(expiry.timeIntervalSince1970 * 1000),
                ]
            ])
        }) { portal in
            try await withHome { home in
                try home.write(
                    ".aws/config",
                    """
                    [profile sso]
                    sso_session = corp
                    sso_account_id = 111122223333
                    sso_role_name = ReadOnly
                    region = us-west-2

                    [sso-session corp]
                    sso_start_url = https://corp.awsapps.com/start
                    sso_region = us-east-1
                    sso_registration_scopes = sso:account:access
                    """)
                try home.write(
                    ".aws/sso/cache/\(Self.sha1("corp")).json",
                    #"{"accessToken": "sso-access-token", "expiresAt": "\#(isoString(Date().addingTimeInterval(600)))"}"#)
                let config = try configuration(home, ["AWS_ENDPOINT_URL_SSO": portal.baseURL], profile: "sso", region: nil)
                #expect(config.region == "us-west-2")
                try await withHTTPClient { client in
                    let credentials = try await CredentialChain(configuration: config, httpClient: client).credentials()
                    #expect(credentials.accessKeyID == "ASIASSO")
                    #expect(credentials.sessionToken == "ssotoken")
                    #expect(abs(credentials.expiration!.timeIntervalSince(expiry)) < 1)
                }
                let request = try #require(portal.requests.first)
                #expect(request.method == "GET")
                #expect(request.path == "/federation/credentials")
                #expect(request.form["account_id"] == "111122223333")
                #expect(request.form["role_name"] == "ReadOnly")
                #expect(request.header("Authorization") == nil)
            }
        }
    }

    @Test func legacySSOStartURLAndExpiredTokens() async throws {
        try await FakeHTTPServer.with({ _ in .json(["message": "Session token not found or invalid"], status: 401) }) { portal in
            try await withHome { home in
                try home.write(
                    ".aws/config",
                    "[profile legacy]\nsso_start_url = https://legacy.awsapps.com/start\nsso_region = eu-west-1\nsso_account_id = 1\nsso_role_name = R\n")
                let config = try configuration(home, ["AWS_ENDPOINT_URL_SSO": portal.baseURL], profile: "legacy")
                try await withHTTPClient { client in
                    // No cache file yet.
                    var error = await #expect(throws: AWSCredentialsError.self) {
                        try await CredentialChain(configuration: config, httpClient: client).credentials()
                    }
                    #expect("\(error!)".contains("aws sso login --profile legacy"))
                    // A cached but expired token.
                    let cache = ".aws/sso/cache/\(Self.sha1("https://legacy.awsapps.com/start")).json"
                    try home.write(cache, #"{"accessToken": "old-token-value", "expiresAt": "2020-01-01T00:00:00UTC"}"#)
                    error = await #expect(throws: AWSCredentialsError.self) {
                        try await CredentialChain(configuration: config, httpClient: client).credentials()
                    }
                    #expect("\(error!)".contains("expired"))
                    // A current token that the portal refuses.
                    try home.write(cache, #"{"accessToken": "revoked-token-value", "expiresAt": "\#(isoString(Date().addingTimeInterval(600)))"}"#)
                    error = await #expect(throws: AWSCredentialsError.self) {
                        try await CredentialChain(configuration: config, httpClient: client).credentials()
                    }
                    let text = "\(error!)"
                    #expect(text.contains("no longer valid"))
                    #expect(!text.contains("revoked-token-value"))
                }
            }
        }
    }

    // MARK: - Web identity

    @Test func webIdentityFromEnvironmentIsUnsigned() async throws {
        let expiration = Date().addingTimeInterval(3600)
        try await FakeHTTPServer.with({ _ in
            .init(body: stsCredentialsXML(action: "AssumeRoleWithWebIdentity", key: "ASIAWEB", secret: "websecret", token: "webtoken", expiration: expiration))
        }) { sts in
            try await withHome { home in
                try home.write("token.jwt", "eyJ.web.token\n")
                let config = try configuration(
                    home,
                    [
                        "AWS_ENDPOINT_URL_STS": sts.baseURL, "AWS_WEB_IDENTITY_TOKEN_FILE": "\(home.path)/token.jwt",
                        "AWS_ROLE_ARN": "arn:aws:iam::1:role/web", "AWS_ROLE_SESSION_NAME": "pod-1",
                    ])
                try await withHTTPClient { client in
                    let chain = CredentialChain(configuration: config, httpClient: client)
                    let key = try await chain.credentials().accessKeyID
                    #expect(key == "ASIAWEB")
                    #expect(chain.sourceDescription == "web-identity (profile default)")
                }
                let request = try #require(sts.requests.first)
                #expect(request.header("Authorization") == nil)
                #expect(request.form["Action"] == "AssumeRoleWithWebIdentity")
                #expect(request.form["RoleArn"] == "arn:aws:iam::1:role/web")
                #expect(request.form["RoleSessionName"] == "pod-1")
                #expect(request.form["WebIdentityToken"] == "eyJ.web.token")
            }
        }
    }

    // MARK: - Container and instance metadata

    static func metadataCredentials() -> [String: Any] { [
        "Code": "Success", "AccessKeyId": "ASIAMETA", "SecretAccessKey": "metasecret", "Token": "metatoken",
        "Expiration": isoString(Date().addingTimeInterval(6 * 3600)),
    ] }

    @Test func containerRelativeURIWithToken() async throws {
        try await FakeHTTPServer.with({ _ in .json(Self.metadataCredentials()) }) { ecs in
            try await withHome { home in
                let config = try configuration(
                    home, ["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc", "AWS_CONTAINER_AUTHORIZATION_TOKEN": "Basic abc"])
                try await withHTTPClient { client in
                    var builder = CredentialSourceBuilder(configuration: config, httpClient: client)
                    builder.containerRelativeBase = ecs.baseURL
                    let chain = CredentialChain(sources: builder.defaultChain())
                    let credentials = try await chain.credentials()
                    #expect(credentials.accessKeyID == "ASIAMETA")
                    #expect(credentials.sessionToken == "metatoken")
                    #expect(chain.sourceDescription == "container")
                }
                let request = try #require(ecs.requests.first)
                #expect(request.uri == "/v2/credentials/abc")
                #expect(request.header("Authorization") == "Basic abc")
            }
        }
    }

    @Test func containerFullURIWithTokenFile() async throws {
        try await FakeHTTPServer.with({ _ in .json(Self.metadataCredentials()) }) { ecs in
            try await withHome { home in
                try home.write("eks-token", "eks-pod-identity-token\n")
                let config = try configuration(
                    home,
                    [
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "\(ecs.baseURL)/v1/credentials",
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "\(home.path)/eks-token",
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "ignored-when-file-set",
                    ])
                try await withHTTPClient { client in
                    let key = try await CredentialChain(configuration: config, httpClient: client).credentials().accessKeyID
                    #expect(key == "ASIAMETA")
                }
                #expect(ecs.requests.first?.header("Authorization") == "eks-pod-identity-token")
                #expect(ecs.requests.first?.uri == "/v1/credentials")
            }
        }
        try await withHome { home in
            let config = try configuration(home, ["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://203.0.113.9/creds"])
            try await withHTTPClient { client in
                let error = await #expect(throws: AWSConfigurationError.self) {
                    try await CredentialChain(configuration: config, httpClient: client).credentials()
                }
                #expect("\(error!)".contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
            }
        }
    }

    @Test func instanceMetadataV2TokenFlow() async throws {
        try await FakeHTTPServer.with({ request in
            switch (request.method, request.path) {
            case ("PUT", "/latest/api/token"):
                return request.header("x-aws-ec2-metadata-token-ttl-seconds") == "21600" ? .init(body: "imds-session-token") : .init(status: 400)
            case (_, _) where request.header("x-aws-ec2-metadata-token") != "imds-session-token":
                return .init(status: 401)
            case ("GET", "/latest/meta-data/iam/security-credentials/"):
                return .init(body: "web-role\n")
            case ("GET", "/latest/meta-data/iam/security-credentials/web-role"):
                return .json(Self.metadataCredentials())
            case ("GET", "/latest/meta-data/placement/region"):
                return .init(body: "eu-west-3")
            default:
                return .init(status: 404)
            }
        }) { imds in
            try await withHome { home in
                var environment = ["AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.baseURL + "/"]
                environment["AWS_EC2_METADATA_DISABLED"] = "false"
                // The flow is under test, not IMDS's 1 s default timeout (a loaded CI machine misses it).
                environment["AWS_METADATA_SERVICE_TIMEOUT"] = "30"
                let config = try configuration(home, environment)
                try await withHTTPClient { client in
                    let chain = CredentialChain(configuration: config, httpClient: client)
                    let credentials = try await chain.credentials()
                    #expect(credentials.accessKeyID == "ASIAMETA")
                    #expect(chain.sourceDescription == "instance-metadata")
                    // The region comes from IMDS only when asked and nothing else sets one.
                    let onEC2 = try await AWSClientConfiguration.resolve(
                        environment: environment, profile: nil, region: nil, endpointURL: nil, homeDirectory: home.path,
                        instanceMetadataRegionUsing: client)
                    #expect(onEC2.region == "eu-west-3")
                }
                #expect(imds.requests.prefix(3).map { "\($0.method) \($0.path)" } == [
                    "PUT /latest/api/token", "GET /latest/meta-data/iam/security-credentials/",
                    "GET /latest/meta-data/iam/security-credentials/web-role",
                ])
            }
        }
    }

    @Test func unreachableInstanceMetadataEndsTheChain() async throws {
        try await withHome { home in
            // A closed loopback port: refused at once, so the chain ends with "no credentials".
            let config = try configuration(
                home, ["AWS_EC2_METADATA_DISABLED": "false", "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:1"])
            // How quickly is a benchmark matter; here only that it ends with the "no credentials" error.
            try await withHTTPClient { client in
                await #expect(throws: AWSConfigurationError.self) {
                    try await CredentialChain(configuration: config, httpClient: client).credentials()
                }
            }
        }
    }

    // MARK: - Caching and refresh

    @Test func shortLivedCredentialsAreRefreshedBeforeExpiry() async throws {
        let clock = TestClock()
        let calls = Counter()
        let source = ClosureCredentialSource("test") {
            let n = calls.increment()
            return AWSCredentials(
                accessKeyID: "ASIA\(n)", secretAccessKey: "s", sessionToken: "t", expiration: clock.now.addingTimeInterval(3600))
        }
        let chain = CredentialChain(sources: [source], now: { clock.now })
        #expect(try await chain.credentials().accessKeyID == "ASIA1")
        clock.advance(by: 40 * 60)  // 20 minutes left: still fresh
        #expect(try await chain.credentials().accessKeyID == "ASIA1")
        #expect(calls.count == 1)
        clock.advance(by: 6 * 60)  // 14 minutes left: inside the 15-minute window
        #expect(try await chain.credentials().accessKeyID == "ASIA2")
        #expect(calls.count == 2)
        #expect(try await chain.credentials().accessKeyID == "ASIA2")
        #expect(calls.count == 2)
    }

    @Test func concurrentCallersShareOneRefresh() async throws {
        let clock = TestClock()
        let calls = Counter()
        let source = ClosureCredentialSource("slow") {
            let n = calls.increment()
            try await Task.sleep(for: .milliseconds(100))  // a slow STS call, so callers overlap
            return AWSCredentials(
                accessKeyID: "ASIA\(n)", secretAccessKey: "s", sessionToken: "t", expiration: clock.now.addingTimeInterval(900))
        }
        let chain = CredentialChain(sources: [source], now: { clock.now })
        let first = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<25 { group.addTask { try await chain.credentials().accessKeyID } }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(first == ["ASIA1"])
        #expect(calls.count == 1)
        clock.advance(by: 800)  // 100 s left of a 900 s lifetime: past half, refresh
        let second = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<25 { group.addTask { try await chain.credentials().accessKeyID } }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(second == ["ASIA2"])
        #expect(calls.count == 2)
    }

    @Test func failedAdvisoryRefreshKeepsCurrentCredentialsButMandatoryDoesNot() async throws {
        let clock = TestClock()
        let calls = Counter()
        let source = ClosureCredentialSource("flaky") {
            if calls.increment() > 1 { throw AWSCredentialsError(source: "flaky", problem: "down", remedy: "wait") }
            return AWSCredentials(accessKeyID: "ASIA1", secretAccessKey: "s", expiration: clock.now.addingTimeInterval(3600))
        }
        let chain = CredentialChain(sources: [source], now: { clock.now })
        _ = try await chain.credentials()
        clock.advance(by: 48 * 60)  // 12 minutes left: advisory only
        #expect(try await chain.credentials().accessKeyID == "ASIA1")
        clock.advance(by: 4 * 60)  // 8 minutes left: mandatory
        await #expect(throws: AWSCredentialsError.self) { try await chain.credentials() }
    }
}
