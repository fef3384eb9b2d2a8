import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A real PostgreSQL on a loopback port with a scratch data directory (trust authentication for
/// user `postgres`). As root it runs as the `postgres` system user (PostgreSQL refuses root).
final class PostgresServer: Sendable {
    let directory: ScratchDirectory
    let port: Int
    let process: SpawnedDaemon

    static func binaries() -> String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).sorted { (Int($0) ?? 0) > (Int($1) ?? 0) }
        for version in versions where FileManager.default.isExecutableFile(atPath: "\(root)/\(version)/bin/initdb") {
            return "\(root)/\(version)/bin"
        }
        return nil
    }

    static func start() async throws -> PostgresServer {
        guard let bin = self.binaries() else { throw ToolMissing(tool: "postgresql") }
        let directory = try ScratchDirectory("postgres")
        let data = directory.file("data")
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        var prefix: [String] = []
        var launcher: String? = nil
        if getuid() == 0 {
            guard let setpriv = findExecutable("setpriv"), let account = getpwnam("postgres") else { throw ToolMissing(tool: "postgresql (the postgres user)") }
            for path in [directory.path, data] { chown(path, account.pointee.pw_uid, account.pointee.pw_gid) }
            launcher = setpriv
            prefix = ["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]
        }
        func command(_ tool: String, _ arguments: [String]) -> (String, [String]) {
            if let launcher { return (launcher, prefix + ["\(bin)/\(tool)"] + arguments) }
            return ("\(bin)/\(tool)", arguments)
        }
        let (initdb, initArguments) = command("initdb", ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
        let made = try await run(initdb, initArguments, environment: ProcessInfo.processInfo.environment.merging(["LC_ALL": "C"]) { $1 })
        guard made.status == 0 else {
            directory.remove()
            throw ToolMissing(tool: "a working initdb (\(made.stderr))")
        }
        // Ready only when postgres says so (a port taken by a parallel test after freePort() makes
        // it exit instead: then another port).
        let logFile = directory.file("postgres.log")
        for _ in 0..<5 {
            let port = try await freePort()
            let (postgres, arguments) = command("postgres", [
                "-D", data, "-p", String(port), "-k", directory.path, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            ])
            try? FileManager.default.removeItem(atPath: logFile)
            let process = try SpawnedDaemon(postgres, arguments, logFile: logFile)
            if await process.waitForLogLine("database system is ready to accept connections", in: logFile, within: 30) {
                return PostgresServer(directory: directory, port: port, process: process)
            }
        }
        let log = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
        directory.remove()
        throw ToolMissing(tool: "a working postgres (log: \(log))")
    }

    init(directory: ScratchDirectory, port: Int, process: SpawnedDaemon) {
        self.directory = directory
        self.port = port
        self.process = process
    }

    func stop() {
        self.process.stop()
        self.directory.remove()
    }
}

@Suite("Test daemons")
struct SpawnedDaemonTests {
    @Test("A daemon a test spawns holds none of the test process's sockets (NIO's are not close-on-exec)")
    func spawnedDaemonInheritsNoSockets() async throws {
        // An open listener and connection in this process while the daemon starts.
        let web = try await TinyHTTPServer(bodySize: 16)
        defer { web.close() }
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        let daemon = try SpawnedDaemon("/bin/sleep", ["30"], logFile: "/dev/null")
        defer { daemon.stop() }
        let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(daemon.pid)/fd")
        let sockets = descriptors.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(daemon.pid)/fd/\($0)") }
            .filter { $0.hasPrefix("socket:") }
        #expect(sockets.isEmpty, "the daemon holds \(sockets)")
    }
}
