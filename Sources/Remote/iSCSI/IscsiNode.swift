import StrataGraph

/// QEMU's `iscsi` protocol driver: a LUN of an iSCSI target, through libiscsi's asynchronous API.
/// Every queue logs in a session of its own and polls its socket on the queue's ring, where
/// libiscsi's callbacks then run (design/remote.md). Options as QEMU's BlockdevOptionsIscsi:
/// `transport` (tcp), `portal`, `target`, `lun`, `user`, `initiator-name`, `header-digest`,
/// `timeout`; or an `iscsi://[user[%password]@]host[:port]/target/lun` filename.
public enum IscsiNode {
    public static let descriptor = DriverDescriptor(name: "iscsi", filenamePrefixes: ["iscsi://"]) {
        (reader: inout OptionReader) throws(GraphError) -> any NodeConfiguration in
        try IscsiNodeConfiguration(parsing: &reader)
    }
}
