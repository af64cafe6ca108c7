import StrataGraph

/// `sim`: a protocol node whose disk lives in memory, for the deterministic simulation (`strata
/// sim`). Its contents come from `filename` at open. It has a volatile write cache that only a
/// flush empties to the media, completions that come late in an order drawn from `seed`, faults
/// (EIO, ENOSPC, short writes) at `fault-ppm` per million requests once armed, and a power cut the
/// simulation triggers: the disk then keeps what was flushed and a seeded choice of the sectors
/// written since. Time is the queue executor's turns: a request completes after a drawn number of
/// turns, so with one queue and nothing else on its thread every run of a seed is the same run.
///
/// For the scheduling lab it is also a device to schedule for: the `service-*` and `slow-*` options
/// (ServiceTimeModel) give it service times, internal parallelism and slow spells on the queue's
/// clock, and `size` gives an empty disk instead of a file's contents.
public enum SimNode {
    public static let descriptor = DriverDescriptor(name: "sim") {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try SimNodeConfiguration(parsing: &reader)
    }
}
