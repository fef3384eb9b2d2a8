internal import Crypto
import Foundation

/// The canonicalization rules of Signature Version 4, shared by the signer and the verifier so that
/// both sides compute the same bytes.
///
/// The rules follow botocore's `SigV4Auth` (botocore 1.43), because awscli is the client the emulator
/// must accept and botocore is the reference our client is tested against:
/// - URI: `quote(remove_dot_segments(path), safe='/~')`. The wire path is *not* decoded first, so an
///   already-encoded path is encoded again (`%20` becomes `%2520`): the non-S3 "double encoding".
/// - Query: pairs split on `&` and the first `=`, each key and value percent-decoded and re-encoded with
///   the RFC 3986 unreserved set, sorted by key then value (byte order).
/// - Headers: names lowercased, values with surrounding whitespace removed and inner runs collapsed to a
///   single space (Python's `' '.join(value.split())`), repeated headers joined with `,`.
enum SigV4Canonical {
    static let algorithm = "AWS4-HMAC-SHA256"
    static let terminator = "aws4_request"
    static let unsignedPayload = "UNSIGNED-PAYLOAD"
    static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// Headers botocore never signs (`botocore.auth.SIGNED_HEADERS_BLACKLIST`): hop-by-hop headers and
    /// ones that proxies or HTTP stacks rewrite.
    static let unsignedHeaderNames: Set<String> = [
        "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
    ]
}

// MARK: - Percent encoding

extension SigV4Canonical {
    /// RFC 3986 unreserved characters: the only bytes SigV4 leaves unencoded (`A-Z a-z 0-9 - _ . ~`).
    static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
            UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// Appends `bytes` percent-encoded (uppercase hex) to `output`, keeping unreserved bytes and,
    /// when `keepingSlash`, `/`.
    static func percentEncode(_ bytes: some Sequence<UInt8>, keepingSlash: Bool = false, into output: inout [UInt8]) {
        for byte in bytes {
            if self.isUnreserved(byte) || (keepingSlash && byte == UInt8(ascii: "/")) {
                output.append(byte)
            } else {
                output.append(UInt8(ascii: "%"))
                output.append(self.hexDigitsUpper[Int(byte >> 4)])
                output.append(self.hexDigitsUpper[Int(byte & 0x0F)])
            }
        }
    }

    static func percentEncode(_ string: String, keepingSlash: Bool = false) -> String {
        var output: [UInt8] = []
        output.reserveCapacity(string.utf8.count)
        self.percentEncode(string.utf8, keepingSlash: keepingSlash, into: &output)
        return String(decoding: output, as: UTF8.self)
    }

    /// Decodes `%XX` escapes. `+` stays a literal plus (RFC 3986 gives it no meaning; SigV4 clients
    /// encode a space as `%20`), and a `%` not followed by two hex digits stays literal.
    static func percentDecode(_ bytes: Substring.UTF8View) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index != bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "%"),
                let first = bytes.index(index, offsetBy: 1, limitedBy: bytes.endIndex), first != bytes.endIndex,
                let second = bytes.index(first, offsetBy: 1, limitedBy: bytes.endIndex), second != bytes.endIndex,
                let high = self.hexValue(bytes[first]), let low = self.hexValue(bytes[second])
            {
                output.append(high << 4 | low)
                index = bytes.index(after: second)
            } else {
                output.append(byte)
                index = bytes.index(after: index)
            }
        }
        return output
    }

    private static let hexDigitsUpper: [UInt8] = Array("0123456789ABCDEF".utf8)
    private static let hexDigitsLower: [UInt8] = Array("0123456789abcdef".utf8)

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    static func lowercaseHex(_ bytes: some Sequence<UInt8>) -> String {
        var output: [UInt8] = []
        output.reserveCapacity(64)
        for byte in bytes {
            output.append(self.hexDigitsLower[Int(byte >> 4)])
            output.append(self.hexDigitsLower[Int(byte & 0x0F)])
        }
        return String(decoding: output, as: UTF8.self)
    }
}

// MARK: - URI, query and headers

extension SigV4Canonical {
    /// botocore `SigV4Auth._normalize_url_path`: `quote(normalize_url_path(path), safe='/~')`.
    static func uri(path: String) -> String {
        self.percentEncode(self.removeDotSegments(path), keepingSlash: true)
    }

    /// botocore `utils.normalize_url_path` / `remove_dot_segments`: RFC 3986 § 5.2.4 plus the removal of
    /// empty segments ("AWS services require consecutive slashes to be removed").
    static func removeDotSegments(_ path: String) -> String {
        if path.isEmpty { return "/" }
        var output: [Substring] = []
        for segment in path.split(separator: "/", omittingEmptySubsequences: true) where segment != "." {
            if segment == ".." {
                if !output.isEmpty { output.removeLast() }
            } else {
                output.append(segment)
            }
        }
        let first = path.hasPrefix("/") ? "/" : ""
        let last = path.hasSuffix("/") && !output.isEmpty ? "/" : ""
        return first + output.joined(separator: "/") + last
    }

    /// The canonical query string of a raw (wire) query.
    /// - Parameter excludingKey: a key left out, for presigned URLs whose `X-Amz-Signature` is not signed.
    static func query(_ raw: String, excludingKey: String? = nil) -> String {
        if raw.isEmpty { return "" }
        var pairs: [(key: [UInt8], value: [UInt8])] = []
        for component in raw.split(separator: "&", omittingEmptySubsequences: false) {
            let key: Substring
            let value: Substring
            if let equals = component.firstIndex(of: "=") {
                key = component[..<equals]
                value = component[component.index(after: equals)...]
            } else {
                key = component
                value = component[component.endIndex...]
            }
            let decodedKey = self.percentDecode(key.utf8)
            if let excludingKey, decodedKey.elementsEqual(excludingKey.utf8) { continue }
            var encodedKey: [UInt8] = []
            var encodedValue: [UInt8] = []
            self.percentEncode(decodedKey, into: &encodedKey)
            self.percentEncode(self.percentDecode(value.utf8), into: &encodedValue)
            pairs.append((encodedKey, encodedValue))
        }
        pairs.sort { lhs, rhs in
            lhs.key == rhs.key ? lhs.value.lexicographicallyPrecedes(rhs.value) : lhs.key.lexicographicallyPrecedes(rhs.key)
        }
        var output: [UInt8] = []
        for (index, pair) in pairs.enumerated() {
            if index > 0 { output.append(UInt8(ascii: "&")) }
            output.append(contentsOf: pair.key)
            output.append(UInt8(ascii: "="))
            output.append(contentsOf: pair.value)
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// Python's `' '.join(value.split())`: `str.split()` splits on every character for which
    /// `str.isspace()` is true, which includes the ASCII separators 0x1C-0x1F besides Unicode White_Space.
    static func trimAll(_ value: String) -> String {
        var output = String.UnicodeScalarView()
        var pendingSpace = false
        for scalar in value.unicodeScalars {
            if self.isPythonWhitespace(scalar) {
                pendingSpace = !output.isEmpty
            } else {
                if pendingSpace { output.append(" ") }
                pendingSpace = false
                output.append(scalar)
            }
        }
        return String(output)
    }

    private static func isPythonWhitespace(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default:
            return false
        }
    }

    /// Byte-wise (code point) order, as Python sorts `str`.
    static func precedes(_ lhs: String, _ rhs: String) -> Bool {
        lhs.utf8.lexicographicallyPrecedes(rhs.utf8)
    }

    /// Canonical header block and signed-header list for `names` (lowercase), taking every value of each
    /// name from `headers` in order.
    static func headers(
        _ headers: [(name: String, value: String)],
        signing names: [String]
    ) -> (canonical: String, signed: String) {
        let sortedNames = Array(Set(names)).sorted(by: self.precedes)
        var lines: [String] = []
        lines.reserveCapacity(sortedNames.count)
        for name in sortedNames {
            let values = headers.lazy.filter { $0.name.lowercased() == name }.map { self.trimAll($0.value) }
            lines.append(name + ":" + values.joined(separator: ","))
        }
        return (lines.joined(separator: "\n"), sortedNames.joined(separator: ";"))
    }

    /// The names botocore signs for a request: every header but the unsigned ones, lowercased.
    static func signableHeaderNames(_ headers: [(name: String, value: String)]) -> [String] {
        headers.map { $0.name.lowercased() }.filter { !self.unsignedHeaderNames.contains($0) }
    }
}

// MARK: - Canonical request, string to sign, signature

extension SigV4Canonical {
    static func canonicalRequest(
        method: String,
        path: String,
        query: String,
        canonicalHeaders: String,
        signedHeaders: String,
        payloadHash: String
    ) -> String {
        [method.uppercased(), self.uri(path: path), query, canonicalHeaders + "\n", signedHeaders, payloadHash]
            .joined(separator: "\n")
    }

    static func credentialScope(dateStamp: String, region: String, service: String) -> String {
        "\(dateStamp)/\(region)/\(service)/\(self.terminator)"
    }

    static func stringToSign(timestamp: String, scope: String, canonicalRequest: String) -> String {
        [self.algorithm, timestamp, scope, self.sha256Hex(Array(canonicalRequest.utf8))].joined(separator: "\n")
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        self.lowercaseHex(SHA256.hash(data: bytes))
    }

    /// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`,
    /// then the lowercase hex HMAC of the string to sign.
    static func signature(
        secretAccessKey: String,
        dateStamp: String,
        region: String,
        service: String,
        stringToSign: String
    ) -> String {
        var key = SymmetricKey(data: Array(("AWS4" + secretAccessKey).utf8))
        for part in [dateStamp, region, service, self.terminator] {
            key = SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key))
        }
        return self.lowercaseHex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
    }

    /// Compares without an early exit, so the time taken does not reveal how many leading characters of a
    /// forged signature were right.
    static func constantTimeEquals(_ lhs: String, _ rhs: String) -> Bool {
        let left = Array(lhs.utf8)
        let right = Array(rhs.utf8)
        guard left.count == right.count else { return false }
        var difference: UInt8 = 0
        for index in left.indices { difference |= left[index] ^ right[index] }
        return difference == 0
    }
}
