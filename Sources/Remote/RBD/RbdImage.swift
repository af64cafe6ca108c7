import CRbd
import StrataGraph

/// Whole-image operations on an rbd image that no node has open: `strata img create -f rbd`.
public enum RbdImage {
    /// Creates `rbd:pool/image` of `sizeBytes` with librbd's default features, as `qemu-img create
    /// -f rbd` does.
    public static func create(filename: String, sizeBytes: UInt64) async throws {
        let location = try RbdLocation(filename: filename, nodeName: "rbd")
        guard location.snapshot == nil else { throw RbdError("cannot create a snapshot: \(filename)") }
        let result: Result<Void, RbdError> = await RbdConnection.offQueue {
            do {
                let (cluster, ioContext) = try RbdConnection.connect(location)
                defer {
                    rados_ioctx_destroy(ioContext)
                    rados_shutdown(cluster)
                }
                let options = UnsafeMutablePointer<rbd_image_options_t?>.allocate(capacity: 1)
                defer { options.deallocate() }
                rbd_image_options_create(options)
                defer { rbd_image_options_destroy(options.pointee) }
                let created = rbd_create4(ioContext, location.image, sizeBytes, options.pointee)
                if created < 0 { return .failure(RbdError("error rbd create", result: created)) }
                return .success(())
            } catch let error as RbdError {
                return .failure(error)
            } catch {
                return .failure(RbdError("\(error)"))
            }
        }
        try result.get()
    }
}
