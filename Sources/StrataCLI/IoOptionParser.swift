/// getopt for the commands of `strata io`, as qemu-io's: single-letter flags that can be grouped
/// ("-qv"), a letter followed by ':' in the spec takes a value ("-P 5" or "-P5"), options end at
/// the first operand or "--".
struct IoOptions {
    var flags: Set<Character> = []
    var values: [Character: String] = [:]
    var operands: [String] = []

    func has(_ flag: Character) -> Bool { flags.contains(flag) || values[flag] != nil }

    enum Failure: Error {
        case invalidOption(Character)
        case missingValue(Character)

        func message(command: String) -> String {
            switch self {
            case .invalidOption(let letter): "\(command): invalid option -- '\(letter)'"
            case .missingValue(let letter): "\(command): option requires an argument -- '\(letter)'"
            }
        }
    }

    static func parse(_ arguments: [String], spec: String) throws(Failure) -> IoOptions {
        var options = IoOptions()
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" { index += 1; break }
            guard argument.hasPrefix("-"), argument.count > 1 else { break }
            var letters = argument.dropFirst()
            while let letter = letters.first {
                letters = letters.dropFirst()
                guard letter != ":", let position = spec.firstIndex(of: letter) else { throw .invalidOption(letter) }
                let takesValue = spec.index(after: position) < spec.endIndex && spec[spec.index(after: position)] == ":"
                if !takesValue {
                    options.flags.insert(letter)
                    continue
                }
                if !letters.isEmpty {
                    options.values[letter] = String(letters)
                } else {
                    index += 1
                    guard index < arguments.count else { throw .missingValue(letter) }
                    options.values[letter] = arguments[index]
                }
                break
            }
            index += 1
        }
        options.operands = Array(arguments[index...])
        return options
    }
}
