import ArgumentParser
import Foundation
import NIOCore
import SSMProtocol

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Replay a recorded session transcript (JSON lines) as a decoded timeline.",
        discussion: """
            Decodes every WebSocket frame with ssmgate's own codec, and for port sessions the smux
            stream carried inside, reassembled across messages. The transcripts of the official client
            and agent ship in Tests/SSMProtocolTests/Vectors/transcripts.
            """
    )

    @Argument(help: "A transcript file: one JSON object per line with 'event', 'dir' and 'hex' members.")
    var file: String

    func run() throws {
        let text: String
        do {
            text = try String(contentsOfFile: self.file, encoding: .utf8)
        } catch {
            throw ValidationError("cannot read \(self.file): \(error.localizedDescription)")
        }
        var smux: [String: (decoder: SmuxFrameDecoder, pending: ByteBuffer, seen: Set<Int64>, failed: Bool)] = [:]
        var invalid = 0
        for (number, line) in text.split(separator: "\n").enumerated() {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                print("line \(number + 1): not a JSON object, skipped")
                continue
            }
            let time = (object["t_ms"] as? Double).map { String(format: "%9.1f", $0) } ?? "         "
            switch object["event"] as? String {
            case "frame":
                let direction = (object["dir"] as? String ?? "?").padding(toLength: 12, withPad: " ", startingAt: 0)
                guard let hex = object["hex"] as? String else {
                    print("\(time) \(direction) websocket \(object["opcode"] as? String ?? "control") frame")
                    continue
                }
                guard let frame = MessageFormatting.bytes(fromHex: hex) else {
                    print("\(time) \(direction) frame is not hex")
                    invalid += 1
                    continue
                }
                do {
                    let message = try AgentMessage.decode(frame)
                    print("\(time) \(direction) \(MessageFormatting.summary(of: message))")
                    let dir = object["dir"] as? String ?? ""
                    if dir.hasSuffix("->mgs"), message.messageType.isStreamData, message.payloadType == .output {
                        var state = smux[dir] ?? (SmuxFrameDecoder(), ByteBuffer(), [], false)
                        if !state.failed, state.seen.insert(message.sequenceNumber).inserted {
                            var payload = message.payload
                            state.pending.writeBuffer(&payload)
                            do {
                                while let smuxFrame = try state.decoder.decode(buffer: &state.pending) {
                                    print("\(String(repeating: " ", count: 24))\(MessageFormatting.summary(of: smuxFrame))")
                                }
                            } catch {
                                state.failed = true  // not an smux stream (shell or stdio session)
                            }
                        }
                        smux[dir] = state
                    }
                } catch {
                    print("\(time) \(direction) INVALID \(error)")
                    invalid += 1
                }
            case let event?:
                let detail = (object["path"] as? String).map { " \($0)" } ?? ""
                print("\(time) \(event)\(detail)")
            case nil:
                if let name = object["transcript"] as? String {
                    print("transcript \(name): \(object["about"] as? String ?? "")")
                }
            }
        }
        if invalid > 0 { throw ExitCode(1) }
    }
}
