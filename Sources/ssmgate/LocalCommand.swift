import ArgumentParser
import Foundation
import LocalSSM

struct LocalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "local",
        abstract: "Run the local emulator of Session Manager (SSM and EC2 APIs, MGS, agents) on loopback.",
        discussion: """
            With no configuration file it listens on 127.0.0.1:4587 (region us-east-1, access key test/test) \
            and serves one online instance, i-0123456789abcdef0, named 'local', whose agent reaches this machine.
            """
    )

    @Option(name: .long, help: "A YAML file with listen, region, credentials, instances, limits and faults.")
    var config: String?

    @Option(name: .long, help: "Address to listen on, HOST:PORT (overrides the file).")
    var listen: String?

    @Option(name: .long, help: "aws (the service's limits, the default) or unlimited; figures the file sets under limits: still apply.")
    var limits: String?

    func run() async throws {
        var configuration = LocalSSMConfiguration()
        if let config {
            do {
                configuration = try LocalSSMConfiguration.load(file: config)
            } catch {
                throw ValidationError(error.description)
            }
        }
        if let listen {
            guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
                throw ValidationError("--listen '\(listen)' is not HOST:PORT (for example 127.0.0.1:4587)")
            }
            configuration.listenHost = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            configuration.listenPort = port
        }
        if let limits {
            guard let profile = LimitsProfile(named: limits) else {
                throw ValidationError("--limits '\(limits)' is not a profile: use aws or unlimited")
            }
            configuration.limits = profile.applying(configuration.limitsOverrides)
        }
        let emulator = LocalEmulator(configuration: configuration)
        do {
            try await emulator.start()
        } catch {
            throw ValidationError("cannot listen on \(configuration.listenHost):\(configuration.listenPort): \(error)")
        }
        let url = emulator.server.endpointURL
        let credential = configuration.credentials.first
        let limits = configuration.limits
        print("""
            LocalSSM (Session Manager emulator) listening on \(url), limits: \(limits.name)\
            \(configuration.limitsOverrides == LimitsOverrides() ? "" : " with the file's figures")
              idle timeout \(limits.idleTimeoutSeconds) s, WebSocket lifetime \(limits.webSocketLifetimeSeconds.map { "\($0) s" } ?? "none"), \
            start delays: StartSession \(limits.startSessionDelayMilliseconds) ms, WebSocket open \(limits.webSocketOpenDelayMilliseconds) ms, \
            agent \(limits.agentStartDelayMilliseconds) ms
            faults: \(configuration.faults.isEmpty ? "none" : "set in the configuration file"); change them at \(url)/admin/faults (loopback only)
            instances: \(configuration.instances.map { "\($0.id)\($0.name.map { " (\($0))" } ?? "")" }.joined(separator: ", "))

            Use it from another shell:
              export AWS_ENDPOINT_URL_SSM=\(url) AWS_ENDPOINT_URL_EC2=\(url)
              export AWS_ACCESS_KEY_ID=\(credential?.accessKeyID ?? "test") AWS_SECRET_ACCESS_KEY=<its secret; 'test' by default>
              export AWS_REGION=\(configuration.region) AWS_DEFAULT_REGION=\(configuration.region)
              aws ssm describe-instance-information
            """)
        fflush(nil)  // print() is block-buffered when stdout is not a terminal
        await emulator.runUntilSignalled()
    }
}
