import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import SigV4

/// One service endpoint with its signing scope: builds, signs, sends and retries requests, and turns error
/// answers into ``AWSServiceError``. Shared by every client so retries and error text behave the same.
struct AWSRequestSender: Sendable {
    /// The SigV4 signing name and the name in errors (`ssm`, `ec2`…).
    let service: String
    let endpoint: URL
    let region: String
    /// `nil` sends the request unsigned (web identity, SSO portal).
    let credentials: (any AWSCredentialProvider)?
    let httpClient: HTTPClient
    let retry: AWSRetryPolicy
    /// Per attempt, connection included.
    var timeout: TimeAmount = .seconds(30)
    /// Error answers are small; a response larger than this is refused rather than buffered.
    static let maximumResponseSize = 8 << 20

    init(
        service: String, endpoint: URL, region: String, credentials: (any AWSCredentialProvider)?, httpClient: HTTPClient,
        retry: AWSRetryPolicy
    ) {
        self.service = service
        self.endpoint = endpoint
        self.region = region
        self.credentials = credentials
        self.httpClient = httpClient
        self.retry = retry
    }

    /// A signed sender for one service of `configuration`.
    init(
        service: String, endpoint: KeyPath<AWSServiceEndpoints, URL>, configuration: AWSClientConfiguration,
        credentials: any AWSCredentialProvider, httpClient: HTTPClient
    ) {
        self.init(
            service: service, endpoint: configuration.endpoints[keyPath: endpoint], region: configuration.region,
            credentials: credentials, httpClient: httpClient, retry: configuration.retry)
    }

    enum ErrorFormat {
        case json
        case xml
    }

    struct Response {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
    }

    /// A JSON 1.1 call: `POST /` with `X-Amz-Target: <prefix>.<operation>`.
    func json(targetPrefix: String, operation: String, body: [String: Any], resource: String?) async throws -> [String: Any] {
        let data = try JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])
        let response = try await self.send(
            operation: operation, method: "POST", path: nil, query: "",
            headers: [
                ("Content-Type", "application/x-amz-json-1.1"), ("X-Amz-Target", "\(targetPrefix).\(operation)"),
            ],
            body: Array(data), errorFormat: .json, resource: resource)
        guard !response.body.isEmpty else { return [:] }
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any] else {
            throw self.malformed(operation: operation, "the response is not a JSON object", resource: resource)
        }
        return object
    }

    /// A Query-protocol call: `POST /` with a form body, XML answer.
    func query(action: String, version: String, parameters: [(String, String)], resource: String?) async throws -> XMLNode {
        let form = SigV4Request.encodeQuery([("Action", action), ("Version", version)] + parameters)
        let response = try await self.send(
            operation: action, method: "POST", path: nil, query: "",
            headers: [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
            body: Array(form.utf8), errorFormat: .xml, resource: resource)
        do {
            return try XMLNode.parse(response.body)
        } catch {
            throw self.malformed(operation: action, "the response is not XML (\(error))", resource: resource)
        }
    }

    func malformed(operation: String, _ problem: String, resource: String?) -> AWSServiceError {
        AWSServiceError(
            service: self.service, operation: operation, code: "MalformedResponse", message: problem, httpStatus: 200,
            resource: resource, region: self.region)
    }

    /// Sends with retries. `path` is appended to the endpoint's own path.
    func send(
        operation: String, method: String, path: String?, query: String, headers: [(String, String)], body: [UInt8],
        errorFormat: ErrorFormat, resource: String?
    ) async throws -> Response {
        var attempt = 1
        var renewedExpiredCredentials = false
        while true {
            var secrets: [String] = []
            do {
                let response = try await self.attempt(
                    method: method, path: path, query: query, headers: headers, body: body, secrets: &secrets)
                if (200..<300).contains(response.status) { return response }
                var error = self.serviceError(from: response, operation: operation, format: errorFormat, resource: resource)
                    .redacting(secrets)
                error.attempts = attempt
                if AWSServiceError.expiredCodes.contains(error.code), let provider = self.credentials, !renewedExpiredCredentials {
                    // Expired under us (clock skew, revoked session): one more try with freshly fetched credentials.
                    provider.invalidateCredentials()
                    renewedExpiredCredentials = true
                    continue
                }
                guard error.isRetryable, attempt < self.retry.maximumAttempts else { throw error }
            } catch let error as AWSServiceError {
                throw error
            } catch let error as AWSCredentialsError {
                throw error
            } catch let error as AWSConfigurationError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                // A transport failure (refused, reset, timed out): retryable. Its text never holds request data.
                var failure = AWSServiceError(
                    service: self.service, operation: operation, code: "RequestFailed",
                    message: "\(error) (endpoint \(self.endpoint.absoluteString))", httpStatus: 0, resource: resource,
                    region: self.region
                ).redacting(secrets)
                failure.attempts = attempt
                guard attempt < self.retry.maximumAttempts else { throw failure }
            }
            try await Task.sleep(for: self.retry.delay(afterAttempt: attempt))
            attempt += 1
        }
    }

    private func attempt(
        method: String, path: String?, query: String, headers: [(String, String)], body: [UInt8], secrets: inout [String]
    ) async throws -> Response {
        let host = Self.hostHeader(self.endpoint)
        var fullPath = self.endpoint.path.isEmpty ? "/" : self.endpoint.path
        if let path {
            fullPath = fullPath.hasSuffix("/") ? fullPath + path.drop { $0 == "/" } : fullPath + path
        }
        var request = SigV4Request(
            method: method, path: fullPath, query: query,
            headers: [("Host", host)] + headers.map { (name: $0.0, value: $0.1) }, body: body)
        if let provider = self.credentials {
            let credentials = try await provider.credentials()
            secrets = [credentials.secretAccessKey] + (credentials.sessionToken.map { [$0] } ?? [])
            SigV4Signer(credentials: credentials, region: self.region, service: self.service).sign(&request, at: Date())
        }
        var url = "\(self.endpoint.scheme ?? "https")://\(host)\(fullPath)"
        if !query.isEmpty { url += "?" + query }
        var outgoing = HTTPClientRequest(url: url)
        outgoing.method = HTTPMethod(rawValue: method)
        for (name, value) in request.headers { outgoing.headers.add(name: name, value: value) }
        outgoing.headers.add(name: "User-Agent", value: "ssmgate")
        if !body.isEmpty || method == "POST" || method == "PUT" {
            outgoing.body = .bytes(ByteBuffer(bytes: body))
        }
        let response = try await self.httpClient.execute(outgoing, timeout: self.timeout)
        let buffer = try await response.body.collect(upTo: Self.maximumResponseSize)
        return Response(status: Int(response.status.code), headers: response.headers, body: Array(buffer.readableBytesView))
    }

    /// `host` or `host:port` when the port is not the scheme's default, exactly what SigV4 signs.
    static func hostHeader(_ url: URL) -> String {
        var host = url.host ?? ""
        if host.contains(":") && !host.hasPrefix("[") { host = "[\(host)]" }
        guard let port = url.port else { return host }
        let scheme = url.scheme?.lowercased()
        if (scheme == "https" && port == 443) || (scheme == "http" && port == 80) { return host }
        return "\(host):\(port)"
    }

    func serviceError(from response: Response, operation: String, format: ErrorFormat, resource: String?) -> AWSServiceError {
        var code = ""
        var message = ""
        var requestID = response.headers.first(name: "x-amzn-RequestId") ?? response.headers.first(name: "x-amz-request-id")
        switch format {
        case .json:
            if let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any] {
                code = (object["__type"] as? String) ?? (object["code"] as? String) ?? (object["Code"] as? String) ?? ""
                message = (object["message"] as? String) ?? (object["Message"] as? String) ?? ""
            }
            if code.isEmpty, let header = response.headers.first(name: "x-amzn-ErrorType") { code = header }
        case .xml:
            if let root = try? XMLNode.parse(response.body) {
                code = root.first(named: "Code")?.text ?? ""
                message = root.first(named: "Message")?.text ?? ""
                requestID = requestID ?? root.first(named: "RequestId")?.text ?? root.first(named: "RequestID")?.text
            }
        }
        // `aws.protocoltests#Code`, `Code:http://internal.amazon.com/…`.
        if let hash = code.lastIndex(of: "#") { code = String(code[code.index(after: hash)...]) }
        if let colon = code.firstIndex(of: ":") { code = String(code[..<colon]) }
        if code.isEmpty { code = Self.codeForStatus(response.status) }
        return AWSServiceError(
            service: self.service, operation: operation, code: code, message: message, httpStatus: response.status,
            requestID: requestID, resource: resource, region: self.region)
    }

    static func codeForStatus(_ status: Int) -> String {
        switch status {
        case 403: "AccessDenied"
        case 404: "NotFound"
        case 429: "TooManyRequestsException"
        case 500..<600: "InternalServerError"
        default: "HTTP\(status)"
        }
    }
}

/// A JSON number from `JSONSerialization`, whichever bridged type the platform hands back.
func jsonNumber(_ value: Any?) -> Double? {
    switch value {
    case let number as Int: Double(number)
    case let number as Int64: Double(number)
    case let number as Double: number
    case let number as NSNumber: number.doubleValue
    default: nil
    }
}
