import StrataGraph
import Testing

@Suite struct GraphValidationTests {
    let log = TestNodeLog()
    var registry: DriverRegistry { testRegistry(log: log) }

    func json(_ text: String) throws -> JSONValue { try JSONValue.parse(text) }

    func baseModel() throws -> GraphModel {
        var model = GraphModel(registry: registry)
        try model.addNode(json(#"{"driver":"proto","node-name":"p0"}"#))
        try model.addNode(json(#"{"driver":"format","node-name":"f0","file":"p0"}"#))
        try model.addBackend(BackendEntry(name: "disk0", nodeName: "f0"))
        _ = try model.validated()
        return model
    }

    @Test func inlineChildrenBecomeNodesOfTheirOwn() throws {
        var model = GraphModel(registry: registry)
        let name = try model.addNode(json(#"{"driver":"format","node-name":"top","file":{"driver":"proto"}}"#))
        #expect(name == "top")
        let child = try model.node("top").children[0].nodeName
        #expect(child.hasPrefix("#block"))
        #expect(model.nodes[child]?.driver == "proto")
    }

    @Test func unknownDriverIsNamed() throws {
        var model = GraphModel(registry: registry)
        #expect(throws: GraphError.unknownDriver("nosuch")) { try model.addNode(json(#"{"driver":"nosuch","node-name":"x"}"#)) }
    }

    @Test func missingDriverAndBadNamesAreRefused() throws {
        var model = GraphModel(registry: registry)
        #expect(throws: GraphError.missingOption(node: "x", option: "driver")) { try model.addNode(json(#"{"node-name":"x"}"#)) }
        #expect(throws: GraphError.badNodeName("1bad")) { try model.addNode(json(#"{"driver":"proto","node-name":"1bad"}"#)) }
        #expect(throws: GraphError.badNodeName("has space")) { try model.addNode(json(#"{"driver":"proto","node-name":"has space"}"#)) }
        #expect(throws: GraphError.badEdit("node options must be a JSON object, got an array")) { try model.addNode(json("[1]")) }
    }

    @Test func duplicateNamesAreRefused() throws {
        var model = try baseModel()
        #expect(throws: GraphError.duplicateName("p0")) { try model.addNode(json(#"{"driver":"proto","node-name":"p0"}"#)) }
        #expect(throws: GraphError.duplicateName("disk0")) { try model.addBackend(BackendEntry(name: "disk0", nodeName: "p0")) }
    }

    @Test func unexpectedAndBadOptionsAreNamed() throws {
        var model = GraphModel(registry: registry)
        #expect(throws: GraphError.unexpectedOption(node: "x", option: "colour")) {
            try model.addNode(json(#"{"driver":"proto","node-name":"x","colour":"red"}"#))
        }
        #expect(throws: GraphError.badOption(node: "x", option: "size", reason: "must be between 0 and 1125899906842624, got -5")) {
            try model.addNode(json(#"{"driver":"proto","node-name":"x","size":-5}"#))
        }
        #expect(throws: GraphError.badOption(node: "x", option: "size", reason: "expects a number, got 'big'")) {
            try model.addNode(json(#"{"driver":"proto","node-name":"x","size":"big"}"#))
        }
    }

    @Test func missingChildIsNamed() throws {
        var model = GraphModel(registry: registry)
        try model.addNode(json(#"{"driver":"format","node-name":"f","file":"ghost"}"#))
        #expect(throws: GraphError.missingChild(node: "f", role: .file, child: "ghost")) { try model.validated() }
        var other = GraphModel(registry: registry)
        #expect(throws: GraphError.missingOption(node: "f", option: "file")) { try other.addNode(json(#"{"driver":"format","node-name":"f"}"#)) }
    }

    @Test func cyclesAreRefused() throws {
        var model = GraphModel(registry: registry)
        try model.addNode(json(#"{"driver":"format","node-name":"a","file":"b"}"#))
        try model.addNode(json(#"{"driver":"format","node-name":"b","file":"a"}"#))
        #expect(throws: GraphError.cycle(path: ["a", "b", "a"])) { try model.validated() }
        var selfLoop = GraphModel(registry: registry)
        try selfLoop.addNode(json(#"{"driver":"format","node-name":"s","file":"s"}"#))
        #expect(throws: GraphError.cycle(path: ["s", "s"])) { try selfLoop.validated() }
    }

    @Test func removingANodeInUseIsRefused() throws {
        var model = try baseModel()
        #expect(throws: GraphError.inUse(node: "p0", users: ["node 'f0' (file)"])) { try model.removeNode("p0") }
        #expect(throws: GraphError.inUse(node: "f0", users: ["backend 'disk0'"])) { try model.removeNode("f0") }
        #expect(throws: GraphError.noSuchNode("zz")) { try model.removeNode("zz") }
    }

    @Test func writersOnReadOnlyNodesAreRefused() throws {
        var model = GraphModel(registry: registry)
        try model.addNode(json(#"{"driver":"proto","node-name":"p","read-only":true}"#))
        try model.addNode(json(#"{"driver":"format","node-name":"f","file":"p"}"#))
        try model.addBackend(BackendEntry(name: "d", nodeName: "f"))
        #expect(throws: GraphError.readOnly(node: "p", user: "node 'f'")) { try model.validated() }
        var readers = GraphModel(registry: registry)
        try readers.addNode(json(#"{"driver":"proto","node-name":"p","read-only":true}"#))
        try readers.addBackend(BackendEntry(name: "d", nodeName: "p", writable: false))
        _ = try readers.validated()
    }

    @Test func conflictingPermissionsNameNodeUserAndPermission() throws {
        var model = try baseModel()
        // A second writer that shares nothing but reads conflicts with the backend's write.
        try model.addNode(json(#"{"driver":"exclusive","node-name":"x","file":"p0"}"#))
        try model.addBackend(BackendEntry(name: "disk1", nodeName: "x"))
        #expect(throws: GraphError.permissionConflict(node: "p0", user: "node 'x'", role: "file", permission: .write, blockedBy: "node 'f0'")) {
            try model.validated()
        }
        // Two backends both writing one node, neither sharing write.
        var twoWriters = try baseModel()
        try twoWriters.addBackend(BackendEntry(name: "disk1", nodeName: "f0"))
        #expect(throws: GraphError.permissionConflict(node: "f0", user: "backend 'disk0'", role: "root", permission: .write, blockedBy: "backend 'disk1'")) {
            try twoWriters.validated()
        }
        // share-rw on both makes it legal, as in QEMU.
        var shared = try GraphModel(registry: registry).applying([
            .addNode(json(#"{"driver":"proto","node-name":"p"}"#)),
            .addBackend(BackendEntry(name: "a", nodeName: "p", shareWrites: true)),
            .addBackend(BackendEntry(name: "b", nodeName: "p", shareWrites: true)),
        ]).0
        try shared.removeBackend("b")
        #expect(throws: GraphError.noSuchBackend("b")) { try shared.removeBackend("b") }
    }

    @Test func permissionsSumOverUsers() throws {
        let (_, permissions) = try baseModel().applying([.addBackend(BackendEntry(name: "ro", nodeName: "f0", writable: false, shareWrites: true))])
        #expect(permissions["f0"] == NodePermissions(take: [.consistentRead, .write], share: [.consistentRead, .writeUnchanged]))
        #expect(permissions["p0"]?.take == [.consistentRead, .write])
    }

    @Test func filtersInsertAboveAndOnEdgesAndRemoveCleanly() throws {
        var model = try baseModel()
        let above = try model.insertFilter(above: "p0", filter: json(#"{"driver":"filter","node-name":"t1"}"#))
        #expect(above == "t1")
        #expect(try model.node("f0").children[0].nodeName == "t1")
        #expect(try model.node("t1").children[0].nodeName == "p0")
        _ = try model.insertFilter(onEdgeOf: "disk0", optionKey: nil, filter: json(#"{"driver":"filter","node-name":"t2"}"#))
        #expect(model.backends["disk0"]?.nodeName == "t2")
        _ = try model.validated()
        try model.removeFilter("t1")
        try model.removeFilter("t2")
        #expect(try model.node("f0").children[0].nodeName == "p0")
        #expect(model.backends["disk0"]?.nodeName == "f0")
        #expect(throws: GraphError.notAFilter("f0")) { try model.removeFilter("f0") }
        #expect(throws: GraphError.notAFilter("t9")) { _ = try model.insertFilter(above: "p0", filter: json(#"{"driver":"proto","node-name":"t9"}"#)) }
    }

    @Test func replaceRepointsEveryUser() throws {
        var model = try baseModel()
        try model.addNode(json(#"{"driver":"proto","node-name":"p1"}"#))
        try model.replace("p0", with: "p1")
        #expect(try model.node("f0").children[0].nodeName == "p1")
        #expect(model.users(of: "p0").isEmpty)
        try model.removeNode("p0")
        _ = try model.validated()
    }

    @Test func reopenKeepsTheDriver() throws {
        var model = try baseModel()
        try model.reopen(json(#"{"node-name":"p0","driver":"proto","size":4096}"#))
        #expect(try model.node("p0").options["size"] == .int(4096))
        #expect(throws: GraphError.badEdit("reopen of 'p0' cannot change its driver from 'proto'")) {
            try model.reopen(json(#"{"node-name":"p0","driver":"format","file":"x"}"#))
        }
    }

    @Test func transactionsAreAllOrNothingOnTheValue() throws {
        let model = try baseModel()
        let edits: [GraphEdit] = [
            .addNode(try json(#"{"driver":"proto","node-name":"n1"}"#)),
            .insertFilterAbove(node: "p0", filter: try json(#"{"driver":"filter","node-name":"t"}"#)),
            .removeNode("p0"),  // in use by the filter: the whole list must fail
        ]
        #expect(throws: GraphError.inUse(node: "p0", users: ["node 't' (filtered)"])) { try model.applying(edits) }
        #expect(model.nodes.keys.sorted() == ["f0", "p0"])
    }

    @Test func editJSONHasQMPTransactionShape() throws {
        let edits = try GraphEdit.parseList(json(#"""
        {"actions": [
          {"type": "insert-filter", "data": {"above": "p0", "filter": {"driver": "filter", "node-name": "t"}}},
          {"type": "remove-filter", "data": {"node-name": "t"}},
          {"type": "blockdev-add", "data": {"driver": "proto", "node-name": "q"}},
          {"type": "blockdev-del", "data": {"node-name": "q"}}
        ]}
        """#))
        #expect(edits.count == 4)
        _ = try baseModel().applying(edits)
        #expect(throws: GraphError.badEdit("unknown action type 'explode'")) { try GraphEdit.parseList(json(#"{"type":"explode","data":{}}"#)) }
        #expect(throws: GraphError.badEdit("action 'blockdev-del': unexpected key 'force'")) {
            try GraphEdit.parseList(json(#"{"type":"blockdev-del","data":{"node-name":"q","force":true}}"#))
        }
        #expect(throws: GraphError.badEdit("a transaction needs at least one action")) { try GraphEdit.parseList(json("[]")) }
        #expect(throws: GraphError.badJSON("invalid JSON: {not json")) { try JSONValue.parse("{not json") }
    }
}
