import Foundation

/// A whole second in UTC, formatted and parsed by hand: SigV4 needs exactly two fixed formats, and doing the
/// civil-date arithmetic here avoids `DateFormatter`'s locale and time-zone state on every request.
struct AmzTimestamp: Hashable, Comparable, Sendable {
    /// Seconds since 1970-01-01T00:00:00Z.
    let secondsSince1970: Int64

    init(secondsSince1970: Int64) {
        self.secondsSince1970 = secondsSince1970
    }

    /// Truncates to the second, as botocore's `strftime('%Y%m%dT%H%M%SZ')` does.
    init(_ date: Date) {
        self.secondsSince1970 = Int64(date.timeIntervalSince1970.rounded(.down))
    }

    var date: Date { Date(timeIntervalSince1970: TimeInterval(self.secondsSince1970)) }

    static func < (lhs: Self, rhs: Self) -> Bool { lhs.secondsSince1970 < rhs.secondsSince1970 }

    func adding(seconds: Int64) -> Self { Self(secondsSince1970: self.secondsSince1970 + seconds) }
}

// MARK: - Formatting

extension AmzTimestamp {
    /// ISO 8601 basic format, `20261123T101500Z` (`X-Amz-Date`).
    var basic: String {
        let c = self.components
        return Self.digits(c.year, 4) + Self.digits(c.month, 2) + Self.digits(c.day, 2) + "T"
            + Self.digits(c.hour, 2) + Self.digits(c.minute, 2) + Self.digits(c.second, 2) + "Z"
    }

    /// `20261123`, the date of the credential scope.
    var dateStamp: String { String(self.basic.prefix(8)) }

    /// Python's `email.utils.formatdate(t)`, `Mon, 23 Nov 2026 10:15:00 -0000`: the value botocore writes into
    /// a `Date` header it finds on the request.
    var rfc2822: String {
        let c = self.components
        return "\(Self.weekdayNames[c.weekday]), \(Self.digits(c.day, 2)) \(Self.monthNames[c.month - 1]) "
            + "\(Self.digits(c.year, 4)) \(Self.digits(c.hour, 2)):\(Self.digits(c.minute, 2)):"
            + "\(Self.digits(c.second, 2)) -0000"
    }

    private static let monthNames = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    private static let weekdayNames = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

    private struct Components {
        var year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int
        /// 0 = Monday.
        var weekday: Int
    }

    private var components: Components {
        let days = Int(self.secondsSince1970.floorDivided(by: 86_400))
        let secondOfDay = Int(self.secondsSince1970 - Int64(days) * 86_400)
        let (year, month, day) = Self.civil(fromDays: days)
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let weekday = ((days % 7) + 7 + 3) % 7
        return Components(
            year: year,
            month: month,
            day: day,
            hour: secondOfDay / 3600,
            minute: secondOfDay / 60 % 60,
            second: secondOfDay % 60,
            weekday: weekday
        )
    }

    private static func digits(_ value: Int, _ width: Int) -> String {
        let text = String(value)
        return text.count >= width ? text : String(repeating: "0", count: width - text.count) + text
    }

    /// Howard Hinnant's `civil_from_days`: proleptic Gregorian date of a day count since 1970-01-01.
    private static func civil(fromDays days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// Howard Hinnant's `days_from_civil`.
    private static func days(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}

// MARK: - Parsing

extension AmzTimestamp {
    /// Parses `YYYYMMDDTHHMMSSZ`, rejecting anything else (AWS answers other shapes with "Date must be in
    /// ISO-8601 'basic format'").
    init?(basic text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count == 16, bytes[8] == UInt8(ascii: "T"), bytes[15] == UInt8(ascii: "Z") else { return nil }
        guard let year = Self.number(bytes[0..<4]), let month = Self.number(bytes[4..<6]),
            let day = Self.number(bytes[6..<8]), let hour = Self.number(bytes[9..<11]),
            let minute = Self.number(bytes[11..<13]), let second = Self.number(bytes[13..<15])
        else { return nil }
        self.init(year: year, month: month, day: day, hour: hour, minute: minute, second: second)
    }

    /// Parses the HTTP `Date` forms a SigV4 client sends instead of `X-Amz-Date`:
    /// `Mon, 23 Nov 2026 10:15:00 GMT` (RFC 7231) and botocore's `... -0000` / `+0000` (RFC 2822).
    init?(httpDate text: String) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 6, parts[0].hasSuffix(","),
            ["GMT", "UTC", "UT", "Z", "-0000", "+0000"].contains(String(parts[5])),
            let day = Self.number(Array(parts[1].utf8)[...]),
            let monthIndex = Self.monthNames.firstIndex(of: String(parts[2])),
            let year = Self.number(Array(parts[3].utf8)[...])
        else { return nil }
        let clock = parts[4].split(separator: ":", omittingEmptySubsequences: false)
        guard clock.count == 3, let hour = Self.number(Array(clock[0].utf8)[...]),
            let minute = Self.number(Array(clock[1].utf8)[...]), let second = Self.number(Array(clock[2].utf8)[...])
        else { return nil }
        self.init(year: year, month: monthIndex + 1, day: day, hour: hour, minute: minute, second: second)
    }

    private init?(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int) {
        guard (1...12).contains(month), (1...Self.daysIn(month: month, year: year)).contains(day),
            (0...23).contains(hour), (0...59).contains(minute), (0...59).contains(second)
        else { return nil }
        let days = Int64(Self.days(year: year, month: month, day: day))
        self.secondsSince1970 = days * 86_400 + Int64(hour * 3600 + minute * 60 + second)
    }

    private static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    private static func number(_ bytes: ArraySlice<UInt8>) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 4 else { return nil }
        var value = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }
}

extension Int64 {
    fileprivate func floorDivided(by divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }
}
