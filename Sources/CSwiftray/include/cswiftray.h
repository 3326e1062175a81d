// POSIX/Linux calls Swift cannot reach directly (variadic syscall) or that need
// several C steps (posix_spawn set-up). No Python here: Runtime links this.
#ifndef SWIFTRAY_CSWIFTRAY_H
#define SWIFTRAY_CSWIFTRAY_H
#include <sys/types.h>

// A pollable fd that becomes readable when `pid` exits; -1 if unsupported.
int sr_pidfd_open(pid_t pid);
/// 1 when child `pid` has exited (it stays a zombie, so its pid cannot be reused until
/// it is reaped), 0 while it runs, -1 (errno) when it is not a child.
int sr_child_exited(pid_t pid);

// Spawns `path` with argv/envp (NULL-terminated). stdin <- stdin_fd, stdout/stderr <-
// the given fds; the child gets its own process group (terminal Ctrl-C goes to the
// driver only) and a default signal mask; every other fd is closed in the child
// (closefrom 3). Returns 0 and sets *pid, or an errno.
int sr_spawn(const char *path, char *const argv[], char *const envp[],
             int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid);

// sr_spawn that also passes `fd3` and `fd4` (when >= 0) as the child's fds 3 and 4.
int sr_spawn_with(const char *path, char *const argv[], char *const envp[],
                  int stdin_fd, int stdout_fd, int stderr_fd, int fd3, int fd4, pid_t *pid);

// The fork server (see ForkServer.swift). At most this many descriptors per message.
enum { SR_MAX_PASSED_FDS = 4 };
// socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC): message boundaries kept.
int sr_seqpacket_pair(int fds[2]);
// One message with `nfds` descriptors (SCM_RIGHTS); EINTR retried; never SIGPIPE.
ssize_t sr_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
// One message and up to `maxfds` descriptors (close-on-exec; extra ones closed). A
// truncated message or descriptor list fails with EMSGSIZE; `*nfds` still says how
// many were received (the caller closes them).
ssize_t sr_recv_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds);
// Blocks SIGCHLD for this thread and returns a signalfd for it (non-blocking).
int sr_sigchld_fd(void);
// Threads of this process (entries of /proc/self/task), -1 when unknown.
int sr_thread_count(void);
// waitpid(-1, status, WNOHANG), EINTR retried.
int sr_wait_any(int *status);

// pipe2(O_CLOEXEC); both ends close on exec unless dup2'ed by sr_spawn.
int sr_pipe_cloexec(int fds[2]);

// Lock discipline (Runtime/Concurrency/Locked.swift): which `Locked` values the calling
// thread holds, as a small stack of ids. Thread-local, so no synchronization.
// sr_lock_enter returns 0 when the thread held no lock, 1 when it held others, 2 when
// it held this very lock already (re-entry; the caller traps with the reason).
int sr_lock_enter(unsigned long id);
void sr_lock_exit(void);
// The number of `Locked` critical sections the calling thread is inside, and the
// innermost one's id (0 when none).
int sr_locks_held(void);
unsigned long sr_lock_innermost(void);
// Bytes malloc has handed out and not taken back (glibc's mallinfo2: in-use chunks
// plus mmapped blocks), for measurements that must not count freed memory malloc kept.
unsigned long long sr_heap_in_use(void);

// Lanes (Runtime/Transport/Lane.swift): an eventfd (non-blocking, close-on-exec), an
// epoll set and its calls by fd, and accept4 (non-blocking, close-on-exec).
// `events` are SR_LANE_* bits; sr_epoll_wait fills fds[i]/events[i] and returns how many.
enum { SR_LANE_IN = 1, SR_LANE_OUT = 2, SR_LANE_HUP = 4 };
int sr_eventfd(void);
int sr_epoll_create(void);
int sr_epoll_set(int epfd, int fd, int events, int add);
int sr_epoll_del(int epfd, int fd);
int sr_epoll_wait(int epfd, int *fds, int *events, int max, int timeout_ms);
int sr_accept_nonblocking(int listen_fd);
// The lane the calling thread last wrote a request to (-1: none); thread-local.
void sr_set_last_lane(int fd);
int sr_last_lane(void);
// The wakeup (eventfd) of the wait the calling thread serves by reading a lane itself
// (-1: none); thread-local. A release on that very thread need not signal it.
void sr_set_reading_for(int fd);
int sr_reading_for(void);

#endif
