import Foundation
import LocalSSM
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Starts an emulator on an OS-chosen loopback port for the duration of `body`.
public func withEmulator<T>(
    _ configuration: LocalSSMConfiguration = LocalSSMConfiguration(listenPort: 0, limits: .unlimited),
    _ body: (LocalEmulator) async throws -> T
) async throws -> T {
    let emulator = LocalEmulator(configuration: configuration)
    try await emulator.start()
    do {
        let result = try await body(emulator)
        await emulator.stop()
        return result
    } catch {
        await emulator.stop()
        throw error
    }
}

public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String

    public init(status: Int32, stdout: String, stderr: String) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }

    public var json: [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(self.stdout.utf8))) as? [String: Any]
    }
}

/// A tool the end-to-end tests need is not installed; `scripts/test.sh` installs it.
public struct ToolMissing: Error, CustomStringConvertible {
    public var tool: String
    public init(tool: String) { self.tool = tool }
    public var description: String { "\(self.tool) is not installed: run scripts/test.sh, which installs what the tests need" }
}

/// The environment that points the real awscli (and ssmgate) at the emulator with its test key.
public func emulatorEnvironment(endpoint: String, base: [String: String] = ProcessInfo.processInfo.environment) -> [String: String] {
    var environment = base.filter { !$0.key.hasPrefix("AWS_") }
    environment["AWS_ACCESS_KEY_ID"] = "test"
    environment["AWS_SECRET_ACCESS_KEY"] = "test"
    environment["AWS_DEFAULT_REGION"] = "us-east-1"
    environment["AWS_CONFIG_FILE"] = "/dev/null"
    environment["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"
    environment["AWS_EC2_METADATA_DISABLED"] = "true"
    environment["AWS_MAX_ATTEMPTS"] = "1"
    environment["AWS_ENDPOINT_URL_SSM"] = endpoint
    environment["AWS_ENDPOINT_URL_EC2"] = endpoint
    return environment
}

/// Runs the real awscli against the emulator, with the emulator's test credentials unless overridden.
public func aws(_ arguments: [String], endpoint: String, environment extra: [String: String] = [:]) async throws -> CommandResult {
    guard let executable = findExecutable("aws") else { throw ToolMissing(tool: "awscli") }
    var environment = emulatorEnvironment(endpoint: endpoint)
    for (key, value) in extra { environment[key] = value }
    return try await run(executable, arguments + ["--endpoint-url", endpoint, "--output", "json"], environment: environment)
}

/// Runs a process on a plain thread: blocking a cooperative thread would starve the emulator it talks to.
public func run(_ executable: String, _ arguments: [String], environment: [String: String], stdin: String? = nil) async throws -> CommandResult {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try runBlocking(executable, arguments, environment: environment, stdin: stdin) })
        }
    }
}

public func runBlocking(_ executable: String, _ arguments: [String], environment: [String: String], stdin: String? = nil) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = environment
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let input = Pipe()
    process.standardInput = stdin == nil ? FileHandle.nullDevice : input
    try process.run()
    if let stdin {
        input.fileHandleForWriting.write(Data(stdin.utf8))
        try? input.fileHandleForWriting.close()
    }
    // Read both pipes before waiting, so a chatty child cannot block on a full pipe.
    let group = DispatchGroup()
    nonisolated(unsafe) var stdoutData = Data()
    nonisolated(unsafe) var stderrData = Data()
    group.enter()
    DispatchQueue.global().async {
        stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    stderrData = err.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return CommandResult(
        status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
        stderr: String(decoding: stderrData, as: UTF8.self))
}

public func findExecutable(_ name: String, extraDirectories: [String] = ["/usr/sbin", "/sbin"]) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":").map(String.init) + extraDirectories {
        let candidate = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// A TCP echo server on loopback, for the agent's destinations.
public final class EchoServer: Sendable {
    public let channel: any Channel
    public var port: Int { self.channel.localAddress!.port! }

    public init() async throws {
        self.channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    public func close() async { try? await self.channel.close() }

    final class EchoHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.write(data, promise: nil) }
        func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }
}

/// A daemon started with posix_spawn rather than Foundation's Process: daemons such as sshd close
/// inherited descriptors, which Foundation takes for the child's exit and then blocks in waitpid,
/// stalling every other Process of the test run.
public final class SpawnedDaemon: Sendable {
    public let pid: pid_t

    /// Starts `executable` with its output appended to `logFile`.
    public init(_ executable: String, _ arguments: [String], logFile: String) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logFile, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // NIO's sockets are not close-on-exec: without this a daemon (postgres) would hold other tests'
        // listeners and connections open, so a closed one still accepts or never sends its FIN.
        if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {  // glibc 2.34+
            typealias AddClosefrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, CInt) -> CInt
            _ = unsafeBitCast(symbol, to: AddClosefrom.self)(&actions, 3)
        }
        // Default signal dispositions and an empty mask, not the test runner's (SIGTERM must stop it).
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var signals = sigset_t()
        sigemptyset(&signals)
        posix_spawnattr_setsigmask(&attributes, &signals)
        sigfillset(&signals)
        posix_spawnattr_setsigdefault(&attributes, &signals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard status == 0 else { throw ToolMissing(tool: "\(executable) (posix_spawn failed: \(status))") }
        self.pid = pid
    }

    /// Whether it has ended; reaps it if so (then `stop()` is not needed).
    public func hasExited() -> Bool {
        var status: Int32 = 0
        return waitpid(self.pid, &status, WNOHANG) == self.pid
    }

    /// Waits (bounded) for `line` in `logFile`: true once it is there. A daemon that exits first
    /// (a port taken between freePort() and its bind) is reaped, one that stays silent is stopped;
    /// both return false, and the caller tries another port.
    public func waitForLogLine(_ line: String, in logFile: String, within seconds: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if ((try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "").contains(line) { return true }
            if self.hasExited() { return false }
            try? await Task.sleep(for: .milliseconds(50))
        }
        self.stop()
        return false
    }

    /// SIGTERM, then reaps it (SIGKILL after two seconds).
    public func stop() {
        kill(self.pid, SIGTERM)
        var status: Int32 = 0
        for _ in 0..<200 {
            if waitpid(self.pid, &status, WNOHANG) == self.pid { return }
            usleep(10_000)
        }
        kill(self.pid, SIGKILL)
        _ = waitpid(self.pid, &status, 0)
    }
}
