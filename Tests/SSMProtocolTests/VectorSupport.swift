import Foundation
import NIOCore
import SSMProtocol

/// Loads the golden vectors shipped with the tests (copied from shared/reference/vectors).
enum Vectors {
    static func url(_ name: String) -> URL {
        Bundle.module.url(forResource: "Vectors", withExtension: nil)!.appendingPathComponent(name)
    }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: self.url(name))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// Parsed once: parameterized tests ask for it per argument. Never mutated after
    /// initialisation, which is what makes the unchecked sharing of `[String: Any]` safe.
    nonisolated(unsafe) static let cachedCases: [[String: Any]] = try! Self.json("agentmessage.json")["cases"] as! [[String: Any]]

    static func agentMessageCases() throws -> [[String: Any]] {
        Self.cachedCases
    }

    static func caseIDs(kind: String) throws -> [String] {
        try self.agentMessageCases().filter { $0["kind"] as? String == kind }.map { $0["id"] as! String }
    }

    static func agentMessageCase(_ id: String) throws -> [String: Any] {
        try self.agentMessageCases().first { $0["id"] as? String == id }!
    }

    static let transcriptNames = [
        "awscli_ssh", "noninteractive", "port_mux", "port_mux_idle", "port_ssh_stdio",
        "shell", "shell_blackhole", "shell_kms", "shell_resume",
    ]

    /// Every event line after the first (scenario) line.
    static func transcriptEvents(_ name: String) throws -> [[String: Any]] {
        let text = try String(contentsOf: self.url("transcripts/\(name).jsonl"), encoding: .utf8)
        return try text.split(separator: "\n").dropFirst().map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
    }
}

extension ByteBuffer {
    init(hex: String) {
        var buffer = ByteBuffer()
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            func nibble(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : (c | 0x20) - 87 }
            buffer.writeInteger(nibble(high) << 4 | nibble(low))
        }
        self = buffer
    }

    var hex: String {
        self.readableBytesView.map { String(format: "%02x", $0) }.joined()
    }
}

