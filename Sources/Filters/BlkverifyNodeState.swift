import StrataGraph

/// A blkverify node's shared state: its two children; its size is the test image's.
final class BlkverifyNodeState: NodeState {
    private let configuration: BlkverifyConfiguration
    private let test: ChildStateReference
    private let raw: ChildStateReference

    init(configuration: BlkverifyConfiguration, test: any NodeState, raw: any NodeState) {
        self.configuration = configuration
        self.test = ChildStateReference(test)
        self.raw = ChildStateReference(raw)
    }

    var sizeBytes: UInt64 { test.current.sizeBytes }

    func makeInstance(queue: QueueContext, children: [ChildLink: NodeHandle]) -> any BlockNode {
        guard let testHandle = children.child(configuration.test.optionKey), let rawHandle = children.child(configuration.raw.optionKey) else {
            preconditionFailure("blkverify instance built without its children")
        }
        return BlkverifyInstance(queue: queue, test: testHandle, raw: rawHandle)
    }

    func relink(children: [ChildLink: any NodeState]) {
        if let newTest = children.child(configuration.test.optionKey) { test.replace(with: newTest) }
        if let newRaw = children.child(configuration.raw.optionKey) { raw.replace(with: newRaw) }
    }
}
