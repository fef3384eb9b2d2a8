import Crypto
import Foundation
import NIOCore
import NIOPosix
import SSMProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The `ssmgate` executable built beside this test bundle.
public func ssmgateExecutable() throws -> String {
    let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [directory, directory.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("ssmgate").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    let fallback = URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(".build/debug/ssmgate").path
    guard FileManager.default.isExecutableFile(atPath: fallback) else { throw ToolMissing(tool: "ssmgate (run swift build first)") }
    return fallback
}

/// A scratch directory removed at the end.
public final class ScratchDirectory: Sendable {
    public let path: String

    public init(_ name: String) throws {
        self.path = FileManager.default.temporaryDirectory.appendingPathComponent("ssmgate-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: self.path, withIntermediateDirectories: true)
    }

    public func file(_ name: String) -> String { "\(self.path)/\(name)" }

    public func remove() { try? FileManager.default.removeItem(atPath: self.path) }
}

/// Writes `bytes` deterministic pseudo-random bytes and returns their SHA-256.
@discardableResult
public func writeRandomFile(_ path: String, bytes: Int, seed: UInt64) throws -> String {
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    var generator = SplitMix64(seed: seed)
    var hash = SHA256()
    var remaining = bytes
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while remaining > 0 {
        let count = min(remaining, chunk.count)
        chunk.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in 0..<(count + 7) / 8 where index < words.count { words[index] = generator.next() }
        }
        let slice = chunk[0..<count]
        hash.update(data: slice)
        try handle.write(contentsOf: slice)
        remaining -= count
    }
    return hash.finalize().map { String(format: "%02x", $0) }.joined()
}

public func sha256(ofFile path: String) throws -> String {
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    var hash = SHA256()
    while let data = try handle.read(upToCount: 1 << 20), !data.isEmpty { hash.update(data: data) }
    return hash.finalize().map { String(format: "%02x", $0) }.joined()
}

public func fileSize(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
}

/// A port nobody listens on right now (bound, then released).
/// A loopback port for a process the test starts, which binds it itself.
///
/// Chosen at random below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default), where neither outgoing connections nor other tests' port-0 listeners get their ports:
/// a port taken from that range could be handed to a parallel test between this check and the
/// process's bind. Falls back to a kernel-chosen port if none of the tries is free.
public func freePort() async throws -> Int {
    let lowestEphemeral = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
        .flatMap { $0.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } } ?? 32768
    if lowestEphemeral > 12000 {
        for _ in 0..<32 {
            let candidate = Int.random(in: 10000..<lowestEphemeral)
            if let socket = try? await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: candidate).get() {
                try await socket.close()
                return candidate
            }
        }
    }
    let socket = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
    let port = socket.localAddress!.port!
    try await socket.close()
    return port
}

public func waitForPort(_ port: Int, within seconds: Double) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get() {
            try? await channel.close()
            return true
        }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return false
}

/// A real OpenSSH server on a loopback port, with its own host key and one authorized user key.
public final class SSHServer: Sendable {
    public let directory: ScratchDirectory
    public let port: Int
    public let process: SpawnedDaemon
    public let userKey: String
    public let user: String

    public static func start(keyType: String = "ed25519") async throws -> SSHServer {
        guard let sshd = findExecutable("sshd"), let keygen = findExecutable("ssh-keygen") else { throw ToolMissing(tool: "openssh-server") }
        let directory = try ScratchDirectory("sshd")
        let environment = ProcessInfo.processInfo.environment
        for (name, type) in [("host_key", "ed25519"), ("user_key", keyType)] {
            let result = try await run(keygen, ["-q", "-t", type, "-N", "", "-f", directory.file(name)], environment: environment)
            guard result.status == 0 else { throw ToolMissing(tool: "ssh-keygen (\(result.stderr))") }
        }
        try FileManager.default.copyItem(atPath: directory.file("user_key.pub"), toPath: directory.file("authorized_keys"))
        // Privilege separation needs this directory when sshd runs as root.
        if getuid() == 0 { try? FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true) }
        // freePort() closes its probe socket, so another test may take the port before sshd binds it;
        // then sshd exits ("Address already in use") while the port answers for someone else.
        // sshd's own "Server listening" line is the proof, and a taken port means another try.
        var lastLog = ""
        for _ in 0..<5 {
            let port = try await freePort()
            let config = """
                Port \(port)
                ListenAddress 127.0.0.1
                HostKey \(directory.file("host_key"))
                AuthorizedKeysFile \(directory.file("authorized_keys"))
                PidFile \(directory.file("sshd.pid"))
                StrictModes no
                UsePAM no
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                PermitRootLogin prohibit-password
                Subsystem sftp internal-sftp
                """
            try config.write(toFile: directory.file("sshd_config"), atomically: true, encoding: .utf8)
            let logFile = directory.file("sshd.log")
            try? FileManager.default.removeItem(atPath: logFile)
            let process = try SpawnedDaemon(sshd, ["-D", "-e", "-f", directory.file("sshd_config")], logFile: logFile)
            if await process.waitForLogLine("Server listening on 127.0.0.1 port \(port).", in: logFile, within: 10) {
                return SSHServer(directory: directory, port: port, process: process, userKey: directory.file("user_key"), user: NSUserName())
            }
            lastLog = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
        }
        throw ToolMissing(tool: "a working sshd (log: \(lastLog))")
    }

    public init(directory: ScratchDirectory, port: Int, process: SpawnedDaemon, userKey: String, user: String) {
        self.directory = directory
        self.port = port
        self.process = process
        self.userKey = userKey
        self.user = user
    }

    public func stop() {
        self.process.stop()
        self.directory.remove()
    }

    /// ssh/scp options: our key, no host-key prompts, and (when given) ssmgate as ProxyCommand.
    public func clientOptions(proxy: String?) -> [String] {
        var options = [
            "-F", "/dev/null", "-i", self.userKey, "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
        ]
        if let proxy { options += ["-o", "ProxyCommand=\(proxy)"] }
        return options
    }
}
