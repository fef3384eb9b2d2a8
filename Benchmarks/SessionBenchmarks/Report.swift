import Foundation

extension SessionBenchmarks {
    func printTable(_ rows: [Row]) {
        print("ssmgate session throughput: one TCP stream, LocalPortForwarder (mux) + in-process emulator")
        print("machine: \(machineDescription())")
        print("")
        let header = ["limits", "path", "direction", "MiB", "seconds", "MB/s", "vs reference", "CPU s/GiB", "data msg/s", "resends", "pauses"]
        let rightAligned: Set<Int> = [3, 4, 5, 6, 7, 8, 9, 10]
        let cells = rows.map { row -> [String] in
            let messages = row.statistics.map { row.direction == .upload ? $0.messagesSent : $0.messagesReceived }
            return [
                row.limits, row.path, row.direction.rawValue, "\(row.bytes >> 20)",
                format(row.seconds, 2), format(row.megabytesPerSecond, row.megabytesPerSecond < 10 ? 3 : 1),
                row.reference.map { "\(format(row.megabytesPerSecond / $0.megabytesPerSecond * 100, 1))% of \($0.name)" } ?? "",
                format(row.cpuSecondsPerGiB, 2),
                messages.map { format(Double($0) / row.seconds, 0) } ?? "-",
                row.statistics.map { "\($0.retransmissions)" } ?? "-",
                row.statistics.map { "\($0.pausedCount)" } ?? "-",
            ]
        }
        let widths = header.indices.map { column in ([header] + cells).map { $0[column].count }.max()! }
        func line(_ values: [String]) -> String {
            let padded = values.indices.map { column -> String in
                let padding = String(repeating: " ", count: widths[column] - values[column].count)
                return rightAligned.contains(column) ? padding + values[column] : values[column] + padding
            }
            return "| " + padded.joined(separator: " | ") + " |"
        }
        print(line(header))
        print("|" + widths.indices.map { String(repeating: "-", count: widths[$0] + 1) + (rightAligned.contains($0) ? ":" : "-") }
            .joined(separator: "|") + "|")
        for row in cells { print(line(row)) }
        print("")
        print("MB = 10^6 bytes. Each transfer is timed from the client's connect to the last byte checked at the receiving end;")
        print("every byte is compared with what was sent. CPU is the whole process (client, emulator, both TCP ends).")
        print("raw = loopback TCP between the same ends; cap = the aws profile's agent pacing, 1,000,000 B/s per session.")
        print("Downloads carry the agent's 1024-byte reads whatever the client's maximumPayloadSize.")
    }
}

func format(_ value: Double, _ digits: Int) -> String {
    String(format: "%.\(digits)f", value)
}

/// CPU model, cores, kernel and architecture.
func machineDescription() -> String {
    let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
    let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
        .flatMap { $0.split(separator: ":", maxSplits: 1).last }
        .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
    var system = utsname()
    uname(&system)
    func text<T>(_ field: T) -> String {
        withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
    return "\(model), \(ProcessInfo.processInfo.activeProcessorCount) cores, \(text(system.sysname)) \(text(system.release)) \(text(system.machine))"
}
