import StrataFilters
import StrataGraph
import StrataISCSI
import StrataNBDClient
import StrataNodes
import StrataRBD

/// Every driver and filter the command line knows, by name: adding one is one line here (a
/// scheduling policy's line is in SchedulingPolicyCatalog).
public enum DriverCatalog {
    public static let registry = DriverRegistry([
        BlkdebugFilter.descriptor,
        BlkverifyFilter.descriptor,
        CommitTopFilter.descriptor,
        CopyBeforeWriteFilter.descriptor,
        CopyOnReadFilter.descriptor,
        FileNode.descriptor,
        MirrorTopFilter.descriptor,
        NBDClientNode.descriptor,
        NullNode.descriptor,
        NullNode.aioDescriptor,
        Qcow2Node.descriptor,
        RawNode.descriptor,
        RbdNode.descriptor,
        IscsiNode.descriptor,
        SimNode.descriptor,
        SnapshotAccessFilter.descriptor,
        ThrottleFilter.descriptor,
    ] + SchedulingPolicyCatalog.descriptors)
}
