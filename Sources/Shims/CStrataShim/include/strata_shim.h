// C glue for what Swift cannot import directly: liburing's macros and static inlines that touch
// ring internals, CPU_SET, eventfd, fcntl/fallocate constants that glibc defines as macros, and
// libnuma. No logic lives here; every symbol is prefixed strata_.
#ifndef STRATA_SHIM_H
#define STRATA_SHIM_H

// Glibc's feature macros are fixed by the first include of <features.h>: include it before
// liburing.h (which defines _GNU_SOURCE) so this module sees the same fd_set as SwiftGlibc.
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <liburing.h>

struct strata_ring;  // opaque: wraps struct io_uring so Swift never sees its layout

/// Creates a ring for the calling thread alone: submit, reap and destroy it on that thread.
struct strata_ring *strata_ring_create(unsigned entries, int *error_out);
void strata_ring_destroy(struct strata_ring *ring);
/// Returns NULL when the submission queue is full (the caller submits, then retries).
struct io_uring_sqe *strata_ring_get_sqe(struct strata_ring *ring);
/// Submits queued SQEs; waits for at least wait_nr completions. Returns submitted count or -errno.
int strata_ring_submit(struct strata_ring *ring, unsigned wait_nr);
/// Copies up to max ready completions (user_data, res) and marks them seen. No syscall.
unsigned strata_ring_reap(struct strata_ring *ring, uint64_t *user_data, int32_t *results, unsigned max);
unsigned strata_ring_pending_sqes(struct strata_ring *ring);
/// Free submission queue entries.
unsigned strata_ring_sq_space_left(struct strata_ring *ring);
/// Nonzero when completions wait in the kernel for this thread's next io_uring_enter (deferred
/// task work or an overflowed CQ). No syscall.
int strata_ring_has_kernel_work(struct strata_ring *ring);
/// Completions ready to reap without a syscall.
unsigned strata_ring_ready_cqes(struct strata_ring *ring);

static inline void strata_sqe_set_data(struct io_uring_sqe *sqe, uint64_t data) { sqe->user_data = data; }
static inline void strata_sqe_set_rw_flags(struct io_uring_sqe *sqe, int flags) { sqe->rw_flags = flags; }
/// Chains the next SQE to this one (IOSQE_IO_LINK, a macro Swift cannot import).
static inline void strata_sqe_link_next(struct io_uring_sqe *sqe) { sqe->flags |= IOSQE_IO_LINK; }
void strata_prep_ftruncate(struct io_uring_sqe *sqe, int fd, uint64_t length);
void strata_prep_timeout_abs(struct io_uring_sqe *sqe, struct __kernel_timespec *ts);

// Threads and CPUs.
int strata_pin_current_thread(int cpu);
int strata_current_cpu(void);
int strata_gettid(void);
int strata_set_thread_name(const char *name);

// The queue executor running on this thread, or NULL: one thread-local read answers "am I on it".
void *strata_current_executor_get(void);
void strata_current_executor_set(void *executor);

// The CPU's time-stamp counter (as fio's clocksource=cpu): a few ns, against ~25 ns for
// clock_gettime in these VMs. Only meaningful where the CPU has constant_tsc and nonstop_tsc.
static inline uint64_t strata_rdtsc(void) {
    uint32_t low, high;
    __asm__ __volatile__("rdtsc" : "=a"(low), "=d"(high));
    return ((uint64_t)high << 32) | low;
}
int strata_cpu_has_invariant_tsc(void);

// Starts loading the cache line at `address` without waiting for it: a device reading rings that
// a driver on another CPU wrote takes each line's transfer in parallel instead of one by one.
static inline void strata_prefetch(const void *address) { __builtin_prefetch(address, 0, 3); }

// Wakeups.
int strata_eventfd_create(void);
int strata_eventfd_signal(int fd);

// SCM_RIGHTS (the CMSG macros cannot be imported): control-buffer room for `count` descriptors;
// putting descriptors into a message's control buffer; taking the descriptors a received message
// carries into `fds` (at most `max`; any beyond are closed). Returns the count taken, or -1 when
// the control data was cut short (MSG_CTRUNC: descriptors were lost; those that came are closed).
size_t strata_cmsg_space_fds(int count);
/// An anonymous shareable file (memfd, close-on-exec): guest memory a vhost-user back end can map.
int strata_memfd_create(const char *name);
void strata_cmsg_put_fds(struct msghdr *message, const int *fds, int count);
int strata_cmsg_take_fds(const struct msghdr *message, int *fds, int max);

/// Routes `signo` to a handler that writes the signal number as one byte to `write_fd` (the
/// self-pipe trick: a signal becomes readable data, whichever thread it lands on). 0 or -errno.
int strata_signal_to_pipe(int signo, int write_fd);

// Constants glibc defines as macros.
int strata_o_direct(void);
int strata_o_dsync(void);
int strata_f_ofd_setlk(void);
int strata_f_ofd_getlk(void);
int strata_falloc_punch_hole(void);
int strata_falloc_zero_range(void);
int strata_falloc_keep_size(void);
int strata_rwf_dsync(void);
int strata_seek_data(void);
int strata_f_setpipe_sz(void);
int strata_f_getpipe_sz(void);
int strata_seek_hole(void);
/* Line-buffers standard output, so a process killed mid-run has printed every completed line. */
void strata_line_buffer_stdout(void);

/// OFD byte-range lock on one byte; type is F_RDLCK/F_WRLCK/F_UNLCK. Returns 0 or -errno.
int strata_ofd_lock(int fd, int64_t start, int type);
/// Returns 1 when another open file description holds a conflicting lock on that byte, 0 when not, -errno.
int strata_ofd_probe(int fd, int64_t start, int type);

// Memory: NUMA-local where the machine has several nodes, else aligned heap memory.
void *strata_alloc_aligned(size_t bytes, size_t alignment, int numa_node);
void strata_free_aligned(void *memory, size_t bytes, int numa_node);
int strata_numa_node_of_cpu(int cpu);
/// Places pages of an existing mapping on one NUMA node (before first touch); a no-op on machines
/// with a single node or for node < 0.
void strata_place_on_node(void *memory, size_t bytes, int numa_node);
int strata_numa_available_nodes(void);
/// The online CPUs of NUMA node `node` (at most `max`), in order; -EINVAL for a node that does not exist.
int strata_numa_node_cpus(int node, int *cpus, int max);

// Ordered access to 16-bit virtqueue indices in memory shared with another party: Swift's
// Atomic cannot point into raw memory. Callers convert to/from little-endian.
static inline uint16_t strata_load_acquire_u16(const void *address) {
    return __atomic_load_n((const uint16_t *)address, __ATOMIC_ACQUIRE);
}
static inline void strata_store_release_u16(void *address, uint16_t value) {
    __atomic_store_n((uint16_t *)address, value, __ATOMIC_RELEASE);
}

// Relaxed 64-bit access to words of cached metadata tables that readers on other threads load
// without a lock (qcow2's L2 cache, guarded by per-slot sequence counters).
static inline uint64_t strata_load_relaxed_u64(const void *address) {
    return __atomic_load_n((const uint64_t *)address, __ATOMIC_RELAXED);
}
static inline void strata_store_relaxed_u64(void *address, uint64_t value) {
    __atomic_store_n((uint64_t *)address, value, __ATOMIC_RELAXED);
}

#endif
