import NIOCore
import SSMProtocol

/// An error answered the way the AWS JSON 1.1 protocol answers it: a status and
/// `{"__type": code, "message": text}`. Messages never carry tokens or secrets.
public struct AWSAPIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var code: String
    public var message: String

    public init(status: Int = 400, code: String, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code): \(self.message)" }

    public var jsonBody: ByteBuffer {
        JSONValue.object([("__type", .string(self.code)), ("message", .string(self.message))]).encoded
    }

    /// The EC2 Query protocol's XML error document.
    public func ec2XMLBody(requestID: String) -> ByteBuffer {
        ByteBuffer(string: """
            <?xml version="1.0" encoding="UTF-8"?>
            <Response><Errors><Error><Code>\(xmlEscape(self.code))</Code><Message>\(xmlEscape(self.message))</Message></Error></Errors><RequestID>\(requestID)</RequestID></Response>
            """)
    }

    static func targetNotConnected(_ target: String) -> Self {
        .init(code: "TargetNotConnected", message: "\(target) is not connected.")
    }

    static func invalidDocument(_ name: String) -> Self {
        .init(code: "InvalidDocument", message: "Document with name \(name) does not exist.")
    }

    static func invalidParameters(_ message: String) -> Self {
        .init(code: "InvalidParameters", message: message)
    }

    static func validation(_ message: String) -> Self {
        .init(code: "ValidationException", message: message)
    }

    static func accessDenied(user: String, account: String, action: String, resource: String) -> Self {
        .init(
            code: "AccessDeniedException",
            message: "User: arn:aws:iam::\(account):user/\(user) is not authorized to perform: \(action) on resource: \(resource) because no identity-based policy allows the \(action) action"
        )
    }

    static func doesNotExist(_ message: String) -> Self {
        .init(code: "DoesNotExistException", message: message)
    }

    static func unknownOperation(_ target: String) -> Self {
        .init(code: "UnknownOperationException", message: "Operation \(target) is not supported by this emulator.")
    }

    static func serialization(_ detail: String) -> Self {
        .init(code: "SerializationException", message: detail)
    }
}

func xmlEscape(_ text: String) -> String {
    var result = ""
    result.reserveCapacity(text.utf8.count)
    for character in text {
        switch character {
        case "&": result += "&amp;"
        case "<": result += "&lt;"
        case ">": result += "&gt;"
        case "\"": result += "&quot;"
        case "'": result += "&apos;"
        default: result.append(character)
        }
    }
    return result
}
