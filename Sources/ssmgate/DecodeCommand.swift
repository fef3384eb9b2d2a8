import ArgumentParser
import NIOCore
import SSMProtocol

struct DecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Decode Session Manager data-channel frames given in hex.",
        discussion: "Frames come from the arguments, or one per line on standard input. Exits 1 if any frame is invalid."
    )

    @Argument(help: "AgentMessage frames in hex. Reads standard input when none are given.")
    var frames: [String] = []

    @Flag(name: .long, help: "Decode like the agent does, without checking the payload digest.")
    var skipDigest = false

    func run() throws {
        var inputs = self.frames
        if inputs.isEmpty {
            while let line = readLine() {
                if !line.allSatisfy(\.isWhitespace) { inputs.append(line) }
            }
        }
        guard !inputs.isEmpty else {
            throw ValidationError("no frames given: pass hex frames as arguments or on standard input")
        }
        var failures = 0
        for (index, text) in inputs.enumerated() {
            guard let frame = MessageFormatting.bytes(fromHex: text) else {
                print("frame \(index + 1): not hexadecimal (or an odd number of digits)")
                failures += 1
                continue
            }
            do {
                let message = try AgentMessage.decode(frame, options: .init(verifiesDigest: !self.skipDigest))
                print(MessageFormatting.summary(of: message))
            } catch {
                print("frame \(index + 1): invalid AgentMessage: \(error)")
                failures += 1
            }
        }
        if failures > 0 { throw ExitCode(1) }
    }
}
