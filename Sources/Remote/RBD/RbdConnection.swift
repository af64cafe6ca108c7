import CRbd
import Dispatch
import Synchronization

/// One open rbd image: the cluster handle, the pool's I/O context and the image handle, shared by
/// every queue of the node. librados and librbd handles may be used from several threads at once
/// (librbd serialises what must be, inside), so the queues issue requests on it concurrently.
/// Calls that block (connect, open, close, resize, diff) run on a Dispatch thread, never on a queue
/// or the control executor.
final class RbdConnection: @unchecked Sendable {
    // @unchecked Sendable: the three handles are set once in `open` and destroyed once in `close`,
    // after the last request (the graph closes a node when no queue can reach it); librbd allows
    // concurrent calls on them.
    let image: rbd_image_t
    private let ioContext: rados_ioctx_t
    private let cluster: rados_t
    private let closed = Atomic<Bool>(false)
    let description: String

    private init(cluster: rados_t, ioContext: rados_ioctx_t, image: rbd_image_t, description: String) {
        self.cluster = cluster
        self.ioContext = ioContext
        self.image = image
        self.description = description
    }

    /// Runs a blocking librados or librbd call on a Dispatch thread.
    static func offQueue<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: body()) }
        }
    }

    static func open(_ location: RbdLocation, readOnly: Bool) async throws -> RbdConnection {
        let result: Result<RbdConnection, RbdError> = await offQueue {
            do {
                let (cluster, ioContext) = try connect(location)
                var image: rbd_image_t?
                let opened = readOnly
                    ? rbd_open_read_only(ioContext, location.image, &image, location.snapshot)
                    : rbd_open(ioContext, location.image, &image, location.snapshot)
                guard opened >= 0, let image else {
                    rados_ioctx_destroy(ioContext)
                    rados_shutdown(cluster)
                    let what = location.snapshot.map { "error opening image \(location.image) at snapshot \($0)" }
                        ?? "error opening image \(location.image) in pool \(location.pool)"
                    return .failure(RbdError(what, result: opened))
                }
                return .success(RbdConnection(cluster: cluster, ioContext: ioContext, image: image,
                                              description: "\(location.pool)/\(location.image)"))
            } catch let error as RbdError {
                return .failure(error)
            } catch {
                return .failure(RbdError("\(error)"))
            }
        }
        return try result.get()
    }

    /// A connected cluster and the pool's I/O context (namespace set), as QEMU's qemu_rbd_connect.
    static func connect(_ location: RbdLocation) throws -> (rados_t, rados_ioctx_t) {
        var cluster: rados_t?
        var result = rados_create(&cluster, location.user)
        guard result >= 0, let cluster else { throw RbdError("error initializing", result: result) }
        func fail(_ what: String, _ result: Int32) -> RbdError {
            rados_shutdown(cluster)
            return RbdError(what, result: result)
        }
        result = rados_conf_read_file(cluster, location.conf)
        // Without an explicit conf a missing default file is fine: the servers may be given.
        if result < 0 && location.conf != nil { throw fail("error reading conf file \(location.conf!)", result) }
        result = rados_conf_parse_env(cluster, nil)
        if result < 0 { throw fail("error parsing CEPH_ARGS", result) }
        for setting in location.settings {
            result = rados_conf_set(cluster, setting.key, setting.value)
            if result < 0 { throw fail("invalid conf option \(setting.key)", result) }
        }
        if let hosts = location.monitorHosts {
            result = rados_conf_set(cluster, "mon_host", hosts)
            if result < 0 { throw fail("invalid server list \(hosts)", result) }
        }
        if !location.authClientRequired.isEmpty {
            result = rados_conf_set(cluster, "auth_client_required", location.authClientRequired.joined(separator: ";"))
            if result < 0 { throw fail("invalid auth-client-required", result) }
        }
        result = rados_connect(cluster)
        if result < 0 { throw fail("error connecting", result) }
        var ioContext: rados_ioctx_t?
        result = rados_ioctx_create(cluster, location.pool, &ioContext)
        guard result >= 0, let ioContext else { throw fail("error opening pool \(location.pool)", result) }
        rados_ioctx_set_namespace(ioContext, location.namespace ?? "")
        return (cluster, ioContext)
    }

    func sizeBytes() async throws -> UInt64 {
        let image = UncheckedImage(image)
        let (result, size): (Int32, UInt64) = await Self.offQueue {
            var size: UInt64 = 0
            let result = rbd_get_size(image.handle, &size)
            return (result, size)
        }
        if result < 0 { throw RbdError("error getting the size of \(description)", result: result) }
        return size
    }

    func resize(to newSizeBytes: UInt64) async throws {
        let image = UncheckedImage(image)
        let result = await Self.offQueue { rbd_resize(image.handle, newSizeBytes) }
        if result < 0 { throw RbdError("error resizing \(description)", result: result) }
    }

    func close() async {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        let handles = UncheckedHandles(cluster: cluster, ioContext: ioContext, image: image)
        await Self.offQueue {
            rbd_close(handles.image)
            rados_ioctx_destroy(handles.ioContext)
            rados_shutdown(handles.cluster)
        }
    }
}

/// An image handle crossing to a Dispatch thread: librbd handles may be used from any thread.
struct UncheckedImage: @unchecked Sendable {
    let handle: rbd_image_t
    init(_ handle: rbd_image_t) { self.handle = handle }
}

/// All three handles, crossing to the thread that destroys them after the last request.
private struct UncheckedHandles: @unchecked Sendable {
    let cluster: rados_t
    let ioContext: rados_ioctx_t
    let image: rbd_image_t
}
