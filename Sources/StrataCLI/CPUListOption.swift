import ArgumentParser

/// `--cpus 0,2,4` on `strata bench` and `strata serve`: the CPUs queue executors are pinned to, in
/// turn.
enum CPUListOption {
    static func parse(_ text: String?) throws -> [Int]? {
        guard let text else { return nil }
        let list = text.split(separator: ",").map { Int($0.trimmingPrefix(" ")) }
        guard !list.isEmpty, list.allSatisfy({ $0 != nil && $0! >= 0 }) else {
            throw ValidationError("--cpus must be a comma-separated list of CPU numbers, got '\(text)'")
        }
        return list.map { $0! }
    }
}
