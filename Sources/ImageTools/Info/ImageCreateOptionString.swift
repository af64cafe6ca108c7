import StrataNodes

/// qemu-img's `-o key=value,...` option string (QemuOpts syntax): `,,` is a literal comma inside
/// a value, a bare `key` means `key=on`, and `help` (or `?`) asks for the option list. Several
/// `-o` arguments join with commas. Shared by `img create`, `img measure` and `img convert`.
public struct ImageCreateOptionString: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public let key: String
        public let value: String

        public init(key: String, value: String) {
            self.key = key
            self.value = value
        }
    }

    public let entries: [Entry]
    /// `help` or `?` appeared: print the option list instead of acting.
    public let wantsHelp: Bool

    public init(entries: [Entry] = [], wantsHelp: Bool = false) {
        self.entries = entries
        self.wantsHelp = wantsHelp
    }

    public init(parsing text: String) throws(ImageOptionError) {
        var entries: [Entry] = []
        var wantsHelp = false
        let characters = Array(text)
        var index = 0
        while index < characters.count {
            // One element: up to a comma that is not doubled.
            var element = ""
            while index < characters.count {
                if characters[index] == "," {
                    if index + 1 < characters.count, characters[index + 1] == "," {
                        element.append(",")
                        index += 2
                        continue
                    }
                    break
                }
                element.append(characters[index])
                index += 1
            }
            index += 1
            if element == "help" || element == "?" {
                wantsHelp = true
                continue
            }
            if element.isEmpty { throw .init("Invalid parameter ''") }
            if let equals = element.firstIndex(of: "=") {
                let key = String(element[..<equals])
                guard !key.isEmpty else { throw .init("Invalid parameter '\(element)'") }
                entries.append(Entry(key: key, value: String(element[element.index(after: equals)...])))
            } else {
                entries.append(Entry(key: element, value: "on"))
            }
        }
        self.entries = entries
        self.wantsHelp = wantsHelp
    }

    /// Joins several `-o` arguments as qemu-img does.
    public init(parsing arguments: [String]) throws(ImageOptionError) {
        try self.init(parsing: arguments.joined(separator: ","))
    }

    /// The last value given for `key` (QemuOpts keeps the last one).
    public func value(_ key: String) -> String? {
        entries.last { $0.key == key }?.value
    }

    /// Adds or replaces `key` (for options that come from flags such as `-b`).
    public func setting(_ key: String, to value: String) -> ImageCreateOptionString {
        ImageCreateOptionString(entries: entries.filter { $0.key != key } + [Entry(key: key, value: value)], wantsHelp: wantsHelp)
    }
}
