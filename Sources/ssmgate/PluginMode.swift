import Gateway
import AWSClient
import DataChannel
import Foundation
import Sessions

/// The binary run as `session-manager-plugin`: the command line `aws ssm start-session` uses
/// (reference 1.2–1.3), the official plugin's messages, and the same session behaviour.
enum PluginMode {
    static let responseVariable = "AWS_SSM_START_SESSION_RESPONSE"

    static func isInvokedAsPlugin(_ argv0: String) -> Bool {
        URL(fileURLWithPath: argv0).lastPathComponent == "session-manager-plugin"
    }

    static func run(_ arguments: [String]) async -> Int32 {
        switch arguments.count {
        case 0:
            Console.out("\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n\n")
            return 0
        case 1 where arguments[0] == "--version" || arguments[0] == "version":
            Console.out(DataChannelConfiguration.defaultClientVersion + "\n")
            return 0
        case 1, 2:
            Console.out("\nUnknown operation \(arguments[0]). \nUse session-manager-plugin --version to check the version.\n\n")
            return 0
        default:
            break
        }
        let operation = arguments[2]
        guard operation == "StartSession" else {
            Console.out("Invalid Operation\n")
            return 1
        }
        guard arguments.count >= 4 else {
            // The legacy 4-argument form (no profile) still works; KMS encryption is refused then.
            return await self.start(response: arguments[0], region: arguments[1], profile: nil, request: nil, endpoint: nil)
        }
        return await self.start(
            response: arguments[0], region: arguments[1], profile: arguments[3],
            request: arguments.count > 4 ? arguments[4] : nil, endpoint: arguments.count > 5 ? arguments[5] : nil)
    }

    static func start(response: String, region: String, profile: String?, request: String?, endpoint: String?) async -> Int32 {
        var responseJSON = response
        if response.hasPrefix(Self.responseVariable) {
            responseJSON = ProcessInfo.processInfo.environment[response] ?? ""
            unsetenv(response)
        }
        guard let started = Self.parseResponse(responseJSON) else {
            // Never echo the response: it holds the session token.
            Console.error("session-manager-plugin: the StartSession response from the AWS CLI could not be read (expected SessionId, TokenValue and StreamUrl).\n")
            return 1
        }
        guard let target = request.flatMap(Self.parseTarget) else {
            Console.error("session-manager-plugin: the StartSession request has no Target; run it through `aws ssm start-session --target …`.\n")
            return 1
        }
        let context: AWSContext
        do {
            context = try AWSContext(
                profile: (profile?.isEmpty ?? true) ? nil : profile, region: region,
                endpointURL: (endpoint?.isEmpty ?? true) ? nil : endpoint)
        } catch {
            Console.error("session-manager-plugin: \(error)\n")
            return 1
        }
        Console.out("\nStarting session with SessionId: \(started.sessionID)\n")
        let status: Int32
        do {
            let outcome = try await SessionRun.run(context: context, response: started, target: target, notice: { Console.out($0) })
            switch outcome.error {
            case .none:
                // Ended here: unlike the official plugin, tell the service, so the session does
                // not hold the agent's destination until the idle timeout.
                try? await context.ssm.terminateSession(sessionID: started.sessionID)
                status = outcome.exitCode ?? 0
            case .closedByService(let output)?:
                Console.out(output.isEmpty
                    ? "\n\nExiting session with sessionId: \(started.sessionID).\n\n"
                    : "\n\nSessionId: \(started.sessionID) : \(output)\n\n")
                status = outcome.exitCode ?? 0
            case .sessionTimedOut?:
                Console.out("\nSession: \(started.sessionID) timed out.\n")
                status = 0
            case let error?:
                Console.error("\n\(error)\n")
                try? await context.ssm.terminateSession(sessionID: started.sessionID)
                status = 1
            }
        } catch {
            Console.error("\nCannot perform start session: \(error)\n")
            status = 1
        }
        await context.shutdown()
        StandardStreams.finishCopies()
        return status
    }

    static func parseResponse(_ text: String) -> StartSessionResponse? {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any],
            let sessionID = object["SessionId"] as? String, let token = object["TokenValue"] as? String,
            let url = object["StreamUrl"] as? String
        else { return nil }
        return StartSessionResponse(sessionID: sessionID, tokenValue: token, streamURL: url)
    }

    static func parseTarget(_ text: String) -> String? {
        ((try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any])?["Target"] as? String
    }
}
