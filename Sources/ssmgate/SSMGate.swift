import ArgumentParser
import DataChannel
import Foundation

@main
enum Main {
    static func main() async {
        // The same binary is the drop-in session-manager-plugin (a symlink or copy by that name).
        if PluginMode.isInvokedAsPlugin(CommandLine.arguments[0]) {
            exit(await PluginMode.run(Array(CommandLine.arguments.dropFirst())))
        }
        await SSMGate.main()
    }
}

struct SSMGate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ssmgate",
        abstract: "SSH/SCP tunnelling gateway over AWS Systems Manager Session Manager.",
        discussion: """
            Single sessions: proxy (ssh ProxyCommand), forward (local port), shell. \
            Installed as session-manager-plugin (ssmgate install-plugin) it serves `aws ssm start-session`. \
            `ssmgate local` runs a local emulator of Session Manager for trying all of it without AWS.
            """,
        version: SSMGateVersion.description,
        subcommands: [
            ServeCommand.self, ProxyCommand.self, ForwardCommand.self, ShellCommand.self, InstallPluginCommand.self,
            LocalCommand.self, DecodeCommand.self, InspectCommand.self,
        ]
    )
}

enum SSMGateVersion {
    static let current = "0.2.0"
    /// The plugin-protocol version goes first: tools that parse `--version` (awscli's gate) read it.
    static var description: String { "\(DataChannelConfiguration.defaultClientVersion) (ssmgate \(current))" }
}
