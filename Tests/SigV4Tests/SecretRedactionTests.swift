import Foundation
import Testing

@testable import SigV4

@Suite("Secrets never printed")
struct SecretRedactionTests {
    static let secret = "s3cr3t/ACCESS+key=VALUE"
    static let token = "T0KEN/session+value=="
    static let credentials = AWSCredentials(
        accessKeyID: "ASIAREDACTIONTEST",
        secretAccessKey: secret,
        sessionToken: token,
        expiration: Date(timeIntervalSince1970: 1_795_432_500)
    )

    static func assertClean(_ text: String, _ what: String) {
        for needle in [Self.secret, Self.token, SigV4Canonical.percentEncode(Self.token)] {
            #expect(!text.contains(needle), "\(what) leaks a secret: \(text)")
        }
    }

    @Test("credentials print only the access key id")
    func credentialsDescriptions() {
        var dumped = ""
        dump(Self.credentials, to: &dumped)
        let texts = [
            "description": String(describing: Self.credentials),
            "interpolation": "\(Self.credentials)",
            "debugDescription": String(reflecting: Self.credentials),
            "dump": dumped,
            "mirror": Mirror(reflecting: Self.credentials).children.map { "\($0.label ?? ""): \($0.value)" }.joined(),
            "optional": String(describing: Optional(Self.credentials)),
            "array": String(describing: [Self.credentials]),
        ]
        for (what, text) in texts {
            Self.assertClean(text, what)
            #expect(text.contains("ASIAREDACTIONTEST"), "\(what): \(text)")
        }
        #expect(
            String(describing: Self.credentials)
                == "AWSCredentials(accessKeyID: ASIAREDACTIONTEST, secretAccessKey: <redacted>, "
                + "sessionToken: <redacted>, expiration: 20261123T111500Z)"
        )
    }

    @Test("no verification error mentions the secret or the token")
    func errorTexts() throws {
        let now = Botocore.signingDate
        let verifier = SigV4Verifier(region: "us-east-1", services: ["ssm"], credentials: [Self.credentials])
        let signer = SigV4Signer(credentials: Self.credentials, region: "us-east-1", service: "ssm")
        var good = SigV4Request(method: "POST", path: "/", headers: [("Host", "localhost")], body: Array("{}".utf8))
        signer.sign(&good, at: now)
        #expect(throws: Never.self) { try verifier.verify(good, now: now).get() }

        func with(_ edit: (inout SigV4Request) -> Void) -> SigV4Request {
            var copy = good
            edit(&copy)
            return copy
        }
        let authorization = try #require(good.headerValue("Authorization"))
        let otherSigner = SigV4Signer(
            credentials: AWSCredentials(accessKeyID: "ASIAREDACTIONTEST", secretAccessKey: "wrong", sessionToken: Self.token),
            region: "us-east-1",
            service: "ssm"
        )
        var wrongSecret = SigV4Request(method: "POST", path: "/", headers: [("Host", "localhost")], body: Array("{}".utf8))
        otherSigner.sign(&wrongSecret, at: now)
        // The token also travels in the query of this one, and would show up in the canonical request.
        // Properly signed, but with a token (and then a key) the verifier does not know.
        var otherToken = Self.credentials
        otherToken.sessionToken = Self.token + "-other"
        var wrongToken = SigV4Request(method: "POST", path: "/", headers: [("Host", "localhost")], body: [])
        SigV4Signer(credentials: otherToken, region: "us-east-1", service: "ssm").sign(&wrongToken, at: now)
        otherToken.accessKeyID = "ASIAUNKNOWN"
        var unknownKey = SigV4Request(method: "POST", path: "/", headers: [("Host", "localhost")], body: [])
        SigV4Signer(credentials: otherToken, region: "us-east-1", service: "ssm").sign(&unknownKey, at: now)
        var presignedToken = good
        presignedToken.query = "a=" + SigV4Canonical.percentEncode(Self.token)

        let broken: [SigV4Request] = [
            with { $0.removeHeaders("Authorization") },
            with { $0.replaceHeader("Authorization", with: "AWS4-HMAC-SHA256 Credential=ASIAREDACTIONTEST") },
            with { $0.replaceHeader("X-Amz-Date", with: "yesterday") },
            with { $0.payload = .bytes(Array("{ }".utf8)) },
            with { $0.replaceHeader("X-Amz-Security-Token", with: Self.token + "x") },
            with { $0.removeHeaders("X-Amz-Security-Token") },
            with { $0.replaceHeader("Authorization", with: authorization.replacingOccurrences(of: "us-east-1", with: "eu-west-1")) },
            wrongSecret,
            wrongToken,
            unknownKey,
            presignedToken,
        ]
        var codes: Set<SigV4VerificationError.Code> = []
        for request in broken {
            for at in [now, now.addingTimeInterval(3600)] {
                guard case .failure(let error) = verifier.verify(request, now: at) else {
                    Issue.record("expected a failure")
                    continue
                }
                codes.insert(error.code)
                Self.assertClean(String(describing: error), "description")
                Self.assertClean(error.message, "message")
                Self.assertClean(error.diagnostics ?? "", "diagnostics")
                for proto in [SigV4VerificationError.ResponseProtocol.awsJSON, .ec2Query] {
                    Self.assertClean(error.response(for: proto).message, "response")
                }
            }
        }
        var expired = Self.credentials
        expired.expiration = now.addingTimeInterval(-1)
        let expiredError = SigV4Verifier(region: "us-east-1", services: ["ssm"], credentials: [expired]).verify(good, now: now)
        if case .failure(let error) = expiredError {
            codes.insert(error.code)
            Self.assertClean(String(describing: error), "description")
        }
        #expect(codes == Set(SigV4VerificationError.Code.allCases))
    }
}
