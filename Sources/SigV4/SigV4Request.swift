/// An HTTP request exactly as it goes on the wire, which is what a signature covers: the signer adds its
/// headers to it and the verifier checks a received one.
///
/// `path` and `query` are the raw, already percent-encoded strings of the request target (split at `?`),
/// not decoded values, because the canonical form is computed from the wire bytes.
public struct SigV4Request: Sendable {
    /// What the signature says about the body.
    public enum Payload: Sendable, Hashable {
        /// The body itself; its SHA-256 is signed.
        case bytes([UInt8])
        /// The lowercase hex SHA-256 of a body the caller hashed itself (streamed or already hashed).
        case precomputedSHA256(String)
        /// The body is not covered: the request carries `X-Amz-Content-Sha256: UNSIGNED-PAYLOAD`.
        case unsigned
    }

    public var method: String
    /// The raw path, for example `/` or `/a%20b`.
    public var path: String
    /// The raw query without `?`, possibly empty.
    public var query: String
    /// Header fields in wire order; names compare case-insensitively, repeats are allowed.
    /// - Important: HTTP/1.1 requests must carry `Host`, and SigV4 signs it; the signer does not invent one.
    public var headers: [(name: String, value: String)]
    public var payload: Payload

    public init(
        method: String,
        path: String,
        query: String = "",
        headers: [(name: String, value: String)] = [],
        payload: Payload
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.payload = payload
    }

    public init(
        method: String,
        path: String,
        query: String = "",
        headers: [(name: String, value: String)] = [],
        body: [UInt8] = []
    ) {
        self.init(method: method, path: path, query: query, headers: headers, payload: .bytes(body))
    }
}

// MARK: - Headers

extension SigV4Request {
    /// The first value of `name` (case-insensitive), if any.
    public func headerValue(_ name: String) -> String? {
        let lowered = name.lowercased()
        return self.headers.first { $0.name.lowercased() == lowered }?.value
    }

    mutating func removeHeaders(_ name: String) {
        let lowered = name.lowercased()
        self.headers.removeAll { $0.name.lowercased() == lowered }
    }

    mutating func replaceHeader(_ name: String, with value: String) {
        self.removeHeaders(name)
        self.headers.append((name, value))
    }
}

// MARK: - Query encoding

extension SigV4Request {
    /// Encodes parameters the way SigV4 canonicalizes them (RFC 3986 unreserved characters kept, everything
    /// else `%XX` with uppercase hex, space as `%20`), in the given order.
    ///
    /// Use it for query strings and for Query-protocol (EC2, STS) form bodies; it is botocore's
    /// `percent_encode_sequence`, so what goes on the wire already is its own canonical form.
    public static func encodeQuery(_ parameters: [(String, String)]) -> String {
        parameters.map { key, value in
            SigV4Canonical.percentEncode(key) + "=" + SigV4Canonical.percentEncode(value)
        }.joined(separator: "&")
    }
}
