import NIOCore
import SSMProtocol

/// Human-readable one-line summaries of AgentMessages and smux frames for the protocol tools.
enum MessageFormatting {
    static func summary(of message: AgentMessage) -> String {
        var line = "\(message.messageType.rawValue) seq=\(message.sequenceNumber) flags=\(message.flags.rawValue)"
        if message.messageType.isStreamData {
            line += " type=\(message.payloadType)"
        }
        line += " id=\(message.messageID) bytes=\(message.payload.readableBytes)"
        if let detail = self.payloadDetail(of: message) {
            line += "  \(detail)"
        }
        return line
    }

    static func payloadDetail(of message: AgentMessage) -> String? {
        do {
            switch (message.messageType, message.payloadType) {
            case (.acknowledge, _):
                let ack = try Acknowledgement(decoding: message.payload)
                return "ack \(ack.acknowledgedMessageType.rawValue) seq=\(ack.acknowledgedSequenceNumber)"
            case (.channelClosed, _):
                let closed = try ChannelClosed(decoding: message.payload)
                return "session=\(closed.sessionID)" + ((closed.output ?? "").isEmpty ? "" : " output=\(quoted(closed.output!))")
            case (.agentSessionState, _):
                return "state=\(try AgentSessionState(decoding: message.payload).sessionState)"
            case (.startPublication, _), (.pausePublication, _):
                return nil
            case (_, .handshakeRequest):
                let request = try HandshakeRequest(decoding: message.payload)
                let actions = request.requestedClientActions.map(\.actionType).joined(separator: ",")
                return "agent=\(request.agentVersion) actions=[\(actions)] sessionType=\(request.sessionType ?? "-")"
            case (_, .handshakeResponse):
                let response = try HandshakeResponse(decoding: message.payload)
                let statuses = response.processedClientActions.map { "\($0.actionType):\($0.actionStatus)" }.joined(separator: ",")
                return "client=\(response.clientVersion) actions=[\(statuses)]"
            case (_, .handshakeComplete):
                let complete = try HandshakeComplete(decoding: message.payload)
                return "took=\(complete.handshakeTimeToComplete / 1_000_000)ms"
                    + (complete.customerMessage.isEmpty ? "" : " message=\(quoted(complete.customerMessage))")
            case (_, .size):
                let size = try TerminalSize(decoding: message.payload)
                return "\(size.columns)x\(size.rows)"
            case (_, .flag):
                return "flag=\(try PortFlag(decoding: message.payload))"
            case (_, .exitCode):
                return "exit=\(try ExitCode(decoding: message.payload).value)"
            case (_, .encryptionChallengeRequest), (_, .encryptionChallengeResponse):
                return "challenge"
            default:
                return nil
            }
        } catch {
            return "unreadable payload (\(error))"
        }
    }

    static func summary(of frame: SmuxFrame) -> String {
        switch frame.command {
        case .psh: "smux PSH sid=\(frame.streamID) \(frame.payload.readableBytes) bytes"
        case .upd:
            if let update = frame.windowUpdate {
                "smux UPD sid=\(frame.streamID) consumed=\(update.consumed) window=\(update.window)"
            } else {
                "smux UPD sid=\(frame.streamID)"
            }
        default: "smux \(String(describing: frame.command).uppercased()) sid=\(frame.streamID)"
        }
    }

    static func quoted(_ text: String) -> String {
        "\"" + text.unicodeScalars.map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F ? String($0) : $0.escaped(asASCII: true) }.joined() + "\""
    }

    static func bytes(fromHex text: some StringProtocol) -> ByteBuffer? {
        var buffer = ByteBuffer()
        var high: UInt8?
        for scalar in text.utf8 {
            if scalar == UInt8(ascii: " ") || scalar == UInt8(ascii: "\n") || scalar == UInt8(ascii: "\t") || scalar == UInt8(ascii: "\r") { continue }
            let nibble: UInt8
            switch scalar {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = scalar - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = scalar - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = scalar - UInt8(ascii: "A") + 10
            default: return nil
            }
            if let h = high {
                buffer.writeInteger(h << 4 | nibble)
                high = nil
            } else {
                high = nibble
            }
        }
        return high == nil ? buffer : nil
    }
}
