import Gateway
import AWSClient
import ArgumentParser
import DataChannel
import Foundation
import Sessions

/// Options every session command shares: where AWS is and who we are there.
struct AWSOptions: ParsableArguments {
    @Option(name: .long, help: "Named profile from ~/.aws/config and ~/.aws/credentials.")
    var profile: String?

    @Option(name: .long, help: "AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, then the profile's region).")
    var region: String?

    @Option(name: .customLong("endpoint-url"), help: "SSM endpoint, e.g. http://127.0.0.1:4587 for `ssmgate local`.")
    var endpointURL: String?

    @Option(name: .long, help: "A file of `alias instance-id` lines (default ~/.config/ssmgate/aliases).")
    var aliases: String?

    func context() throws -> AWSContext {
        do {
            return try AWSContext(profile: self.profile, region: self.region, endpointURL: self.endpointURL)
        } catch {
            throw CommandFailure(message: "\(error)", exitCode: 2)
        }
    }
}

/// An error whose message is for the user, with the process exit status to use.
struct CommandFailure: Error, CustomStringConvertible {
    var message: String
    var exitCode: Int32
    var description: String { self.message }
}

/// Starts a session and runs it; maps failures to a message and an exit status.
enum SessionCommandRunner {
    static func run(
        options: AWSOptions, host: String, documentName: String?, parameters: [String: [String]], reason: String?,
        notice: @escaping NoticeSink, announce: ((String) -> Void)? = nil
    ) async -> Int32 {
        let context: AWSContext
        do {
            context = try options.context()
        } catch {
            Console.error("ssmgate: \(error)\n")
            return 2
        }
        let status = await self.run(
            context: context, options: options, host: host, documentName: documentName, parameters: parameters, reason: reason,
            notice: notice, announce: announce)
        await context.shutdown()
        StandardStreams.finishCopies()
        return status
    }

    static func run(
        context: AWSContext, options: AWSOptions, host: String, documentName: String?, parameters: [String: [String]],
        reason: String?, notice: @escaping NoticeSink, announce: ((String) -> Void)?
    ) async -> Int32 {
        do {
            let target = try await TargetResolver(context: context, aliasFile: options.aliases).resolve(host)
            let response = try await context.ssm.startSession(
                target: target, documentName: documentName, parameters: parameters, reason: reason)
            announce?(response.sessionID)
            let outcome = try await SessionRun.run(context: context, response: response, target: target, notice: notice)
            if let error = outcome.error {
                switch error {
                case .closedByService(let output):
                    notice(output.isEmpty ? "" : "\nSessionId: \(response.sessionID) : \(output)\n")
                    return outcome.exitCode ?? 0
                default:
                    Console.error("ssmgate: \(error)\n")
                    try? await context.ssm.terminateSession(sessionID: response.sessionID)
                    return 1
                }
            }
            // Ended here (stdin EOF, Ctrl-C): tell the service, so the agent lets go of the
            // destination now rather than at the idle timeout.
            try? await context.ssm.terminateSession(sessionID: response.sessionID)
            return outcome.exitCode ?? 0
        } catch {
            Console.error("ssmgate: \(error)\n")
            return 1
        }
    }
}

struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Connect stdin/stdout to HOST:PORT through Session Manager (for ssh's ProxyCommand).",
        discussion: """
            In ~/.ssh/config:
              Host i-* mi-*
                ProxyCommand ssmgate proxy %h %p
            HOST is an instance id (i-…, mi-…), an alias, or a Name tag. When an `ssmgate serve` daemon runs \
            (its socket: SSMGATE_DAEMON_SOCKET, $XDG_RUNTIME_DIR/ssmgate.sock or ~/.ssmgate/daemon.sock), the \
            connection uses its warm pool; otherwise this starts its own AWS-StartSSHSession.
            """
    )

    @Flag(name: .customLong("no-daemon"), help: "Always start a session of its own, even when a daemon runs.")
    var noDaemon = false

    @OptionGroup var aws: AWSOptions

    @Argument(help: "Instance id, alias or Name tag.")
    var host: String

    @Argument(help: "Port on the instance (22 for sshd).")
    var port: Int

    func validate() throws {
        guard (1...65535).contains(self.port) else { throw ValidationError("PORT must be between 1 and 65535, not \(self.port)") }
    }

    func run() async throws {
        if !self.noDaemon {
            let path = GatewayConfiguration.defaultDaemonSocket()
            switch DaemonSocketClient.run(path: path, host: self.host, port: self.port) {
            case .finished:
                return
            case .refused(let message):
                Console.error("ssmgate proxy: \(message)\n")
                throw ExitCode(1)
            case .noDaemon:
                break
            }
        }
        // stdout is the SSH stream: every message goes to stderr, and only when something fails.
        let status = await SessionCommandRunner.run(
            options: self.aws, host: self.host, documentName: "AWS-StartSSHSession",
            parameters: ["portNumber": [String(self.port)]], reason: nil, notice: { _ in })
        throw ExitCode(status)
    }
}

struct ForwardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Forward a local port to a port on the target, or on a host the target reaches.",
        discussion: """
            ssmgate forward i-0123456789abcdef0 --remote-port 5432 --local-port 15432
            ssmgate forward bastion --remote-host db.internal --remote-port 5432 --local-port 15432
            """
    )

    @OptionGroup var aws: AWSOptions

    @Argument(help: "Instance id, alias or Name tag.")
    var target: String

    @Option(name: .customLong("remote-host"), help: "Forward to this host as seen from the target (AWS-StartPortForwardingSessionToRemoteHost).")
    var remoteHost: String?

    @Option(name: .customLong("remote-port"), help: "The destination port.")
    var remotePort: Int

    @Option(name: .customLong("local-port"), help: "Local port on 127.0.0.1 (0 or absent: any free port).")
    var localPort: Int = 0

    func validate() throws {
        guard (1...65535).contains(self.remotePort) else { throw ValidationError("--remote-port must be between 1 and 65535") }
        guard (0...65535).contains(self.localPort) else { throw ValidationError("--local-port must be between 0 and 65535") }
    }

    func run() async throws {
        var parameters = ["portNumber": [String(self.remotePort)], "localPortNumber": [String(self.localPort)]]
        var document = "AWS-StartPortForwardingSession"
        if let remoteHost {
            parameters["host"] = [remoteHost]
            document = "AWS-StartPortForwardingSessionToRemoteHost"
        }
        let status = await SessionCommandRunner.run(
            options: self.aws, host: self.target, documentName: document, parameters: parameters, reason: nil,
            notice: { Console.out($0) }, announce: { Console.out("\nStarting session with SessionId: \($0)\n") })
        throw ExitCode(status)
    }
}

struct ShellCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shell",
        abstract: "Open an interactive shell on the target, or run one command there on a terminal.",
        discussion: """
            With --command, the command runs through AWS-StartInteractiveCommand and ssmgate exits \
            with its exit status. Without it, the default shell document runs (Standard_Stream).
            """
    )

    @OptionGroup var aws: AWSOptions

    @Argument(help: "Instance id, alias or Name tag.")
    var target: String

    @Option(name: .long, help: "Run this command (sh -c) instead of a login shell.")
    var command: String?

    @Option(name: .long, help: "Session document to use instead of the default.")
    var document: String?

    func run() async throws {
        var parameters: [String: [String]] = [:]
        var document = self.document
        if let command {
            parameters["command"] = [ShellSession.wrapCommand(command)]
            document = document ?? "AWS-StartInteractiveCommand"
        }
        let status = await SessionCommandRunner.run(
            options: self.aws, host: self.target, documentName: document, parameters: parameters, reason: nil,
            notice: { Console.error($0) }, announce: { Console.error("\nStarting session with SessionId: \($0)\n\n") })
        throw ExitCode(status)
    }
}

struct InstallPluginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install-plugin",
        abstract: "Make this binary the session-manager-plugin that `aws ssm start-session` runs.",
        discussion: "Creates DIR/session-manager-plugin as a symbolic link to this executable (DIR: ~/.local/bin)."
    )

    @Argument(help: "Directory on PATH for the link.")
    var directory: String?

    @Flag(name: .long, help: "Replace an existing session-manager-plugin there.")
    var force = false

    func run() async throws {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
        let directory = self.directory ?? "\(home)/.local/bin"
        let link = URL(fileURLWithPath: directory).appendingPathComponent("session-manager-plugin").path
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        let realExecutable = Bundle.main.executablePath.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path } ?? executable
        let manager = FileManager.default
        do {
            try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
            if (try? manager.destinationOfSymbolicLink(atPath: link)) != nil || manager.fileExists(atPath: link) {
                guard self.force else {
                    throw CommandFailure(message: "\(link) already exists; pass --force to replace it.", exitCode: 1)
                }
                try manager.removeItem(atPath: link)
            }
            try manager.createSymbolicLink(atPath: link, withDestinationPath: realExecutable)
        } catch let failure as CommandFailure {
            Console.error("ssmgate: \(failure)\n")
            throw ExitCode(failure.exitCode)
        } catch {
            Console.error("ssmgate: cannot create \(link): \(error.localizedDescription)\n")
            throw ExitCode(1)
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        print("Installed \(link) -> \(realExecutable)")
        if !path.split(separator: ":").contains(Substring(directory)) {
            print("Note: \(directory) is not on PATH; add it so that `aws ssm start-session` finds the plugin.")
        }
    }
}
