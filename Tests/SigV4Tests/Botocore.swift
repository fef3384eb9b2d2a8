import Foundation

@testable import SigV4

/// One request of the battery that botocore and our signer both sign.
struct SigningCase: Codable, Sendable {
    var name: String
    var method: String
    var scheme: String
    var host: String
    /// Raw wire path.
    var path: String
    /// Raw wire query (what botocore sees in the URL).
    var query: String
    /// The logical parameters behind `query`, when there are some: botocore also signs them through
    /// `AWSRequest.params`, its own encoding path.
    var params: [[String]]?
    /// Header fields except `Host` (botocore derives it from the URL; we add it like an HTTP client would).
    var headers: [[String]]
    /// Base64 body.
    var body: String
    var unsigned: Bool
    /// Our side passes the body hash instead of the body.
    var precomputedHash: Bool
    var service: String
    var region: String
    var accessKeyID: String
    var secret: String
    var token: String?
    /// Presigned URL (`SigV4QueryAuth`): only used to check the verifier.
    var presign: Bool
    var expires: Int

    static let accessKeyID = "AKIDEXAMPLE"
    static let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    static let token = "IQoJb3JpZ2luX2VjEXAMPLE//////////TOKEN+with/slash=="

    init(
        _ name: String,
        method: String = "POST",
        scheme: String = "https",
        host: String = "ssm.us-east-1.amazonaws.com",
        path: String = "/",
        query: String = "",
        params: [(String, String)]? = nil,
        headers: [(String, String)] = [],
        body: [UInt8] = [],
        unsigned: Bool = false,
        precomputedHash: Bool = false,
        service: String = "ssm",
        region: String = "us-east-1",
        token: String? = nil,
        presign: Bool = false,
        expires: Int = 3600
    ) {
        self.name = name
        self.method = method
        self.scheme = scheme
        self.host = host
        self.path = path
        // With logical parameters, the wire query is our own encoding of them.
        self.query = params.map { SigV4Request.encodeQuery($0) } ?? query
        self.params = params?.map { [$0.0, $0.1] }
        self.headers = headers.map { [$0.0, $0.1] }
        self.body = Data(body).base64EncodedString()
        self.unsigned = unsigned
        self.precomputedHash = precomputedHash
        self.service = service
        self.region = region
        self.accessKeyID = Self.accessKeyID
        self.secret = Self.secret
        self.token = token
        self.presign = presign
        self.expires = expires
    }

    var bodyBytes: [UInt8] { Array(Data(base64Encoded: self.body) ?? Data()) }
    var credentials: AWSCredentials {
        AWSCredentials(accessKeyID: self.accessKeyID, secretAccessKey: self.secret, sessionToken: self.token)
    }
    var headerList: [(name: String, value: String)] {
        [("Host", self.host)] + self.headers.map { ($0[0], $0[1]) }
    }

    /// The request our client would send, before signing.
    var request: SigV4Request {
        let payload: SigV4Request.Payload
        if self.unsigned {
            payload = .unsigned
        } else if self.precomputedHash {
            payload = .precomputedSHA256(SigV4Canonical.sha256Hex(self.bodyBytes))
        } else {
            payload = .bytes(self.bodyBytes)
        }
        return SigV4Request(
            method: self.method,
            path: self.path,
            query: self.query,
            headers: self.headerList,
            payload: payload
        )
    }
}

/// What botocore produced for one case.
struct BotocoreResult: Decodable, Sendable {
    struct Signed: Decodable, Sendable {
        var authorization: String?
        var canonicalRequest: String
        var stringToSign: String
        var headers: [[String]]
        var url: String
    }

    var name: String
    var botocoreVersion: String
    /// Signed from the URL (how botocore signs every real API call).
    var urlMode: Signed
    /// Signed from `params` (botocore percent-encodes the values itself).
    var paramsMode: Signed?
}

struct BotocoreUnavailable: Error, CustomStringConvertible {
    var description: String
}

/// Runs the real botocore once for the whole battery, at a fixed signing time.
enum Botocore {
    /// 2026-11-23T10:15:00Z.
    static let signingDate = Date(timeIntervalSince1970: 1_795_428_900)

    static let results: Result<[String: BotocoreResult], BotocoreUnavailable> = Result {
        () throws(BotocoreUnavailable) in try Self.run(SigningCase.battery)
    }

    static func result(_ name: String) throws -> BotocoreResult {
        guard let result = try Self.results.get()[name] else {
            throw BotocoreUnavailable(description: "botocore returned no result for case \(name)")
        }
        return result
    }

    private static func run(_ cases: [SigningCase]) throws(BotocoreUnavailable) -> [String: BotocoreResult] {
        let advice = "Signatures are checked against the real botocore: install it with `pip install awscli` "
            + "(scripts/test.sh does this)."
        let input: Data
        do { input = try JSONEncoder().encode(cases) } catch {
            throw BotocoreUnavailable(description: "cannot encode the cases: \(error)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.script]
        let stdin = Pipe()
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        let output: Data
        let errors: Data
        do {
            try process.run()
            // The script reads all of stdin before it writes anything, so this order cannot deadlock.
            try stdin.fileHandleForWriting.write(contentsOf: input)
            try stdin.fileHandleForWriting.close()
            output = try stdout.fileHandleForReading.readToEnd() ?? Data()
            errors = try stderr.fileHandleForReading.readToEnd() ?? Data()
            process.waitUntilExit()
        } catch {
            throw BotocoreUnavailable(description: "cannot run python3 (\(error)). \(advice)")
        }
        let stderrText = String(decoding: errors, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            let why =
                switch process.terminationStatus {
                case 127: "python3 is not installed"
                case 3: "botocore is not installed for python3"
                default: "the botocore script failed with status \(process.terminationStatus)"
                }
            throw BotocoreUnavailable(description: "\(why): \(stderrText). \(advice)")
        }
        do {
            let results = try JSONDecoder().decode([BotocoreResult].self, from: output)
            return Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        } catch {
            throw BotocoreUnavailable(description: "cannot decode botocore's output (\(error)): \(stderrText)")
        }
    }

    /// Signs each case with `botocore.auth.SigV4Auth` (or `SigV4QueryAuth`). botocore 1.43 takes the time from
    /// `botocore.auth.get_current_datetime()` inside `add_auth` and overwrites `request.context['timestamp']`,
    /// so the function itself is replaced to pin the time.
    static let script = #"""
        import base64, datetime, json, sys
        try:
            import botocore, botocore.auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
        except ImportError as error:
            sys.stderr.write("cannot import botocore: %s" % error)
            sys.exit(3)

        FIXED = datetime.datetime(2026, 11, 23, 10, 15, 0)
        botocore.auth.get_current_datetime = lambda *args, **kwargs: FIXED

        def capturing(base):
            class Capturing(base):
                def canonical_request(self, request):
                    self.captured_canonical_request = super().canonical_request(request)
                    return self.captured_canonical_request

                def string_to_sign(self, request, canonical_request):
                    self.captured_string_to_sign = super().string_to_sign(request, canonical_request)
                    return self.captured_string_to_sign
            return Capturing

        HeaderSigner = capturing(botocore.auth.SigV4Auth)
        QuerySigner = capturing(botocore.auth.SigV4QueryAuth)

        def sign(case, params_mode):
            url = case["scheme"] + "://" + case["host"] + case["path"]
            if case["query"] and not params_mode:
                url += "?" + case["query"]
            params = [tuple(pair) for pair in case["params"]] if params_mode else None
            request = AWSRequest(method=case["method"], url=url, data=base64.b64decode(case["body"]), params=params)
            for name, value in case["headers"]:
                request.headers[name] = value
            if case["unsigned"]:
                request.context["payload_signing_enabled"] = False
            credentials = Credentials(case["accessKeyID"], case["secret"], case.get("token"))
            if case["presign"]:
                signer = QuerySigner(credentials, case["service"], case["region"], expires=case["expires"])
            else:
                signer = HeaderSigner(credentials, case["service"], case["region"])
            signer.add_auth(request)
            return {
                "authorization": request.headers.get("Authorization"),
                "canonicalRequest": signer.captured_canonical_request,
                "stringToSign": signer.captured_string_to_sign,
                "headers": [[name, value] for name, value in request.headers.items()],
                "url": request.url,
            }

        results = []
        for case in json.load(sys.stdin):
            results.append({
                "name": case["name"],
                "botocoreVersion": botocore.__version__,
                "urlMode": sign(case, False),
                "paramsMode": sign(case, True) if case.get("params") is not None else None,
            })
        json.dump(results, sys.stdout)
        """#
}

// MARK: - The battery

extension SigningCase {
    static let json11Headers = [
        ("X-Amz-Target", "AmazonSSM.DescribeInstanceInformation"),
        ("Content-Type", "application/x-amz-json-1.1"),
        ("User-Agent", "aws-cli/2.22.0 md/Botocore#1.43.11 ua/2.1 os/linux#6.8"),
    ]

    static let battery: [SigningCase] = [
        SigningCase("get-root", method: "GET"),
        SigningCase("get-params", method: "GET", params: [("Action", "ListUsers"), ("Version", "2010-05-08")]),
        SigningCase("ssm-json11", headers: json11Headers, body: Array(#"{"MaxResults":50}"#.utf8)),
        SigningCase(
            "ssm-json11-session-token",
            headers: json11Headers + [("X-Amzn-Trace-Id", "Root=1-abc"), ("Expect", "100-continue")],
            body: Array(#"{"Filters":[{"Key":"PingStatus","Values":["Online"]}]}"#.utf8),
            token: SigningCase.token
        ),
        SigningCase(
            "kms-json11",
            host: "kms.eu-central-1.amazonaws.com",
            headers: [("X-Amz-Target", "TrentService.GenerateDataKey"), ("Content-Type", "application/x-amz-json-1.1")],
            body: Array(#"{"KeyId":"alias/ssm","NumberOfBytes":32}"#.utf8),
            service: "kms",
            region: "eu-central-1"
        ),
        SigningCase(
            "ec2-query-form",
            host: "ec2.eu-west-1.amazonaws.com",
            headers: [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
            body: Array(
                SigV4Request.encodeQuery([
                    ("Action", "DescribeInstances"), ("Version", "2016-11-15"), ("Filter.1.Name", "tag:Name"),
                    ("Filter.1.Value.1", "web server #1 & co/✓"),
                ]).utf8
            ),
            service: "ec2",
            region: "eu-west-1"
        ),
        SigningCase(
            "sts-query-get-session-token",
            method: "GET",
            host: "sts.amazonaws.com",
            params: [("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
            service: "sts",
            token: SigningCase.token
        ),
        SigningCase(
            "query-reserved-characters",
            method: "GET",
            params: [
                ("space", "a b"), ("plus", "a+b"), ("slash", "a/b"), ("equals", "a=b"), ("amp", "a&b"),
                ("tilde", "~user"), ("unicode", "héllo ☃ 🚀"), ("empty", ""), ("repeat", "2"), ("repeat", "1"),
                ("repeat", "10"), ("Upper", "x"), ("lower", "y"), ("star", "*"), ("percent", "100%"),
                ("key with space", "v"), ("semi;colon", "q?x#y"),
            ]
        ),
        SigningCase("query-raw-flags", method: "GET", query: "versioning=&acl&a=1&A=2&a=0"),
        SigningCase("path-encoded-space-and-unicode", method: "GET", path: "/a%20b/%E2%98%83/c"),
        SigningCase("path-raw-space-and-unicode", method: "GET", path: "/a b/café/☃"),
        SigningCase("path-dot-segments", method: "GET", path: "/a/./b/../c//d/"),
        SigningCase("path-dot-dot-above-root", method: "GET", path: "/../.."),
        SigningCase("path-reserved", method: "GET", path: "/x:y/@z/$1/a+b/~t/!*'()"),
        SigningCase(
            "header-whitespace-and-repeats",
            headers: [
                ("X-Custom", "  a   b \t c  "), ("X-Dup", "1"), ("x-dup", " 2 "), ("X-Empty", ""),
                ("X-Unicode", "naïve   value"), ("CONTENT-TYPE", "application/json"),
            ],
            body: Array("{}".utf8)
        ),
        SigningCase(
            "unsigned-payload",
            headers: [("Content-Type", "application/octet-stream")],
            body: Array("not covered by the signature".utf8),
            unsigned: true
        ),
        SigningCase("empty-body-post", headers: json11Headers),
        SigningCase(
            "precomputed-payload-hash",
            headers: json11Headers,
            body: Array(#"{"InstanceInformationFilterList":[]}"#.utf8),
            precomputedHash: true
        ),
        SigningCase("date-header", method: "GET", headers: [("Date", "Thu, 01 Jan 1970 00:00:00 GMT")]),
        SigningCase(
            "stale-authorization-and-date",
            headers: json11Headers + [("Authorization", "AWS4-HMAC-SHA256 stale"), ("X-Amz-Date", "19700101T000000Z")],
            body: Array("{}".utf8),
            token: SigningCase.token
        ),
        SigningCase(
            "emulator-loopback-http",
            scheme: "http",
            host: "127.0.0.1:4566",
            headers: json11Headers,
            body: Array("{}".utf8)
        ),
        SigningCase(
            "presigned-get",
            method: "GET",
            host: "ec2.us-east-1.amazonaws.com",
            query: "Action=DescribeInstances&Version=2016-11-15",
            service: "ec2",
            presign: true,
            expires: 300
        ),
        SigningCase(
            "presigned-get-session-token",
            method: "GET",
            host: "ssm.us-east-1.amazonaws.com",
            query: "Action=GetParameter&Name=%2Fapp%2Fdb%20password",
            token: SigningCase.token,
            presign: true
        ),
    ]
}
