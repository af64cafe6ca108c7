#define _GNU_SOURCE
#include "strata_shim.h"

#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>

struct strata_ring { struct io_uring ring; };

struct strata_ring *strata_ring_create(unsigned entries, int *error_out) {
    struct strata_ring *r = calloc(1, sizeof(*r));
    if (!r) { *error_out = ENOMEM; return NULL; }
    // Completions of I/O queued in the kernel must never be dropped: a CQ four times the SQ.
    // One thread submits and reaps (SINGLE_ISSUER), so the kernel may defer completion work to
    // that thread's own io_uring_enter (DEFER_TASKRUN) instead of interrupting it, and flag
    // pending work in the SQ ring (TASKRUN_FLAG) so a busy loop enters only when there is some.
    // Kernels before 6.1 refuse those flags; the ring then runs without them.
    static const unsigned flag_sets[] = {
        IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_CQSIZE,
    };
    int ret = -EINVAL;
    for (unsigned i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]) && ret == -EINVAL; i++) {
        struct io_uring_params params;
        memset(&params, 0, sizeof(params));
        params.flags = flag_sets[i];
        params.cq_entries = entries * 4;
        ret = io_uring_queue_init_params(entries, &r->ring, &params);
    }
    if (ret < 0) { free(r); *error_out = -ret; return NULL; }
    // Entering through a registered ring index skips the file table lookup of every
    // io_uring_enter. The index belongs to this thread: the ring is destroyed on it too.
    (void)io_uring_register_ring_fd(&r->ring);
    *error_out = 0;
    return r;
}

void strata_ring_destroy(struct strata_ring *r) { io_uring_queue_exit(&r->ring); free(r); }
struct io_uring_sqe *strata_ring_get_sqe(struct strata_ring *r) { return io_uring_get_sqe(&r->ring); }
int strata_ring_submit(struct strata_ring *r, unsigned wait_nr) { return io_uring_submit_and_wait(&r->ring, wait_nr); }
unsigned strata_ring_pending_sqes(struct strata_ring *r) { return io_uring_sq_ready(&r->ring); }
unsigned strata_ring_sq_space_left(struct strata_ring *r) { return io_uring_sq_space_left(&r->ring); }

unsigned strata_ring_ready_cqes(struct strata_ring *r) { return io_uring_cq_ready(&r->ring); }

int strata_ring_has_kernel_work(struct strata_ring *r) {
    unsigned flags = IO_URING_READ_ONCE(*r->ring.sq.kflags);
    return (flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
}

unsigned strata_ring_reap(struct strata_ring *r, uint64_t *user_data, int32_t *results, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, count = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (count == max) break;
        user_data[count] = cqe->user_data;
        results[count] = cqe->res;
        count++;
    }
    io_uring_cq_advance(&r->ring, count);
    return count;
}

void strata_prep_ftruncate(struct io_uring_sqe *sqe, int fd, uint64_t length) {
    // liburing 2.3 predates IORING_OP_FTRUNCATE (55, kernel 6.9); the SQE layout is stable.
    io_uring_prep_rw(55, sqe, fd, NULL, 0, length);
}

void strata_prep_timeout_abs(struct io_uring_sqe *sqe, struct __kernel_timespec *ts) {
    io_uring_prep_timeout(sqe, ts, 0, IORING_TIMEOUT_ABS);
}

int strata_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}
int strata_current_cpu(void) { return sched_getcpu(); }
int strata_gettid(void) { return (int)syscall(SYS_gettid); }
int strata_set_thread_name(const char *name) { return -pthread_setname_np(pthread_self(), name); }

static __thread void *strata_current_executor;
void *strata_current_executor_get(void) { return strata_current_executor; }
void strata_current_executor_set(void *executor) { strata_current_executor = executor; }

int strata_cpu_has_invariant_tsc(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(0x80000007, &eax, &ebx, &ecx, &edx)) return 0;
    return (edx >> 8) & 1;  // CPUID.80000007H:EDX[8]: invariant TSC
}

static volatile int strata_signal_pipe_fd = -1;

static void strata_signal_pipe_handler(int signo) {
    int saved = errno;
    unsigned char byte = (unsigned char)signo;
    (void)!write(strata_signal_pipe_fd, &byte, 1);
    errno = saved;
}

int strata_signal_to_pipe(int signo, int write_fd) {
    strata_signal_pipe_fd = write_fd;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = strata_signal_pipe_handler;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    return sigaction(signo, &action, NULL) == 0 ? 0 : -errno;
}

int strata_eventfd_create(void) { int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); return fd < 0 ? -errno : fd; }
int strata_eventfd_signal(int fd) { return eventfd_write(fd, 1) < 0 ? -errno : 0; }

int strata_memfd_create(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

size_t strata_cmsg_space_fds(int count) { return CMSG_SPACE(sizeof(int) * (size_t)count); }

void strata_cmsg_put_fds(struct msghdr *message, const int *fds, int count) {
    struct cmsghdr *header = CMSG_FIRSTHDR(message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
    memcpy(CMSG_DATA(header), fds, sizeof(int) * (size_t)count);
    message->msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
}

int strata_cmsg_take_fds(const struct msghdr *message, int *fds, int max) {
    int taken = 0;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(message); header; header = CMSG_NXTHDR((struct msghdr *)message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(header);
        for (size_t index = 0; index < count; index++) {
            int fd;
            memcpy(&fd, data + index * sizeof(int), sizeof(int));
            if (taken < max) fds[taken++] = fd; else close(fd);
        }
    }
    if (message->msg_flags & MSG_CTRUNC) {
        for (int index = 0; index < taken; index++) close(fds[index]);
        return -1;
    }
    return taken;
}

int strata_o_direct(void) { return O_DIRECT; }
int strata_o_dsync(void) { return O_DSYNC; }
int strata_f_ofd_setlk(void) { return F_OFD_SETLK; }
int strata_f_ofd_getlk(void) { return F_OFD_GETLK; }
int strata_falloc_punch_hole(void) { return FALLOC_FL_PUNCH_HOLE; }
int strata_falloc_zero_range(void) { return FALLOC_FL_ZERO_RANGE; }
int strata_falloc_keep_size(void) { return FALLOC_FL_KEEP_SIZE; }
int strata_rwf_dsync(void) { return RWF_DSYNC; }
int strata_seek_data(void) { return SEEK_DATA; }
int strata_f_setpipe_sz(void) { return F_SETPIPE_SZ; }
int strata_f_getpipe_sz(void) { return F_GETPIPE_SZ; }
int strata_seek_hole(void) { return SEEK_HOLE; }
void strata_line_buffer_stdout(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

int strata_ofd_lock(int fd, int64_t start, int type) {
    struct flock fl = { .l_type = (short)type, .l_whence = SEEK_SET, .l_start = start, .l_len = 1, .l_pid = 0 };
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

int strata_ofd_probe(int fd, int64_t start, int type) {
    struct flock fl = { .l_type = (short)type, .l_whence = SEEK_SET, .l_start = start, .l_len = 1, .l_pid = 0 };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) return -errno;
    return fl.l_type != F_UNLCK;
}

void *strata_alloc_aligned(size_t bytes, size_t alignment, int numa_node) {
    if (numa_node >= 0 && numa_available() >= 0 && numa_max_node() > 0) {
        return numa_alloc_onnode(bytes, numa_node);  // page aligned
    }
    void *memory = NULL;
    return posix_memalign(&memory, alignment, bytes) == 0 ? memory : NULL;
}

void strata_free_aligned(void *memory, size_t bytes, int numa_node) {
    if (numa_node >= 0 && numa_available() >= 0 && numa_max_node() > 0) { numa_free(memory, bytes); return; }
    free(memory);
}

void strata_place_on_node(void *memory, size_t bytes, int numa_node) {
    if (numa_node >= 0 && numa_available() >= 0 && numa_max_node() > 0) numa_tonode_memory(memory, bytes, numa_node);
}

int strata_numa_node_of_cpu(int cpu) { return numa_available() < 0 ? 0 : numa_node_of_cpu(cpu); }
int strata_numa_node_cpus(int node, int *cpus, int max) {
    if (node < 0 || node >= strata_numa_available_nodes()) return -EINVAL;
    int online = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int count = 0;
    for (int cpu = 0; cpu < online && count < max; cpu++) {
        if (strata_numa_node_of_cpu(cpu) == node) cpus[count++] = cpu;
    }
    return count;
}
int strata_numa_available_nodes(void) { return numa_available() < 0 ? 1 : numa_max_node() + 1; }
