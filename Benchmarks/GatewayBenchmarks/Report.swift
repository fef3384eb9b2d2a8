import Foundation
import Synchronization

/// One line of the table.
struct Row: Sendable {
    var number: String
    var limits: String
    var measurement: String
    var result: String
    var reference: String
    var comparison: String
    var target: String
    /// nil: no target.
    var pass: Bool?
}

/// Rows and notes as they come in, printed at the end (or when a row fails, with what ran so far).
final class Report: Sendable {
    private let rows = Mutex<[Row]>([])
    private let notes = Mutex<[String]>([])

    func add(_ row: Row) {
        self.rows.withLock { $0.append(row) }
        log("row \(row.number): \(row.result) | \(row.reference) | \(row.comparison) | \(row.pass.map { $0 ? "pass" : "FAIL" } ?? "-")")
    }

    func note(_ text: String) {
        self.notes.withLock { $0.append(text) }
    }

    func print(partial: Bool) {
        let rows = self.rows.withLock { $0 }
        let notes = self.notes.withLock { $0 }
        Swift.print("ssmgate gateway benchmarks: static forward → GatewayCore → Pool → mux sessions → `ssmgate local` (separate process)")
        Swift.print("machine: \(machineDescription())")
        if partial { Swift.print("PARTIAL: a row failed; the rows before it follow.") }
        Swift.print("")
        let header = ["#", "limits", "measurement", "result", "reference", "comparison", "target", "verdict"]
        let cells = rows.map { row in
            [row.number, row.limits, row.measurement, row.result, row.reference, row.comparison, row.target,
             row.pass.map { $0 ? "pass" : "FAIL" } ?? "—"]
        }
        func line(_ values: [String]) -> String {
            "| " + values.map { $0.replacingOccurrences(of: "|", with: "\\|") }.joined(separator: " | ") + " |"
        }
        Swift.print(line(header))
        Swift.print("|" + header.map { _ in "---" }.joined(separator: "|") + "|")
        for row in cells { Swift.print(line(row)) }
        Swift.print("")
        Swift.print("MB = 10^6 bytes, KiB = 1024 bytes. Transfers are timed from the client's connect to the last byte checked at the receiving end;")
        Swift.print("every byte is compared with what was sent. The gateway (core, Pool, fronts) runs on one event loop in this process; clients")
        Swift.print("and destination servers on two other loops; the emulator is `ssmgate local` in its own process.")
        for note in notes { Swift.print("- \(note)") }
    }
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
    let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
    return "\(model), \(ProcessInfo.processInfo.activeProcessorCount) cores, \(text(system.sysname)) \(text(system.release)) \(text(system.machine)), load average at the end \(load)"
}
