/// Information items requested by, and returned to, NBD_OPT_INFO and NBD_OPT_GO.
public enum NBDInfoType {
    public static let export: UInt16 = 0
    public static let name: UInt16 = 1
    public static let description: UInt16 = 2
    public static let blockSize: UInt16 = 3
}
