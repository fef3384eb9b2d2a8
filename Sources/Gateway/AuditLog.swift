import Foundation
import LocalSSM
import NIOConcurrencyHelpers
import NIOCore

/// One JSON line per stream event (open, close, denied) for the audit trail: who, from where,
/// through which front, to what, through which session, how many bytes, how long, and the outcome.
/// Secrets never appear: only the key's fingerprint.
public final class AuditLog: Sendable {
    enum Sink {
        case standardError
        case file(FileHandle)
    }

    let sink: NIOLockedValueBox<Sink>
    let path: String?

    /// `path` nil writes to standard error.
    public init(path: String?) throws {
        self.path = path
        self.sink = NIOLockedValueBox(try Self.open(path))
    }

    static func open(_ path: String?) throws -> Sink {
        guard let path else { return .standardError }
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                throw ConfigurationError(file: path, key: "audit_log", problem: "cannot create the audit log file; check the directory exists and is writable")
            }
        }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            throw ConfigurationError(file: path, key: "audit_log", problem: "cannot open the audit log for writing")
        }
        handle.seekToEndOfFile()
        return .file(handle)
    }

    /// Reopens the file (after log rotation, on SIGHUP).
    public func reopen() {
        guard let path, let fresh = try? Self.open(path) else { return }
        self.sink.withLockedValue { $0 = fresh }
    }

    public func record(event: String, request: StreamRequest, route: RouteDescription?, record: StreamRecord? = nil, outcome: String) {
        var fields: [(String, String)] = [
            ("time", Self.quote(Self.timestamp())),
            ("event", Self.quote(event)),
            ("user", Self.quote(request.identity.user)),
            ("key_fingerprint", request.identity.keyFingerprint.map(Self.quote) ?? "null"),
            ("source", Self.quote(request.identity.sourceAddress)),
            ("front", Self.quote(request.identity.front.rawValue)),
            ("host", Self.quote(request.host)),
            ("port", String(request.port)),
            ("target", route.map { Self.quote($0.target) } ?? "null"),
            ("document", route.map { Self.quote($0.document) } ?? "null"),
            ("session_id", route.map { Self.quote($0.sessionID) } ?? "null"),
        ]
        if let record {
            fields.append(("bytes_from_client", String(record.bytesFromClient)))
            fields.append(("bytes_to_client", String(record.bytesToClient)))
            let seconds = Double((record.closed - record.opened).nanoseconds) / 1e9
            fields.append(("duration_seconds", String(format: "%.3f", seconds)))
        }
        fields.append(("outcome", Self.quote(outcome)))
        let line = "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}\n"
        self.sink.withLockedValue { sink in
            switch sink {
            case .standardError: FileHandle.standardError.write(Data(line.utf8))
            case .file(let handle): handle.write(Data(line.utf8))
            }
        }
    }

    static func timestamp() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date())
    }

    /// A JSON string literal.
    static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20: out += String(format: "\\u%04x", c.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
