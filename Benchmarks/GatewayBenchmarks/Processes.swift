import Foundation
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A process this benchmark started, in a process group of its own (socat forks a child per
/// connection), with its output in a log file. Only this group is ever signalled.
final class ChildProcess: Sendable {
    let pid: pid_t
    let log: String
    let name: String
    private let exited = Atomic<Bool>(false)

    private init(pid: pid_t, log: String, name: String) {
        self.pid = pid
        self.log = log
        self.name = name
    }

    static func spawn(_ executable: String, _ arguments: [String], name: String) throws -> ChildProcess {
        let log = "\(NSTemporaryDirectory())gateway-bench-\(getpid())-\(name).log"
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attributes, 0)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let environment = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + environment { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, environment)
        guard status == 0 else {
            throw BenchmarkError("cannot start \(executable): \(String(cString: strerror(status)))")
        }
        let child = ChildProcess(pid: pid, log: log, name: name)
        ChildRegistry.shared.add(child)
        return child
    }

    var output: String { (try? String(contentsOfFile: self.log, encoding: .utf8)) ?? "" }

    /// Whether the process has exited (reaps it if so).
    var hasExited: Bool {
        if self.exited.load(ordering: .relaxed) { return true }
        var status: Int32 = 0
        let result = waitpid(self.pid, &status, WNOHANG)
        if result == self.pid || (result == -1 && errno == ECHILD) {
            self.exited.store(true, ordering: .relaxed)
            return true
        }
        return false
    }

    /// Waits until `predicate` holds for the process's output, or fails after `timeout`.
    func waitForOutput(timeout: Duration, _ predicate: (String) -> Bool) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let text = self.output
            if predicate(text) { return text }
            if self.hasExited { throw BenchmarkError("\(self.name) exited early; its output:\n\(text)") }
            try await Task.sleep(for: .milliseconds(50))  // polling a log file, not pacing
        }
        throw BenchmarkError("\(self.name) did not get ready within \(timeout); its output:\n\(self.output)")
    }

    /// User + system CPU seconds of the process itself (from /proc; 0 where there is none).
    var cpuSeconds: Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(self.pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; reaps the leader.
    func stop(grace: Duration = .seconds(3)) async {
        ChildRegistry.shared.remove(self)
        kill(-self.pid, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline {
            if self.hasExited {
                kill(-self.pid, SIGKILL)  // leftovers of the group (socat's children), if any
                try? FileManager.default.removeItem(atPath: self.log)
                return
            }
            try? await Task.sleep(for: .milliseconds(50))  // waiting for an exit, not pacing
        }
        kill(-self.pid, SIGKILL)
        var status: Int32 = 0
        if !self.exited.load(ordering: .relaxed) { waitpid(self.pid, &status, 0) }
        try? FileManager.default.removeItem(atPath: self.log)
    }
}

/// Every child still running, so an interrupted benchmark stops them (by their group id) on the way out.
final class ChildRegistry: Sendable {
    static let shared = ChildRegistry()
    private let children = Mutex<[pid_t]>([])

    func add(_ child: ChildProcess) { self.children.withLock { $0.append(child.pid) } }
    func remove(_ child: ChildProcess) { self.children.withLock { $0.removeAll { $0 == child.pid } } }

    func killAll() {
        for pid in self.children.withLock({ $0 }) { kill(-pid, SIGKILL) }
    }
}

/// SIGINT/SIGTERM: stop the children, then exit.
func installSignalHandlers() {
    for signalNumber in [SIGINT, SIGTERM] {
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler {
            ChildRegistry.shared.killAll()
            FileHandle.standardError.write(Data("gateway benchmarks: interrupted; stopped the processes started\n".utf8))
            exit(130)
        }
        source.resume()
        SignalSources.keep(source)
    }
}

enum SignalSources {
    nonisolated(unsafe) private static var sources: [any DispatchSourceSignal] = []
    /// Called once per signal at start-up, before any concurrency.
    static func keep(_ source: any DispatchSourceSignal) { self.sources.append(source) }
}

// MARK: - Measurements of this process

/// User plus system CPU time of the whole process so far.
func processCPUSeconds() -> Double {
    var usage = rusage()
    #if os(Linux)
    getrusage(RUSAGE_SELF.rawValue, &usage)
    #else
    getrusage(RUSAGE_SELF, &usage)
    #endif
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CPU time of the calling thread (run it on the gateway's loop to read that loop's thread).
func threadCPUSeconds() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

/// Resident set size of this process, bytes (VmRSS).
func residentBytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        if parts.count >= 2, let kib = Int(parts[1]) { return kib * 1024 }
    }
    return 0
}

/// Raises the soft open-file limit to `wanted` (at most the hard limit); returns the soft limit now.
func raiseOpenFileLimit(to wanted: Int) -> Int {
    var limit = rlimit()
    #if os(Linux)
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    let resource = RLIMIT_NOFILE
    #endif
    guard getrlimit(resource, &limit) == 0 else { return 0 }
    if limit.rlim_cur < rlim_t(wanted) {
        limit.rlim_cur = min(rlim_t(wanted), limit.rlim_max)
        _ = setrlimit(resource, &limit)
        _ = getrlimit(resource, &limit)
    }
    return Int(limit.rlim_cur)
}

/// A port that was free a moment ago on 127.0.0.1 (for socat, which needs one named).
func freePort() async throws -> Int {
    let socket = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .bind(host: "127.0.0.1", port: 0).get()
    let port = socket.localAddress!.port!
    try await socket.close()
    return port
}
