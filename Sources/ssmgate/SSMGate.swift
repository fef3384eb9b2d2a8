import ArgumentParser

@main
struct SSMGate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ssmgate",
        abstract: "SSH/SCP tunnelling gateway over AWS Systems Manager Session Manager.",
        discussion: """
            Protocol tools available now: decode Session Manager frames and replay recorded sessions.
            """,
        version: SSMGateVersion.current,
        subcommands: [LocalCommand.self, DecodeCommand.self, InspectCommand.self]
    )
}

enum SSMGateVersion {
    static let current = "0.1.0"
}
