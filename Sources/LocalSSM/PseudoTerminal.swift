import Foundation
import Glibc
import NIOCore
import NIOPosix

/// A child process on its own pseudo-terminal, driven from one NIO event loop: what the simulated agent runs for
/// `Standard_Stream` (a login shell) and `InteractiveCommands` (`sh -c <commands>`), reference 7.1 and 7.2.
///
/// The child is started with `posix_spawn` (a multithreaded Swift process can't safely `fork()`) in a new session
/// (`POSIX_SPAWN_SETSID`); the spawn's file actions then *open* the slave by path, and because a session leader
/// without a terminal acquires the first tty it opens, the slave becomes the child's controlling terminal:
/// `tty`, job control, `SIGWINCH` and hangup behave as under sshd or the real agent.
///
/// The master is split over three descriptors of the same open file: a read-only `NIOPipeBootstrap` channel for the
/// output (so a failed write can't close the channel that still holds unread output), a write-only one for the
/// input (NIO queues what the pty can't take yet, without blocking the loop), and a plain one for `TIOCSWINSZ`.
/// A detached thread blocks in `waitpid` and hops to the loop; `onExit` fires once the child is reaped *and* the
/// output has ended (EIO/EOF on the master, every byte delivered).
///
/// - Important: Loop-confined (not `Sendable`): create it with
///   ``spawn(arguments:environment:columns:rows:on:onOutput:onExit:)``, use and terminate it on that loop only.
final class PseudoTerminal {
    /// Grace between the `SIGHUP` of ``terminate(grace:)`` and the `SIGKILL` of the child's process group.
    static let defaultTerminationGrace: TimeAmount = .seconds(1)
    /// After the child exits, the output is ended by force once it has been quiet (and not paused) this long:
    /// a background job that kept the slave open (`nohup cmd &`) must not keep the session alive forever.
    static let lingerAfterExit: TimeAmount = .milliseconds(500)
    /// `$?` semantics: the exit code reported when the child's status could not be collected (someone else reaped it).
    static let unknownExitCode: Int32 = -1

    enum WriterState {
        /// The write channel is being registered; writes wait here (already counted in `pendingWriteBytes`).
        case registering([ByteBuffer])
        case open(any Channel)
        case closed
    }

    let processID: pid_t
    let eventLoop: any EventLoop

    private var onOutput: ((ByteBuffer) -> Void)?
    private var onExit: ((_ exitCode: Int32) -> Void)?
    /// Descriptor kept for `TIOCSWINSZ`; -1 once closed. Part of what keeps the master (and so the session) alive.
    private var controlFD: CInt
    private var readerChannel: (any Channel)?
    private var readerHandler: OutputHandler?
    private var writer: WriterState = .registering([])

    /// Bytes handed to ``write(_:)`` that the pty has not taken yet.
    private(set) var pendingWriteBytes = 0
    private(set) var isReadingPaused = false
    /// Output not delivered yet: a trailing incomplete UTF-8 sequence, plus whatever arrived while paused.
    private var heldOutput = ByteBuffer()
    private var bytesRead = 0
    /// The master's read side is finished (EIO/EOF, error or closed by us).
    private var readerClosed = false
    private var exitCode: Int32?
    private var isTerminating = false
    private var isFinished = false
    private var killTask: Scheduled<Void>?
    private var lingerTask: Scheduled<Void>?

    private init(
        processID: pid_t,
        controlFD: CInt,
        eventLoop: any EventLoop,
        onOutput: @escaping (ByteBuffer) -> Void,
        onExit: @escaping (_ exitCode: Int32) -> Void
    ) {
        self.processID = processID
        self.controlFD = controlFD
        self.eventLoop = eventLoop
        self.onOutput = onOutput
        self.onExit = onExit
    }

    /// Spawns `arguments` on a new pty of the given size, in its own session with the pty as controlling terminal,
    /// working directory `$HOME`, and the agent's environment rules (`TERM=xterm-256color`; `LANG=C.UTF-8` if unset).
    ///
    /// - Parameters:
    ///   - arguments: The program and its arguments, e.g. `["/bin/sh", "-l"]` or `["/bin/sh", "-c", command]`;
    ///     a program without `/` is looked up in this process's `PATH`.
    ///   - environment: The child's environment before the agent's `TERM`/`LANG` rules; `HOME` is filled in from
    ///     the password database when missing.
    ///   - onOutput: Called on the loop with bytes read from the master. A chunk never ends inside a UTF-8 sequence
    ///     (the tail waits for the next read, as the agent does) except the last one; never called while paused
    ///     or after ``terminate(grace:)``.
    ///   - onExit: Called on the loop exactly once, after the child was reaped and its output ended, with a shell's
    ///     `$?` (128 + signal when killed by a signal). Both callbacks are released afterwards.
    /// - Important: Must be called on `eventLoop`.
    static func spawn(
        arguments: [String],
        environment: [String: String],
        columns: UInt16,
        rows: UInt16,
        on eventLoop: any EventLoop,
        onOutput: @escaping (ByteBuffer) -> Void,
        onExit: @escaping (_ exitCode: Int32) -> Void
    ) throws -> PseudoTerminal {
        eventLoop.preconditionInEventLoop()
        precondition(!arguments.isEmpty, "PseudoTerminal.spawn needs a program to run")

        var environment = environment
        environment["TERM"] = "xterm-256color"
        if environment["LANG"] == nil { environment["LANG"] = "C.UTF-8" }
        let home = environment["HOME"] ?? Self.passwordDatabaseHome() ?? "/"
        if environment["HOME"] == nil { environment["HOME"] = home }
        // A missing or unreadable home must not make the spawn itself fail (the file action would): start in `/`.
        let workingDirectory = access(home, X_OK) == 0 ? home : "/"

        let master = try Self.openMaster()
        // Every descriptor here is close-on-exec: concurrent spawns elsewhere in the process must not inherit a
        // master, or the pty would never hang up.
        var owned = [master]
        do {
            try Self.setWindowSize(master, columns: columns, rows: rows)
            let slavePath = try Self.slavePath(master)
            let writeFD = try Self.duplicate(master)
            owned.append(writeFD)
            let controlFD = try Self.duplicate(master)
            owned.append(controlFD)
            // posix_spawn returns after the child's file actions ran (glibc uses CLONE_VFORK), so the slave is open
            // before the channels register: a master without an open slave polls as EPOLLHUP, which NIO would
            // take for the end of both directions.
            let processID = try Self.spawnChild(
                arguments: arguments,
                environment: environment,
                slavePath: slavePath,
                workingDirectory: workingDirectory
            )
            let terminal = PseudoTerminal(
                processID: processID,
                controlFD: controlFD,
                eventLoop: eventLoop,
                onOutput: onOutput,
                onExit: onExit
            )
            terminal.waitForChild()
            terminal.attachReader(master)
            terminal.attachWriter(writeFD)
            return terminal
        } catch {
            for fd in owned { close(fd) }
            throw error
        }
    }

    /// Queues `bytes` for the child's stdin. Never blocks: what the pty can't take yet waits in the channel and is
    /// counted in ``pendingWriteBytes``, which the caller bounds (the agent stops acknowledging input). Dropped once
    /// the terminal is terminating or finished.
    func write(_ bytes: ByteBuffer) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.isTerminating, !self.isFinished, bytes.readableBytes > 0 else { return }
        switch self.writer {
        case .registering(let waiting):
            self.writer = .registering(waiting + [bytes])
            self.pendingWriteBytes += bytes.readableBytes
        case .open(let channel):
            self.send(bytes, on: channel)
        case .closed:
            return
        }
    }

    /// Sets the window size (`TIOCSWINSZ` on the master); the kernel sends `SIGWINCH` to the foreground process
    /// group when it changes. A no-op once the terminal is finished.
    func resize(columns: UInt16, rows: UInt16) {
        self.eventLoop.preconditionInEventLoop()
        guard self.controlFD >= 0 else { return }
        // Can only fail with EBADF/EINVAL/EFAULT, none of which a valid master and winsize produce.
        _ = try? Self.setWindowSize(self.controlFD, columns: columns, rows: rows)
    }

    /// Output backpressure: stops reading the master until ``resumeReading()``; no `onOutput` in between. The
    /// child then blocks once the pty's buffer (a few tens of KiB) is full.
    func pauseReading() {
        self.eventLoop.preconditionInEventLoop()
        self.isReadingPaused = true
    }

    func resumeReading() {
        self.eventLoop.preconditionInEventLoop()
        guard self.isReadingPaused else { return }
        self.isReadingPaused = false
        self.deliverHeldOutput()
        // onOutput may have paused again.
        if !self.isReadingPaused { self.readerHandler?.resumeIfReadPending() }
        self.finishIfDone()
    }

    /// Ends the session the way a terminal hangs up: `SIGHUP` to the child's process group, every master
    /// descriptor closed (the kernel hangs up the slave: `SIGHUP` to the session leader and the foreground job),
    /// and `SIGKILL` to the process group if the child is still alive after `grace`. Output is discarded from here
    /// on; `onExit` still fires once the child is reaped.
    func terminate(grace: TimeAmount = PseudoTerminal.defaultTerminationGrace) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.isTerminating, !self.isFinished else { return }
        self.isTerminating = true
        self.isReadingPaused = false
        self.heldOutput.clear()
        if self.exitCode == nil {
            // Only while the child is unreaped: afterwards its pid could, in theory, belong to someone else.
            _ = kill(-self.processID, SIGHUP)
        }
        self.closeMaster()
        if self.exitCode == nil {
            self.killTask = self.eventLoop.assumeIsolated().scheduleTask(in: grace) {
                guard self.exitCode == nil else { return }
                _ = kill(-self.processID, SIGKILL)
                _ = kill(self.processID, SIGKILL)  // in case it left its process group
            }
        }
        self.finishIfDone()
    }
}

@available(*, unavailable)
extension PseudoTerminal: Sendable {}

// MARK: - Output

extension PseudoTerminal {
    fileprivate func received(_ buffer: ByteBuffer) {
        self.bytesRead &+= buffer.readableBytes
        guard !self.isTerminating, !self.isFinished else { return }
        if self.heldOutput.readableBytes == 0 {
            self.heldOutput = buffer
        } else {
            var buffer = buffer
            self.heldOutput.writeBuffer(&buffer)
        }
        self.deliverHeldOutput()
    }

    fileprivate func readerDidClose() {
        self.readerClosed = true
        self.readerChannel = nil
        self.readerHandler = nil
        self.deliverHeldOutput()
        self.finishIfDone()
    }

    private func deliverHeldOutput() {
        guard !self.isReadingPaused, let onOutput = self.onOutput, self.heldOutput.readableBytes > 0 else { return }
        let complete: ByteBuffer
        if self.readerClosed {
            // Nothing more will come to complete a character: pass the tail through as is.
            complete = self.heldOutput
            self.heldOutput.clear()
        } else {
            complete = splitAtUTF8Boundary(&self.heldOutput)
        }
        if complete.readableBytes > 0 { onOutput(complete) }
    }
}

// MARK: - Input

extension PseudoTerminal {
    private func send(_ bytes: ByteBuffer, on channel: any Channel) {
        let count = bytes.readableBytes
        self.pendingWriteBytes += count
        // A failed write means the slave is gone; the end of the output and the exit report that, not this.
        channel.writeAndFlush(bytes).assumeIsolated().whenComplete { _ in
            self.pendingWriteBytes -= count
        }
    }
}

// MARK: - Lifecycle

extension PseudoTerminal {
    private func attachReader(_ fd: CInt) {
        let handler = OutputHandler(terminal: self)
        self.readerHandler = handler
        let boundHandler = NIOLoopBound(handler, eventLoop: self.eventLoop)
        NIOPipeBootstrap(group: self.eventLoop)
            .channelInitializer { channel in
                // Added before registration, so no byte can reach the pipeline before the handler is in it.
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(boundHandler.value)
                }
            }
            .takingOwnershipOfDescriptor(input: fd)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    if self.isTerminating || self.isFinished {
                        channel.close(promise: nil)
                    } else if !self.readerClosed {
                        self.readerChannel = channel
                    }
                case .failure:
                    // NIO owns (and has closed) the descriptor unless validation failed, which can't happen for a
                    // character device; there is no output to deliver, so end the child too.
                    _ = kill(-self.processID, SIGKILL)
                    self.readerDidClose()
                }
            }
    }

    private func attachWriter(_ fd: CInt) {
        NIOPipeBootstrap(group: self.eventLoop)
            .takingOwnershipOfDescriptor(output: fd)
            .assumeIsolated()
            .whenComplete { result in
                guard case .registering(let waiting) = self.writer else {
                    if case .success(let channel) = result { channel.close(promise: nil) }
                    return
                }
                self.pendingWriteBytes -= waiting.reduce(0) { $0 + $1.readableBytes }
                switch result {
                case .success(let channel):
                    self.writer = .open(channel)
                    channel.closeFuture.assumeIsolated().whenComplete { _ in self.writer = .closed }
                    for bytes in waiting { self.send(bytes, on: channel) }
                case .failure:
                    self.writer = .closed
                }
            }
    }

    /// Reaps the child on a dedicated thread (a blocking `waitpid` per child; the loop never blocks), then reports
    /// the exit on the loop. The thread keeps the terminal alive until then.
    private func waitForChild() {
        let boundSelf = NIOLoopBound(self, eventLoop: self.eventLoop)
        let processID = self.processID
        let eventLoop = self.eventLoop
        Thread.detachNewThread {
            let exitCode = Self.waitForExit(of: processID)
            eventLoop.execute { boundSelf.value.childDidExit(exitCode) }
        }
    }

    private func childDidExit(_ exitCode: Int32) {
        self.exitCode = exitCode
        self.killTask?.cancel()
        self.killTask = nil
        self.scheduleLingerCheck(lastBytesRead: self.bytesRead)
        self.finishIfDone()
    }

    private func scheduleLingerCheck(lastBytesRead: Int) {
        guard !self.readerClosed else { return }
        self.lingerTask = self.eventLoop.assumeIsolated().scheduleTask(in: Self.lingerAfterExit) {
            guard !self.readerClosed, !self.isFinished else { return }
            if self.isReadingPaused || self.bytesRead != lastBytesRead {
                self.scheduleLingerCheck(lastBytesRead: self.bytesRead)
            } else {
                // Something outside the child's lifetime holds the slave open: hang it up.
                self.closeMaster()
            }
        }
    }

    /// Closes every master descriptor we hold: the slave side sees a hangup once no process holds the master.
    private func closeMaster() {
        self.readerChannel?.close(promise: nil)
        if case .open(let channel) = self.writer { channel.close(promise: nil) }
        if case .registering(let waiting) = self.writer {
            self.pendingWriteBytes -= waiting.reduce(0) { $0 + $1.readableBytes }
        }
        self.writer = .closed
        if self.controlFD >= 0 {
            close(self.controlFD)
            self.controlFD = -1
        }
    }

    private func finishIfDone() {
        guard !self.isFinished, self.readerClosed, self.heldOutput.readableBytes == 0, let exitCode = self.exitCode
        else { return }
        self.isFinished = true
        self.lingerTask?.cancel()
        self.lingerTask = nil
        self.closeMaster()
        let onExit = self.onExit
        // Release the callbacks: they usually capture the owner of this terminal.
        self.onExit = nil
        self.onOutput = nil
        onExit?(exitCode)
    }
}

// MARK: - System calls

/// A failed system call while setting up the pty or the child.
struct PseudoTerminalError: Error, CustomStringConvertible {
    var operation: String
    var errorNumber: Int32

    var description: String {
        "\(self.operation) failed: \(String(cString: strerror(self.errorNumber)))"
    }
}

extension PseudoTerminal {
    /// glibc's `POSIX_SPAWN_SETSID` (2.26+); Swift's Glibc module is not built with `_GNU_SOURCE`, so hidden.
    private static let spawnSetSID: Int16 = 0x80

    /// Looks up a libc function the Glibc module hides behind `_XOPEN_SOURCE`/`_GNU_SOURCE` feature macros.
    private static func libc<Function>(_ name: String, as type: Function.Type) -> Function? {
        guard let symbol = dlsym(nil, name) else { return nil }  // nil handle: glibc's RTLD_DEFAULT
        return unsafeBitCast(symbol, to: type)
    }

    private typealias DescriptorFunction = @convention(c) (CInt) -> CInt
    private typealias PTSNameR = @convention(c) (CInt, UnsafeMutablePointer<CChar>?, Int) -> CInt
    private typealias AddChdir =
        @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?) -> CInt
    private typealias AddClosefrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, CInt) -> CInt

    private static func requireLibc<Function>(_ name: String, as type: Function.Type) throws -> Function {
        guard let function = Self.libc(name, as: type) else {
            throw PseudoTerminalError(operation: "dlsym(\(name))", errorNumber: ENOSYS)
        }
        return function
    }

    private static func openMaster() throws -> CInt {
        let openpt = try Self.requireLibc("posix_openpt", as: DescriptorFunction.self)
        let grantpt = try Self.requireLibc("grantpt", as: DescriptorFunction.self)
        let unlockpt = try Self.requireLibc("unlockpt", as: DescriptorFunction.self)
        let master = openpt(O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard master >= 0 else { throw PseudoTerminalError(operation: "posix_openpt", errorNumber: errno) }
        guard grantpt(master) == 0 else {
            let error = errno
            close(master)
            throw PseudoTerminalError(operation: "grantpt", errorNumber: error)
        }
        guard unlockpt(master) == 0 else {
            let error = errno
            close(master)
            throw PseudoTerminalError(operation: "unlockpt", errorNumber: error)
        }
        return master
    }

    private static func slavePath(_ master: CInt) throws -> String {
        let ptsnameR = try Self.requireLibc("ptsname_r", as: PTSNameR.self)
        var name = [CChar](repeating: 0, count: 128)
        let result = name.withUnsafeMutableBufferPointer { ptsnameR(master, $0.baseAddress, $0.count) }
        guard result == 0 else { throw PseudoTerminalError(operation: "ptsname_r", errorNumber: result) }
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func duplicate(_ fd: CInt) throws -> CInt {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw PseudoTerminalError(operation: "fcntl(F_DUPFD_CLOEXEC)", errorNumber: errno) }
        return copy
    }

    private static func setWindowSize(_ fd: CInt, columns: UInt16, rows: UInt16) throws {
        var size = winsize(ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0)
        guard ioctl(fd, UInt(TIOCSWINSZ), &size) == 0 else {
            throw PseudoTerminalError(operation: "ioctl(TIOCSWINSZ)", errorNumber: errno)
        }
    }

    private static func passwordDatabaseHome() -> String? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var storage = [CChar](repeating: 0, count: 4096)
        let status = storage.withUnsafeMutableBufferPointer {
            getpwuid_r(getuid(), &entry, $0.baseAddress!, $0.count, &result)
        }
        guard status == 0, result != nil, let directory = entry.pw_dir else { return nil }
        return String(cString: directory)
    }

    private static func spawnChild(
        arguments: [String],
        environment: [String: String],
        slavePath: String,
        workingDirectory: String
    ) throws -> pid_t {
        var attributes = posix_spawnattr_t()
        try Self.check("posix_spawnattr_init", posix_spawnattr_init(&attributes))
        defer { posix_spawnattr_destroy(&attributes) }
        var actions = posix_spawn_file_actions_t()
        try Self.check("posix_spawn_file_actions_init", posix_spawn_file_actions_init(&actions))
        defer { posix_spawn_file_actions_destroy(&actions) }

        // Default dispositions and an empty mask: ignored signals (SIGPIPE…) and the mask survive exec otherwise.
        var signals = sigset_t()
        sigemptyset(&signals)
        try Self.check("posix_spawnattr_setsigmask", posix_spawnattr_setsigmask(&attributes, &signals))
        sigfillset(&signals)
        try Self.check("posix_spawnattr_setsigdefault", posix_spawnattr_setsigdefault(&attributes, &signals))
        let flags = Self.spawnSetSID | Int16(POSIX_SPAWN_SETSIGMASK) | Int16(POSIX_SPAWN_SETSIGDEF)
        try Self.check("posix_spawnattr_setflags(POSIX_SPAWN_SETSID)", posix_spawnattr_setflags(&attributes, flags))

        // glibc runs setsid before the file actions, so this open (no O_NOCTTY) of the slave by a session leader
        // without a terminal makes it the controlling terminal; dup2 of an inherited descriptor would not.
        try Self.check(
            "posix_spawn_file_actions_addopen",
            posix_spawn_file_actions_addopen(&actions, 0, slavePath, O_RDWR, 0)
        )
        try Self.check("posix_spawn_file_actions_adddup2", posix_spawn_file_actions_adddup2(&actions, 0, 1))
        try Self.check("posix_spawn_file_actions_adddup2", posix_spawn_file_actions_adddup2(&actions, 0, 2))
        // Belt and braces against descriptors someone opened without close-on-exec (glibc 2.34+).
        if let addClosefrom = Self.libc("posix_spawn_file_actions_addclosefrom_np", as: AddClosefrom.self) {
            try Self.check("posix_spawn_file_actions_addclosefrom_np", addClosefrom(&actions, 3))
        }
        let addChdir = try Self.requireLibc("posix_spawn_file_actions_addchdir_np", as: AddChdir.self)  // glibc 2.29+
        try Self.check("posix_spawn_file_actions_addchdir_np", addChdir(&actions, workingDirectory))

        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var processID: pid_t = 0
        let result = posix_spawnp(&processID, arguments[0], &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw PseudoTerminalError(operation: "posix_spawn(\(arguments[0]))", errorNumber: result)
        }
        return processID
    }

    private static func check(_ operation: String, _ result: CInt) throws {
        guard result == 0 else { throw PseudoTerminalError(operation: operation, errorNumber: result) }
    }

    /// Blocks until `processID` terminates and reaps it; returns a shell's `$?` for it.
    private static func waitForExit(of processID: pid_t) -> Int32 {
        var status: CInt = 0
        while true {
            if waitpid(processID, &status, 0) == processID { return Self.shellExitCode(waitStatus: status) }
            if errno != EINTR { return Self.unknownExitCode }  // ECHILD: reaped elsewhere (SIGCHLD set to SIG_IGN)
        }
    }

    /// `WIFEXITED ? WEXITSTATUS : 128 + WTERMSIG` (the macros are not imported into Swift).
    static func shellExitCode(waitStatus status: CInt) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }
}

// MARK: - Output handler

/// The read side of the master: forwards bytes to the terminal and withholds `read()` while it is paused
/// (STYLE 2.3). NIO drains a hung-up descriptor without asking `read()`, so the terminal still buffers what
/// arrives while paused; that is bounded by the pty's own buffer.
private final class OutputHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private var terminal: PseudoTerminal?
    private var context: ChannelHandlerContext?
    private var readPending = false

    init(terminal: PseudoTerminal) {
        self.terminal = terminal
    }

    func resumeIfReadPending() {
        guard self.readPending, let context = self.context else { return }
        self.readPending = false
        context.read()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func read(context: ChannelHandlerContext) {
        if self.terminal?.isReadingPaused == true {
            self.readPending = true
        } else {
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.terminal?.received(Self.unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // EIO is how a Linux pty master reports that every slave descriptor is closed: the normal end of output.
        // Any read error ends the output (NIO closes the channel after a read error); close in case it didn't.
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let terminal = self.terminal
        self.terminal = nil  // breaks the terminal ↔ handler cycle
        terminal?.readerDidClose()
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension OutputHandler: Sendable {}

// MARK: - UTF-8 boundary

/// Splits off the longest prefix of `buffer` that does not end inside a UTF-8 sequence and returns it, leaving
/// the incomplete trailing sequence (at most 3 bytes) in `buffer` for the next read.
///
/// The agent does this so that no message splits a character (reference 7.1: "holds back an incomplete trailing
/// UTF-8 sequence (up to 3 bytes)"). Only a valid lead byte (`C2`–`F4`) followed by fewer continuation bytes than
/// it announces is held back; invalid bytes pass through.
func splitAtUTF8Boundary(_ buffer: inout ByteBuffer) -> ByteBuffer {
    let bytes = buffer.readableBytesView
    var tailLength = 0
    var index = bytes.endIndex
    let lowerBound = max(bytes.startIndex, bytes.endIndex - 3)
    while index > lowerBound {
        index -= 1
        let byte = bytes[index]
        if byte & 0xC0 == 0x80 { continue }  // a continuation byte: the lead byte is further back
        let sequenceLength: Int
        switch byte {
        case 0xC2...0xDF: sequenceLength = 2
        case 0xE0...0xEF: sequenceLength = 3
        case 0xF0...0xF4: sequenceLength = 4
        default: sequenceLength = 1  // ASCII or invalid: nothing to wait for
        }
        let present = bytes.endIndex - index
        if present < sequenceLength { tailLength = present }
        break
    }
    return buffer.readSlice(length: buffer.readableBytes - tailLength)!
}
