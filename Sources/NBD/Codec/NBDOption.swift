/// Option numbers a client sends during fixed-newstyle haggling.
public enum NBDOption {
    public static let exportName: UInt32 = 1
    public static let abort: UInt32 = 2
    public static let list: UInt32 = 3
    public static let startTLS: UInt32 = 5
    public static let info: UInt32 = 6
    public static let go: UInt32 = 7
    public static let structuredReply: UInt32 = 8
    public static let listMetaContext: UInt32 = 9
    public static let setMetaContext: UInt32 = 10
}
