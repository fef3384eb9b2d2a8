import Foundation
import Testing

@testable import SigV4

@Suite("SigV4Signer")
struct SigV4SignerTests {
    static let signedCases = SigningCase.battery.filter { !$0.presign }

    /// Signs like `SigV4Signer.sign`, also returning the intermediate strings for diagnostics.
    static func sign(_ testCase: SigningCase) -> (request: SigV4Request, parts: SigV4Signer.SigningParts) {
        let signer = SigV4Signer(credentials: testCase.credentials, region: testCase.region, service: testCase.service)
        var request = testCase.request
        let timestamp = AmzTimestamp(Botocore.signingDate)
        signer.addHeaders(to: &request, timestamp: timestamp)
        let parts = signer.signingParts(of: request, timestamp: timestamp)
        var signed = testCase.request
        signer.sign(&signed, at: Botocore.signingDate)
        return (signed, parts)
    }

    @Test("Authorization equals botocore's SigV4Auth", arguments: signedCases.map(\.name))
    func matchesBotocore(_ name: String) throws {
        let testCase = try #require(Self.signedCases.first { $0.name == name })
        let botocore = try Botocore.result(name)
        let (signed, parts) = Self.sign(testCase)

        #expect(
            parts.canonicalRequest == botocore.urlMode.canonicalRequest,
            "canonical request differs from botocore \(botocore.botocoreVersion)"
        )
        #expect(parts.stringToSign == botocore.urlMode.stringToSign)
        #expect(signed.headerValue("Authorization") == botocore.urlMode.authorization)
        if let paramsMode = botocore.paramsMode {
            // The same parameters, encoded by botocore itself instead of by `encodeQuery`.
            #expect(parts.canonicalRequest == paramsMode.canonicalRequest)
            #expect(signed.headerValue("Authorization") == paramsMode.authorization)
        }

        // The headers we add are the ones botocore adds (botocore leaves Host to the HTTP layer).
        let ours = signed.headers.filter { $0.name.lowercased() != "host" }.map { "\($0.name.lowercased()): \($0.value)" }
        let theirs = botocore.urlMode.headers.map { "\($0[0].lowercased()): \($0[1])" }
        #expect(ours.sorted() == theirs.sorted())
    }

    @Test("the AWS SigV4 test suite's get-vanilla vector")
    func awsTestSuiteVector() {
        let signer = SigV4Signer(
            credentials: AWSCredentials(accessKeyID: SigningCase.accessKeyID, secretAccessKey: SigningCase.secret),
            region: "us-east-1",
            service: "service"
        )
        var request = SigV4Request(method: "GET", path: "/", headers: [("Host", "example.amazonaws.com")])
        signer.sign(&request, at: Date(timeIntervalSince1970: 1_440_938_160))  // 20150830T123600Z
        #expect(request.headerValue("X-Amz-Date") == "20150830T123600Z")
        #expect(
            request.headerValue("Authorization")
                == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                + "SignedHeaders=host;x-amz-date, "
                + "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        )
    }

    @Test("signing again replaces, never duplicates, the headers it owns")
    func resigning() throws {
        let testCase = try #require(Self.signedCases.first { $0.name == "ssm-json11-session-token" })
        let signer = SigV4Signer(credentials: testCase.credentials, region: "us-east-1", service: "ssm")
        var request = testCase.request
        signer.sign(&request, at: Botocore.signingDate)
        let first = request.headerValue("Authorization")
        signer.sign(&request, at: Botocore.signingDate)
        #expect(request.headerValue("Authorization") == first)
        for name in ["authorization", "x-amz-date", "x-amz-security-token"] {
            #expect(request.headers.filter { $0.name.lowercased() == name }.count == 1, "\(name)")
        }
    }

    @Test("sendsContentSHA256 adds the payload hash and signs it")
    func contentSHA256Header() {
        let signer = SigV4Signer(
            credentials: AWSCredentials(accessKeyID: "AKID", secretAccessKey: "secret"),
            region: "us-east-1",
            service: "s3",
            sendsContentSHA256: true
        )
        var request = SigV4Request(method: "PUT", path: "/b/k", headers: [("Host", "s3.amazonaws.com")], body: [])
        signer.sign(&request, at: Botocore.signingDate)
        #expect(request.headerValue("x-amz-content-sha256") == SigV4Canonical.emptyPayloadHash)
        #expect(request.headerValue("Authorization")?.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date") == true)
    }
}

@Suite("SigV4 canonical forms")
struct SigV4CanonicalTests {
    @Test(
        "paths: dot segments and empty segments removed, then encoded again (botocore's double encoding)",
        arguments: [
            ("", "/"), ("/", "/"), ("//", "/"), ("/a/./b/../c//d/", "/a/c/d/"), ("/../..", "/"), ("/a/..", "/"),
            ("/a%20b", "/a%2520b"), ("/a b/é", "/a%20b/%C3%A9"), ("/~user/a+b", "/~user/a%2Bb"),
        ]
    )
    func paths(raw: String, canonical: String) {
        #expect(SigV4Canonical.uri(path: raw) == canonical)
    }

    @Test(
        "queries: decoded, re-encoded with the unreserved set, sorted by key then value",
        arguments: [
            ("", ""), ("b=2&a=1&a=0", "a=0&a=1&b=2"), ("acl", "acl="), ("a=b=c", "a=b%3Dc"),
            // Non-canonical wire forms are normalized; botocore would sign these bytes as they are.
            ("a=b%7e", "a=b~"), ("a=%2f", "a=%2F"), ("a=b c", "a=b%20c"), ("a=b+c", "a=b%2Bc"), ("a=100%", "a=100%25"),
        ]
    )
    func queries(raw: String, canonical: String) {
        #expect(SigV4Canonical.query(raw) == canonical)
    }

    @Test("header values are trimmed and inner whitespace runs collapsed, like Python's str.split()")
    func trimAll() {
        #expect(SigV4Canonical.trimAll("  a   b \t c  ") == "a b c")
        #expect(SigV4Canonical.trimAll("\u{1C}x\u{A0}\u{3000}y\n") == "x y")
        #expect(SigV4Canonical.trimAll("") == "")
    }

    @Test("encodeQuery keeps only unreserved characters")
    func encodeQuery() {
        #expect(
            SigV4Request.encodeQuery([("a b", "+/=&~"), ("é", ""), ("*", "%")])
                == "a%20b=%2B%2F%3D%26~&%C3%A9=&%2A=%25"
        )
    }

    @Test("timestamps format and parse in UTC")
    func timestamps() throws {
        let fixed = AmzTimestamp(Botocore.signingDate)
        #expect(fixed.basic == "20261123T101500Z")
        #expect(fixed.dateStamp == "20261123")
        #expect(fixed.rfc2822 == "Mon, 23 Nov 2026 10:15:00 -0000")
        #expect(AmzTimestamp(basic: "20261123T101500Z") == fixed)
        #expect(AmzTimestamp(httpDate: "Mon, 23 Nov 2026 10:15:00 GMT") == fixed)
        #expect(AmzTimestamp(httpDate: fixed.rfc2822) == fixed)
        let leap = try #require(AmzTimestamp(basic: "20240229T235959Z"))
        #expect(leap.basic == "20240229T235959Z")
        #expect(AmzTimestamp(Date(timeIntervalSince1970: 0)).rfc2822 == "Thu, 01 Jan 1970 00:00:00 -0000")
        #expect(AmzTimestamp(Date(timeIntervalSince1970: -1)).basic == "19691231T235959Z")
        for bad in ["20230229T000000Z", "20261123T246000Z", "2026-11-23T10:15:00Z", "20261123T101500", ""] {
            #expect(AmzTimestamp(basic: bad) == nil, "\(bad)")
        }
    }
}
