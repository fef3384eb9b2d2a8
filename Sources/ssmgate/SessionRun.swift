import AWSClient
import DataChannel
import Foundation
import Gateway
import NIOCore
import NIOPosix
import Sessions

/// Runs one session on the terminal/stdio/a local port until it ends, and returns the exit status.
enum SessionRun {
    /// - Parameter notice: where the session's user-facing messages go.
    static func run(
        context: AWSContext, response: StartSessionResponse, target: String, bindHost: String = "127.0.0.1",
        notice: @escaping NoticeSink, onEnd: (@Sendable (SessionDispatcher.Outcome) -> Void)? = nil
    ) async throws -> SessionDispatcher.Outcome {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let clientID = DataChannel.uuid()
        let (ended, dispatcher) = try await loop.submit {
            let channel = try context.makeDataChannel(for: response, target: target, clientID: clientID, on: loop)
            let dispatcher = SessionDispatcher(channel: channel, bindHost: bindHost, notice: notice)
            channel.connect().whenFailure { _ in }  // failures arrive through the delegate
            return (dispatcher.ended.futureResult, NIOLoopBound(dispatcher, eventLoop: loop))
        }.get()
        let interrupts = SignalRelay(signals: [SIGINT, SIGTERM, SIGHUP]) {
            loop.execute { dispatcher.value.interrupt() }
        }
        defer { interrupts.cancel() }
        let outcome = try await ended.get()
        onEnd?(outcome)
        return outcome
    }
}

/// Turns signals into a callback (dispatch sources; the default action is suspended meanwhile).
final class SignalRelay {
    let sources: [any DispatchSourceSignal]

    init(signals: [CInt], handler: @escaping @Sendable () -> Void) {
        var sources: [any DispatchSourceSignal] = []
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler(handler: handler)
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    func cancel() {
        for source in self.sources { source.cancel() }
    }
}

/// Messages to the user on standard error.
enum Console {
    static func error(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }

    static func out(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
