import Foundation
import NIOCore
import NIOPosix
import TestSupport
import Testing

@testable import LocalSSM

// MARK: - Harness

/// What a wait gave up on, with the output so far.
struct PTYWaitTimedOut: Error, CustomStringConvertible {
    var what: String
    var output: String
    var description: String { "timed out waiting for \(self.what); output so far: \(self.output.debugDescription)" }
}

/// Loop-confined recorder of one terminal's output and exit, with deadline-bounded waits.
final class PTYProbe {
    struct Waiter {
        var condition: (PTYProbe) -> Bool
        var promise: EventLoopPromise<Void>
        var timeout: Scheduled<Void>
    }

    let loop: any EventLoop
    var terminal: PseudoTerminal!
    private(set) var output = ByteBuffer()
    private(set) var byteCounts = [Int](repeating: 0, count: 256)
    /// Chunks (other than a last one) that ended inside a UTF-8 sequence.
    private(set) var splitCharacters = 0
    private(set) var chunksWhilePaused = 0
    private(set) var exitCode: Int32?
    private var lastChunkWasSplit = false
    private var waiters: [Int: Waiter] = [:]
    private var nextWaiter = 0

    init(loop: any EventLoop) {
        self.loop = loop
    }

    var text: String { String(buffer: self.output) }

    func received(_ chunk: ByteBuffer) {
        if self.terminal?.isReadingPaused == true { self.chunksWhilePaused += 1 }
        if self.lastChunkWasSplit { self.splitCharacters += 1 }
        var copy = chunk
        _ = splitAtUTF8Boundary(&copy)
        self.lastChunkWasSplit = copy.readableBytes > 0
        for byte in chunk.readableBytesView { self.byteCounts[Int(byte)] += 1 }
        var chunk = chunk
        self.output.writeBuffer(&chunk)
        self.checkWaiters()
    }

    func exited(_ code: Int32) {
        precondition(self.exitCode == nil, "onExit fired twice")
        self.exitCode = code
        self.checkWaiters()
    }

    func wait(for what: String, timeout: TimeAmount, until condition: @escaping (PTYProbe) -> Bool)
        -> EventLoopFuture<Void>
    {
        if condition(self) { return self.loop.makeSucceededVoidFuture() }
        let id = self.nextWaiter
        self.nextWaiter += 1
        let promise = self.loop.makePromise(of: Void.self)
        let timeoutTask = self.loop.assumeIsolated().scheduleTask(in: timeout) {
            guard let waiter = self.waiters.removeValue(forKey: id) else { return }
            waiter.promise.fail(PTYWaitTimedOut(what: what, output: String(self.text.suffix(2000))))
        }
        self.waiters[id] = Waiter(condition: condition, promise: promise, timeout: timeoutTask)
        return promise.futureResult
    }

    private func checkWaiters() {
        for (id, waiter) in self.waiters where waiter.condition(self) {
            self.waiters[id] = nil
            waiter.timeout.cancel()
            waiter.promise.succeed()
        }
    }
}

@available(*, unavailable)
extension PTYProbe: Sendable {}

/// Drives a ``PTYProbe`` from test code: every call hops to the terminal's loop.
struct PTYDriver: Sendable {
    let probe: NIOLoopBound<PTYProbe>
    let loop: any EventLoop

    static func spawn(_ arguments: [String], columns: UInt16 = 80, rows: UInt16 = 24) async throws -> PTYDriver {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let environment = ProcessInfo.processInfo.environment
        return try await loop.submit {
            let probe = PTYProbe(loop: loop)
            // The terminal releases these closures after onExit, which breaks the probe ↔ terminal cycle.
            probe.terminal = try PseudoTerminal.spawn(
                arguments: arguments,
                environment: environment,
                columns: columns,
                rows: rows,
                on: loop,
                onOutput: { probe.received($0) },
                onExit: { probe.exited($0) }
            )
            return PTYDriver(probe: NIOLoopBound(probe, eventLoop: loop), loop: loop)
        }.get()
    }

    func onLoop<T: Sendable>(_ body: @escaping @Sendable (PTYProbe) throws -> T) async throws -> T {
        let probe = self.probe
        return try await self.loop.submit { try body(probe.value) }.get()
    }

    func write(_ text: String) async throws {
        try await self.onLoop { $0.terminal.write(ByteBuffer(string: text)) }
    }

    func waitUntil(
        _ what: String,
        timeout: TimeAmount = .seconds(20),
        _ condition: @escaping @Sendable (PTYProbe) -> Bool
    ) async throws {
        let probe = self.probe
        try await self.loop.flatSubmit { probe.value.wait(for: what, timeout: timeout, until: condition) }.get()
    }

    func waitForOutput(_ needle: String, timeout: TimeAmount = .seconds(20)) async throws {
        try await self.waitUntil("output \(needle.debugDescription)", timeout: timeout) { $0.text.contains(needle) }
    }

    func waitForExit(timeout: TimeAmount = .seconds(20)) async throws -> Int32 {
        try await self.waitUntil("exit", timeout: timeout) { $0.exitCode != nil }
        return try await self.onLoop { $0.exitCode! }
    }

    var text: String {
        get async throws { try await self.onLoop { $0.text } }
    }
}

/// Runs `body` against a fresh terminal; whatever happens, the child is terminated and reaped before returning.
func withPTY(
    _ arguments: [String],
    columns: UInt16 = 80,
    rows: UInt16 = 24,
    _ body: (PTYDriver) async throws -> Void
) async throws {
    let driver = try await PTYDriver.spawn(arguments, columns: columns, rows: rows)
    func cleanUp() async throws {
        try await driver.onLoop { $0.terminal.terminate() }  // no-op once finished
        _ = try await driver.waitForExit(timeout: .seconds(10))
    }
    do {
        try await body(driver)
        try await cleanUp()
    } catch {
        // The test already failed with `error`; a cleanup failure would only hide it.
        try? await cleanUp()
        throw error
    }
}

// MARK: - Tests

@Suite(.timeLimit(.minutes(2)))
struct PseudoTerminalTests {
    @Test func commandOutputAndExitCode() async throws {
        try await withPTY(["/bin/sh", "-c", "echo hello; exit 3"]) { pty in
            let code = try await pty.waitForExit()
            #expect(code == 3)
            #expect(try await pty.text.contains("hello"))
        }
    }

    @Test func interactiveLoginShell() async throws {
        try await withPTY(["/bin/sh", "-l"]) { pty in
            // Expansions make each awaited text differ from the echo of the typed line.
            try await pty.write("echo $((6*7))\r")
            try await pty.waitForOutput("42")
            try await pty.write("echo \"[$TERM]\" \"[$LANG]\"\r")
            try await pty.waitForOutput("[xterm-256color]")
            try await pty.write("test \"$(pwd)\" = \"$HOME\" && echo home-$((2*3))\r")
            try await pty.waitForOutput("home-6")
            try await pty.write("exit 5\r")
            #expect(try await pty.waitForExit() == 5)
            let text = try await pty.text
            #expect(!text.contains("job control turned off"))
            #expect(!text.contains("[]"), "LANG should be set")
        }
    }

    @Test func controllingTerminalAndJobControl() async throws {
        try await withPTY(["/bin/sh", "-c", "tty; cat /proc/$$/stat"]) { pty in
            #expect(try await pty.waitForExit() == 0)
            let text = try await pty.text
            #expect(text.contains("/dev/pts/"))
            // /proc/<pid>/stat: pid (comm) state ppid pgrp session tty_nr tpgid …
            let line = try #require(text.split(whereSeparator: \.isNewline).first { $0.contains("(sh)") })
            let pid = try #require(Int(line.prefix { $0 != " " }))
            let fields = line[line.range(of: ") ")!.upperBound...].split(separator: " ").compactMap { Int($0) }
            let (pgrp, session, ttyNumber, foregroundGroup) = (fields[1], fields[2], fields[3], fields[4])
            #expect(session == pid, "the child leads its own session")
            #expect(pgrp == pid)
            #expect(ttyNumber != 0, "the pty is its controlling terminal")
            #expect(foregroundGroup == pgrp, "its process group is the terminal's foreground group")
        }
        try await withPTY(["/bin/sh"]) { pty in
            try await pty.write("set -o | grep monitor; exit\r")
            #expect(try await pty.waitForExit() == 0)
            let text = try await pty.text
            #expect(text.range(of: "monitor[ \t]+on", options: .regularExpression) != nil, "job control is on")
        }
    }

    @Test func childInheritsOnlyTheTerminal() async throws {
        // ls's own descriptors: 0-2 on the pty plus the directory it is listing; no master, no NIO descriptor.
        try await withPTY(["/bin/sh", "-c", "exec ls -1 /proc/self/fd"]) { pty in
            let code = try await pty.waitForExit()
            #expect(code == 0)
            #expect(try await pty.text.split(whereSeparator: \.isWhitespace) == ["0", "1", "2", "3"])
        }
    }

    @Test func sizeAndResize() async throws {
        try await withPTY(["/bin/sh"], columns: 80, rows: 24) { pty in
            try await pty.write("stty size\r")
            try await pty.waitForOutput("24 80")
            try await pty.onLoop { $0.terminal.resize(columns: 100, rows: 30) }
            try await pty.write("stty size\r")
            try await pty.waitForOutput("30 100")
            try await pty.write("exit\r")
            #expect(try await pty.waitForExit() == 0)
        }
    }

    @Test func resizeSendsSIGWINCH() async throws {
        let script = "trap 'stty size' WINCH; echo ready; while :; do sleep 0.05; done"
        try await withPTY(["/bin/sh", "-c", script], columns: 80, rows: 24) { pty in
            try await pty.waitForOutput("ready")
            try await pty.onLoop { $0.terminal.resize(columns: 120, rows: 40) }
            try await pty.waitForOutput("40 120")
        }
    }

    @Test func terminateHangsUp() async throws {
        try await withPTY(["/bin/sh", "-c", "sleep 100"]) { pty in
            let start = ContinuousClock.now
            try await pty.onLoop { $0.terminal.terminate() }
            let code = try await pty.waitForExit(timeout: .seconds(5))
            #expect(code == 128 + SIGHUP || code == 128 + SIGKILL)
            #expect(ContinuousClock.now - start < .seconds(5))
        }
    }

    @Test func terminateKillsWhatIgnoresSIGHUP() async throws {
        try await withPTY(["/bin/sh", "-c", "trap '' HUP; echo ready; sleep 100"]) { pty in
            try await pty.waitForOutput("ready")
            let start = ContinuousClock.now
            try await pty.onLoop { $0.terminal.terminate(grace: .milliseconds(300)) }
            #expect(try await pty.waitForExit(timeout: .seconds(5)) == 128 + SIGKILL)
            #expect(ContinuousClock.now - start >= .milliseconds(300))
        }
    }

    @Test func backgroundJobHoldingTheTerminalDoesNotDelayTheExitForever() async throws {
        // The background job ignores SIGHUP and keeps the slave open after the shell exits.
        try await withPTY(["/bin/sh", "-c", "trap '' HUP; sleep 3 & echo started; exit 4"]) { pty in
            let start = ContinuousClock.now
            let code = try await pty.waitForExit(timeout: .seconds(10))
            #expect(code == 4)
            #expect(ContinuousClock.now - start < .seconds(2.5), "ended by the linger timeout, not by the job")
            #expect(try await pty.text.contains("started"))
        }
    }

    @Test func oneMebibyteOfOutputArrivesComplete() async throws {
        let script = "stty raw -echo; head -c 1048576 /dev/zero | tr '\\0' x"
        try await withPTY(["/bin/sh", "-c", script]) { pty in
            let code = try await pty.waitForExit(timeout: .seconds(60))
            #expect(code == 0)
            #expect(try await pty.onLoop { $0.byteCounts[Int(UInt8(ascii: "x"))] } == 1_048_576)
        }
    }

    @Test func outputChunksDoNotSplitCharacters() async throws {
        // "€€\n" is 7 bytes, so neither `yes`'s writes nor the pty's reads line up with characters.
        try await withPTY(["/bin/sh", "-c", "stty raw -echo; yes €€ | head -c 700000"]) { pty in
            #expect(try await pty.waitForExit(timeout: .seconds(60)) == 0)
            let (split, newlines) = try await pty.onLoop { ($0.splitCharacters, $0.byteCounts[0x0A]) }
            #expect(split == 0)
            #expect(newlines == 100_000)
        }
    }

    @Test func largeInputWhileReadingIsPausedDoesNotBlockTheLoop() async throws {
        let size = 1 << 20
        let y = Int(UInt8(ascii: "y"))
        try await withPTY(["/bin/sh", "-c", "stty raw -echo; echo READY; exec cat"]) { pty in
            try await pty.waitForOutput("READY")
            let start = ContinuousClock.now
            let pendingAfterWrite = try await pty.onLoop { probe in
                probe.terminal.pauseReading()
                probe.terminal.write(ByteBuffer(repeating: UInt8(ascii: "y"), count: size))
                return probe.terminal.pendingWriteBytes
            }
            // cat blocks on its full output, so most of the input must still be queued, not written.
            #expect(pendingAfterWrite > size / 2)
            // The loop keeps serving other work meanwhile.
            let pendingLater = try await pty.onLoop { $0.terminal.pendingWriteBytes }
            #expect(ContinuousClock.now - start < .seconds(2))
            #expect(pendingLater > 0)
            try await pty.onLoop { $0.terminal.resumeReading() }
            try await pty.waitUntil("\(size) echoed bytes", timeout: .seconds(60)) { $0.byteCounts[y] == size }
            #expect(try await pty.onLoop { $0.terminal.pendingWriteBytes } == 0)
            #expect(try await pty.onLoop { $0.chunksWhilePaused } == 0)
            try await pty.onLoop { $0.terminal.terminate() }
            let code = try await pty.waitForExit()
            #expect(code == 128 + SIGHUP || code == 128 + SIGKILL)
        }
    }

    @Test func waitStatusToShellExitCode() {
        #expect(PseudoTerminal.shellExitCode(waitStatus: 3 << 8) == 3)
        #expect(PseudoTerminal.shellExitCode(waitStatus: 0) == 0)
        #expect(PseudoTerminal.shellExitCode(waitStatus: SIGHUP) == 129)
        #expect(PseudoTerminal.shellExitCode(waitStatus: SIGKILL | 0x80) == 137)  // with the core-dump bit
    }

    @Test func spawnFailureThrows() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let error = try await loop.submit { () -> String? in
            do {
                _ = try PseudoTerminal.spawn(
                    arguments: ["/nonexistent/program"],
                    environment: [:],
                    columns: 80,
                    rows: 24,
                    on: loop,
                    onOutput: { _ in },
                    onExit: { _ in }
                )
                return nil
            } catch {
                return "\(error)"
            }
        }.get()
        #expect(error?.contains("No such file or directory") == true)
    }
}

// MARK: - UTF-8 boundary

@Suite struct PseudoTerminalUTF8BoundaryTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var bytes: [UInt8]
        var heldBack: Int
        var testDescription: String { "\(self.bytes.map { String($0, radix: 16) }) holds \(self.heldBack)" }
    }

    @Test(arguments: [
        Case(bytes: [], heldBack: 0),
        Case(bytes: Array("abc".utf8), heldBack: 0),
        Case(bytes: [0x61, 0xC3, 0xA9], heldBack: 0),  // "aé"
        Case(bytes: [0x61, 0xC3], heldBack: 1),
        Case(bytes: [0xE2, 0x82, 0xAC], heldBack: 0),  // "€"
        Case(bytes: [0x61, 0xE2, 0x82], heldBack: 2),
        Case(bytes: [0x61, 0xE2], heldBack: 1),
        Case(bytes: [0xF0, 0x9F, 0x98, 0x80], heldBack: 0),  // "😀"
        Case(bytes: [0xF0, 0x9F, 0x98], heldBack: 3),
        Case(bytes: [0x61, 0xF0, 0x9F], heldBack: 2),
        Case(bytes: [0xF0], heldBack: 1),
        Case(bytes: [0x80, 0x80, 0x80], heldBack: 0),  // stray continuation bytes pass through
        Case(bytes: [0x61, 0x80, 0x80, 0x80], heldBack: 0),
        Case(bytes: [0xF0, 0x9F, 0x98, 0x80, 0x80], heldBack: 0),  // too many continuation bytes
        Case(bytes: [0x61, 0xFF], heldBack: 0),  // never valid
        Case(bytes: [0x61, 0xC0], heldBack: 0),  // overlong lead, invalid
        Case(bytes: [0x61, 0xF5, 0x80], heldBack: 0),  // beyond U+10FFFF, invalid
        Case(bytes: [0xE2, 0x82, 0xAC, 0x0A, 0xE2, 0x82], heldBack: 2),
    ])
    func split(_ testCase: Case) {
        var buffer = ByteBuffer(bytes: testCase.bytes)
        let complete = splitAtUTF8Boundary(&buffer)
        #expect(Array(complete.readableBytesView) == Array(testCase.bytes.dropLast(testCase.heldBack)))
        #expect(Array(buffer.readableBytesView) == Array(testCase.bytes.suffix(testCase.heldBack)))
    }

    @Test func respectsTheReaderIndex() {
        var buffer = ByteBuffer(bytes: [0x78, 0x78, 0x61, 0xE2, 0x82])
        buffer.moveReaderIndex(forwardBy: 2)
        let complete = splitAtUTF8Boundary(&buffer)
        #expect(Array(complete.readableBytesView) == [0x61])
        #expect(Array(buffer.readableBytesView) == [0xE2, 0x82])
        var appended = buffer
        appended.writeBytes([0xAC])
        #expect(splitAtUTF8Boundary(&appended).readableBytesView.elementsEqual("€".utf8))
        #expect(appended.readableBytes == 0)
    }
}
