import ArgumentParser
import CStrataShim

/// `--cpus 0,2,4` or `--numa NODE` on `strata bench` and `strata serve`: the CPUs queue executors
/// are pinned to, in turn (a queue's buffers and ring then live on its CPU's node).
enum CPUListOption {
    static func parse(_ text: String?) throws -> [Int]? {
        guard let text else { return nil }
        let list = text.split(separator: ",").map { Int($0.trimmingPrefix(" ")) }
        guard !list.isEmpty, list.allSatisfy({ $0 != nil && $0! >= 0 }) else {
            throw ValidationError("--cpus must be a comma-separated list of CPU numbers, got '\(text)'")
        }
        return list.map { $0! }
    }

    /// The CPU list from `--cpus` or `--numa` (at most one of them).
    static func parse(cpus: String?, numaNode: Int?) throws -> [Int]? {
        guard let numaNode else { return try parse(cpus) }
        guard cpus == nil else { throw ValidationError("give --cpus or --numa, not both") }
        let nodes = Int(strata_numa_available_nodes())
        guard numaNode >= 0, numaNode < nodes else {
            throw ValidationError("--numa \(numaNode): this machine has NUMA node\(nodes == 1 ? " 0" : "s 0-\(nodes - 1)") only")
        }
        var found = [Int32](repeating: 0, count: 4096)
        let count = Int(strata_numa_node_cpus(Int32(numaNode), &found, Int32(found.count)))
        guard count > 0 else { throw ValidationError("--numa \(numaNode): the node has no online CPU") }
        return found.prefix(count).map(Int.init)
    }
}
