import Foundation
import Testing

@testable import SigV4

@Suite("SigV4Verifier")
struct SigV4VerifierTests {
    static let now = Botocore.signingDate
    static let longTerm = AWSCredentials(accessKeyID: "AKIAEMULATOR", secretAccessKey: "emulator/secret+KEY")
    static let temporary = AWSCredentials(
        accessKeyID: "ASIAEMULATOR",
        secretAccessKey: "temporary/secret+KEY",
        sessionToken: "FwoGZXIvYXdzEXAMPLE/session+token=="
    )
    static let verifier = SigV4Verifier(region: "us-east-1", services: ["ssm", "ec2"], credentials: [longTerm, temporary])

    static func signedRequest(
        _ credentials: AWSCredentials = longTerm,
        region: String = "us-east-1",
        service: String = "ssm",
        at date: Date = now,
        body: String = #"{"MaxResults":50}"#
    ) -> SigV4Request {
        var request = SigV4Request(
            method: "POST",
            path: "/",
            headers: [
                ("Host", "127.0.0.1:4566"),
                ("X-Amz-Target", "AmazonSSM.DescribeInstanceInformation"),
                ("Content-Type", "application/x-amz-json-1.1"),
            ],
            body: Array(body.utf8)
        )
        SigV4Signer(credentials: credentials, region: region, service: service).sign(&request, at: date)
        return request
    }

    static func error(_ request: SigV4Request, now: Date = now, verifier: SigV4Verifier = verifier) throws
        -> SigV4VerificationError
    {
        switch verifier.verify(request, now: now) {
        case .success(let caller): throw VerificationUnexpectedlySucceeded(caller: caller)
        case .failure(let error): return error
        }
    }

    struct VerificationUnexpectedlySucceeded: Error { var caller: VerifiedCaller }

    static func replacingHeader(_ name: String, in request: SigV4Request, with value: String) -> SigV4Request {
        var copy = request
        copy.headers = copy.headers.map { $0.name.lowercased() == name.lowercased() ? ($0.name, value) : $0 }
        return copy
    }

    // MARK: - Round trip

    @Test("what the signer signs, the verifier accepts")
    func roundTrip() throws {
        for credentials in [Self.longTerm, Self.temporary] {
            let caller = try Self.verifier.verify(Self.signedRequest(credentials), now: Self.now).get()
            #expect(caller == VerifiedCaller(accessKeyID: credentials.accessKeyID, region: "us-east-1", service: "ssm", signedAt: Self.now))
        }
        let ec2 = try Self.verifier.verify(Self.signedRequest(service: "ec2"), now: Self.now).get()
        #expect(ec2.service == "ec2")
    }

    @Test("a request signed by botocore (awscli) is accepted", arguments: SigningCase.battery.map(\.name))
    func acceptsBotocore(_ name: String) throws {
        let testCase = try #require(SigningCase.battery.first { $0.name == name })
        let botocore = try Botocore.result(name)
        let verifier = SigV4Verifier(
            region: testCase.region,
            services: [testCase.service],
            credentials: [testCase.credentials]
        )
        var signings = [botocore.urlMode]
        if let paramsMode = botocore.paramsMode { signings.append(paramsMode) }
        for signed in signings {
            // What the emulator receives: botocore's headers plus the Host the HTTP client adds.
            let target = signed.url.dropFirst("\(testCase.scheme)://\(testCase.host)".count)
            let (path, query) =
                if let mark = target.firstIndex(of: "?") {
                    (String(target[..<mark]), String(target[target.index(after: mark)...]))
                } else {
                    (String(target), "")
                }
            let request = SigV4Request(
                method: testCase.method,
                path: path,
                query: testCase.presign ? query : testCase.query,
                headers: [("Host", testCase.host)] + signed.headers.map { ($0[0], $0[1]) },
                body: testCase.bodyBytes
            )
            let result = verifier.verify(request, now: Self.now)
            #expect(throws: Never.self, "\(signed.canonicalRequest)") { try result.get() }
            #expect((try? result.get())?.accessKeyID == testCase.accessKeyID)
        }
    }

    // MARK: - Tampering

    @Test("a changed signature, body, signed header or date is refused")
    func tampering() throws {
        let request = Self.signedRequest()
        let authorization = try #require(request.headerValue("Authorization"))
        let last = authorization.last == "0" ? "1" : "0"
        let badSignature = Self.replacingHeader("Authorization", in: request, with: String(authorization.dropLast()) + last)

        var badBody = request
        badBody.payload = .bytes(Array(#"{"MaxResults":51}"#.utf8))

        let badHeader = Self.replacingHeader("X-Amz-Target", in: request, with: "AmazonSSM.StartSession")
        let badDate = Self.replacingHeader("X-Amz-Date", in: request, with: "20261123T101501Z")

        for tampered in [badSignature, badBody, badHeader, badDate] {
            let error = try Self.error(tampered)
            #expect(error.code == .invalidSignature)
            #expect(error.message.hasPrefix("The request signature we calculated does not match the signature you provided."))
            #expect(error.diagnostics?.contains("The Canonical String for this request should have been") == true)
            #expect(error.httpStatus == 400)
        }

        // A date on another day also breaks the credential scope.
        let otherDay = Self.replacingHeader("X-Amz-Date", in: request, with: "20261122T235959Z")
        let error = try Self.error(otherDay, now: Date(timeIntervalSince1970: 1_795_391_999))
        #expect(error.code == .invalidSignature)
        #expect(
            error.message
                == "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                + "'20261123' != '20261122', from '20261122T235959Z'."
        )
    }

    @Test("an unsigned payload is accepted whatever the body; a declared hash must match the body")
    func payloadHashes() throws {
        let signer = SigV4Signer(credentials: Self.longTerm, region: "us-east-1", service: "ssm")
        var unsigned = SigV4Request(method: "POST", path: "/", headers: [("Host", "h")], payload: .unsigned)
        signer.sign(&unsigned, at: Self.now)
        unsigned.payload = .bytes(Array("anything".utf8))
        #expect(throws: Never.self) { try Self.verifier.verify(unsigned, now: Self.now).get() }

        let declaring = SigV4Signer(credentials: Self.longTerm, region: "us-east-1", service: "ssm", sendsContentSHA256: true)
        var request = SigV4Request(method: "POST", path: "/", headers: [("Host", "h")], body: Array("one".utf8))
        declaring.sign(&request, at: Self.now)
        #expect(throws: Never.self) { try Self.verifier.verify(request, now: Self.now).get() }
        request.payload = .bytes(Array("two".utf8))
        #expect(try Self.error(request).code == .invalidSignature)
        request.payload = .precomputedSHA256(SigV4Canonical.sha256Hex(Array("one".utf8)))
        #expect(throws: Never.self) { try Self.verifier.verify(request, now: Self.now).get() }
    }

    // MARK: - Errors AWS sends

    @Test("unknown access key → UnrecognizedClientException")
    func unknownKey() throws {
        let stranger = AWSCredentials(accessKeyID: "AKIASTRANGER", secretAccessKey: "whatever")
        let error = try Self.error(Self.signedRequest(stranger))
        #expect(error.code == .unrecognizedClient)
        #expect(error.message == "The security token included in the request is invalid.")
        #expect(error.code.rawValue == "UnrecognizedClientException")
        #expect(error.response(for: .ec2Query).code == "AuthFailure")
        #expect(error.response(for: .ec2Query).httpStatus == 401)
    }

    @Test("a timestamp beyond the clock skew → signature expired / not yet current")
    func clockSkew() throws {
        let request = Self.signedRequest()
        let late = try Self.error(request, now: Self.now.addingTimeInterval(15 * 60 + 1))
        #expect(late.code == .invalidSignature)
        #expect(
            late.message
                == "Signature expired: 20261123T101500Z is now earlier than 20261123T101501Z (20261123T103001Z - 15 min.)"
        )
        #expect(late.response(for: .ec2Query) == .init(code: "RequestExpired", message: "Request has expired.", httpStatus: 400))

        let early = try Self.error(request, now: Self.now.addingTimeInterval(-(15 * 60 + 1)))
        #expect(early.code == .invalidSignature)
        #expect(
            early.message
                == "Signature not yet current: 20261123T101500Z is still later than 20261123T101459Z "
                + "(20261123T095959Z + 15 min.)"
        )

        // Exactly at the limit is still fine, both ways.
        #expect(throws: Never.self) { try Self.verifier.verify(request, now: Self.now.addingTimeInterval(900)).get() }
        #expect(throws: Never.self) { try Self.verifier.verify(request, now: Self.now.addingTimeInterval(-900)).get() }

        let strict = SigV4Verifier(region: "us-east-1", services: ["ssm"], allowedClockSkew: .seconds(90), credentials: [Self.longTerm])
        let error = try Self.error(request, now: Self.now.addingTimeInterval(91), verifier: strict)
        #expect(error.message.hasSuffix("(20261123T101631Z - 90 sec.)"))
    }

    @Test("no Authorization → MissingAuthenticationTokenException")
    func missingAuthorization() throws {
        var request = Self.signedRequest()
        request.removeHeaders("Authorization")
        let error = try Self.error(request)
        #expect(error.code == .missingAuthenticationToken)
        #expect(error.code.rawValue == "MissingAuthenticationTokenException")
        #expect(error.message == "Request is missing Authentication Token")
        #expect(error.response(for: .ec2Query).code == "MissingParameter")

        let bearer = Self.replacingHeader("Authorization", in: Self.signedRequest(), with: "Bearer abc")
        #expect(try Self.error(bearer).code == .missingAuthenticationToken)
    }

    @Test("malformed authorization → IncompleteSignatureException")
    func malformed() throws {
        let request = Self.signedRequest()
        let partial = "AWS4-HMAC-SHA256 Credential=AKIAEMULATOR/20261123/us-east-1/ssm/aws4_request"
        let error = try Self.error(Self.replacingHeader("Authorization", in: request, with: partial))
        #expect(error.code == .incompleteSignature)
        #expect(
            error.message
                == "Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' "
                + "parameter. Authorization=\(partial)"
        )

        var undated = request
        undated.removeHeaders("X-Amz-Date")
        let noDate = try Self.error(undated)
        #expect(noDate.code == .incompleteSignature)
        #expect(noDate.message.hasPrefix("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "))

        let isoDate = try Self.error(Self.replacingHeader("X-Amz-Date", in: request, with: "2026-11-23T10:15:00Z"))
        #expect(isoDate.code == .incompleteSignature)
        #expect(
            isoDate.message
                == "Date must be in ISO-8601 'basic format'. Got '2026-11-23T10:15:00Z'. See http://en.wikipedia.org/wiki/ISO_8601"
        )

        let authorization = try #require(request.headerValue("Authorization"))
        let sha512 = try Self.error(
            Self.replacingHeader("Authorization", in: request, with: authorization.replacingOccurrences(of: "SHA256", with: "SHA512"))
        )
        #expect(sha512.code == .incompleteSignature)
        #expect(sha512.message == "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512' (only AWS4-HMAC-SHA256 for now). ")

        let fourParts = try Self.error(
            Self.replacingHeader("Authorization", in: request, with: authorization.replacingOccurrences(of: "/ssm/", with: "/"))
        )
        #expect(fourParts.code == .incompleteSignature)
        #expect(fourParts.message.hasPrefix("Credential must have exactly 5 slash-delimited elements"))
    }

    @Test("a credential scoped to another region or service → InvalidSignatureException")
    func scope() throws {
        let region = try Self.error(Self.signedRequest(region: "eu-west-1"))
        #expect(region.code == .invalidSignature)
        #expect(region.message == "Credential should be scoped to a valid region, not 'eu-west-1'. ")

        let ssmOnly = SigV4Verifier(region: "us-east-1", services: ["ssm"], credentials: [Self.longTerm])
        let service = try Self.error(Self.signedRequest(service: "kms"), verifier: ssmOnly)
        #expect(service.code == .invalidSignature)
        #expect(service.message == "Credential should be scoped to correct service: 'ssm'. ")
    }

    @Test("Host must be signed")
    func hostSigned() throws {
        let signer = SigV4Signer(credentials: Self.longTerm, region: "us-east-1", service: "ssm")
        var request = SigV4Request(method: "GET", path: "/", headers: [])
        signer.sign(&request, at: Self.now)
        request.headers.append(("Host", "127.0.0.1"))
        let error = try Self.error(request)
        #expect(error.code == .invalidSignature)
        #expect(error.message == "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    }

    @Test("the session token must be present exactly when the credentials have one, and match")
    func sessionToken() throws {
        let withoutToken = AWSCredentials(accessKeyID: Self.temporary.accessKeyID, secretAccessKey: Self.temporary.secretAccessKey)
        let missing = try Self.error(Self.signedRequest(withoutToken))
        #expect(missing.code == .unrecognizedClient)
        #expect(missing.message == "The security token included in the request is invalid")

        var wrongToken = Self.temporary
        wrongToken.sessionToken = "FwoGZXIvYXdzEXAMPLE/other+token=="
        #expect(try Self.error(Self.signedRequest(wrongToken)).code == .unrecognizedClient)

        var extraToken = Self.longTerm
        extraToken.sessionToken = "unexpected"
        #expect(try Self.error(Self.signedRequest(extraToken)).code == .unrecognizedClient)
    }

    @Test("expired temporary credentials → ExpiredTokenException")
    func expiredCredentials() throws {
        var expired = Self.temporary
        expired.expiration = Self.now.addingTimeInterval(-1)
        let verifier = SigV4Verifier(region: "us-east-1", services: ["ssm"], credentials: [expired])
        let error = try Self.error(Self.signedRequest(Self.temporary), verifier: verifier)
        #expect(error.code == .expiredToken)
        #expect(error.message == "The security token included in the request is expired")
        #expect(error.response(for: .ec2Query).code == "RequestExpired")

        expired.expiration = Self.now.addingTimeInterval(60)
        let stillValid = SigV4Verifier(region: "us-east-1", services: ["ssm"], credentials: [expired])
        #expect(throws: Never.self) { try stillValid.verify(Self.signedRequest(Self.temporary), now: Self.now).get() }
    }

    @Test("both a header and a presigned query → InvalidSignatureException")
    func bothForms() throws {
        var request = Self.signedRequest()
        request.query = "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        let error = try Self.error(request)
        #expect(error.code == .invalidSignature)
        #expect(error.message == "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.")
    }

    @Test("a presigned URL expires after X-Amz-Expires, and its signature covers the query")
    func presigned() throws {
        let testCase = try #require(SigningCase.battery.first { $0.name == "presigned-get" })
        let botocore = try Botocore.result(testCase.name)
        let target = botocore.urlMode.url.dropFirst("https://\(testCase.host)".count)
        let mark = try #require(target.firstIndex(of: "?"))
        let query = String(target[target.index(after: mark)...])
        let verifier = SigV4Verifier(region: "us-east-1", services: ["ec2"], credentials: [testCase.credentials])
        func request(_ query: String) -> SigV4Request {
            SigV4Request(method: "GET", path: "/", query: query, headers: [("Host", testCase.host)])
        }

        #expect(throws: Never.self) { try verifier.verify(request(query), now: Self.now.addingTimeInterval(300)).get() }
        let late = try Self.error(request(query), now: Self.now.addingTimeInterval(301), verifier: verifier)
        #expect(late.code == .invalidSignature)
        #expect(late.message.hasPrefix("Signature expired: 20261123T101500Z is now earlier than 20261123T101501Z"))

        let altered = query.replacingOccurrences(of: "DescribeInstances", with: "TerminateInstances")
        #expect(try Self.error(request(altered), verifier: verifier).code == .invalidSignature)

        let unsigned = query.replacingOccurrences(of: "X-Amz-Signature=", with: "X-Amz-Nothing=")
        let missing = try Self.error(request(unsigned), verifier: verifier)
        #expect(missing.code == .incompleteSignature)
        #expect(
            missing.message
                == "AWS query-string parameters must include 'X-Amz-Signature'. Re-examine the query-string parameters."
        )
    }
}
