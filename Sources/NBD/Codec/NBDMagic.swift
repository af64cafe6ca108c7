/// The magic numbers that open each NBD message (doc/proto.md), all sent big-endian.
public enum NBDMagic {
    /// "NBDMAGIC": the first eight bytes a server sends.
    public static let nbd: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": follows NBDMAGIC in newstyle greetings and opens every client option.
    public static let option: UInt64 = 0x4948_4156_454F_5054
    /// Opens every fixed-newstyle option reply.
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    public static let request: UInt32 = 0x2560_9513
    public static let simpleReply: UInt32 = 0x6744_6698
    public static let structuredReply: UInt32 = 0x668e_33ef
}
