#define _GNU_SOURCE
#include "cswiftray.h"
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <dirent.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int sr_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  errno = ENOSYS;
  return -1;
#endif
}

int sr_child_exited(pid_t pid) {
  siginfo_t info;
  memset(&info, 0, sizeof info);
  if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return -1;
  return info.si_pid == pid ? 1 : 0;
}

int sr_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int sr_spawn(const char *path, char *const argv[], char *const envp[],
             int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid) {
  return sr_spawn_with(path, argv, envp, stdin_fd, stdout_fd, stderr_fd, -1, -1, pid);
}

int sr_spawn_with(const char *path, char *const argv[], char *const envp[],
                  int stdin_fd, int stdout_fd, int stderr_fd, int fd3, int fd4, pid_t *pid) {
  // An extra descriptor numbered 3 or 4 would be overwritten by the other's dup2.
  int own3 = -1, own4 = -1;
  if (fd3 >= 0 && fd3 < 5) fd3 = own3 = fcntl(fd3, F_DUPFD_CLOEXEC, 10);
  if (fd4 >= 0 && fd4 < 5) fd4 = own4 = fcntl(fd4, F_DUPFD_CLOEXEC, 10);
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
  posix_spawn_file_actions_adddup2(&fa, stdout_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, stderr_fd, 2);
  int first_closed = 3;
  if (fd3 >= 0) { posix_spawn_file_actions_adddup2(&fa, fd3, 3); first_closed = 4; }
  if (fd4 >= 0) { posix_spawn_file_actions_adddup2(&fa, fd4, 4); first_closed = 5; }
  // Nothing else crosses into the worker: not the node's listening sockets (user code
  // could accept() on the head's port), not its connections, not other workers' pipes.
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  posix_spawn_file_actions_addclosefrom_np(&fa, first_closed);
#endif
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  // Reset handlers the host (e.g. Python) installed: SIGINT, SIGPIPE, ...
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  int rc = posix_spawn(pid, path, &fa, &attr, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (own3 >= 0) close(own3);
  if (own4 >= 0) close(own4);
  return rc;
}

int sr_seqpacket_pair(int fds[2]) { return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds); }

ssize_t sr_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
  if (nfds < 0 || nfds > SR_MAX_PASSED_FDS) { errno = EINVAL; return -1; }
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * SR_MAX_PASSED_FDS)]; } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    m.msg_control = ctl.space;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do { n = sendmsg(sock, &m, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
  return n;
}

ssize_t sr_recv_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds) {
  *nfds = 0;
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * SR_MAX_PASSED_FDS)]; } ctl;
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.space, .msg_controllen = sizeof ctl.space};
  ssize_t n;
  do { n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
  if (n < 0) return n;
  int got = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *in = (int *)CMSG_DATA(c);
    for (int i = 0; i < count; i++) {
      if (got < maxfds) fds[got++] = in[i]; else close(in[i]);
    }
  }
  *nfds = got;
  // A message or descriptors cut short is refused whole: the caller closes what it got.
  if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) { errno = EMSGSIZE; return -1; }
  return n;
}

int sr_sigchld_fd(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) return -1;
  return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int sr_thread_count(void) {
  DIR *d = opendir("/proc/self/task");
  if (d == NULL) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

int sr_wait_any(int *status) {
  pid_t p;
  do { p = waitpid(-1, status, WNOHANG); } while (p < 0 && errno == EINTR);
  return p;
}

// Lock discipline bookkeeping: the ids of the locks this thread is inside, innermost
// last. Deeper nesting than the array is counted but not identified.
enum { SR_LOCK_SLOTS = 8 };
static _Thread_local unsigned long sr_held[SR_LOCK_SLOTS];
static _Thread_local int sr_depth;

int sr_lock_enter(unsigned long id) {
  int result = sr_depth > 0 ? 1 : 0;
  int known = sr_depth < SR_LOCK_SLOTS ? sr_depth : SR_LOCK_SLOTS;
  for (int i = 0; i < known; i++) {
    if (sr_held[i] == id) { result = 2; break; }
  }
  if (sr_depth < SR_LOCK_SLOTS) sr_held[sr_depth] = id;
  sr_depth++;
  return result;
}

void sr_lock_exit(void) {
  if (sr_depth > 0) sr_depth--;
}

int sr_locks_held(void) { return sr_depth; }

unsigned long sr_lock_innermost(void) {
  if (sr_depth == 0) return 0;
  return sr_depth <= SR_LOCK_SLOTS ? sr_held[sr_depth - 1] : 0;
}

unsigned long long sr_heap_in_use(void) {
  struct mallinfo2 m = mallinfo2();
  return (unsigned long long)m.uordblks + (unsigned long long)m.hblkhd;
}

int sr_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int sr_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

static uint32_t sr_epoll_bits(int events) {
  if (events == 0) return 0;  // disarmed: only hang-ups and errors are reported
  uint32_t e = EPOLLRDHUP;
  if (events & SR_LANE_IN) e |= EPOLLIN;
  if (events & SR_LANE_OUT) e |= EPOLLOUT;
  return e;
}

int sr_epoll_set(int epfd, int fd, int events, int add) {
  struct epoll_event ev = {0};
  ev.events = sr_epoll_bits(events);
  ev.data.fd = fd;
  return epoll_ctl(epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
}

int sr_epoll_del(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

int sr_epoll_wait(int epfd, int *fds, int *events, int max, int timeout_ms) {
  struct epoll_event evs[64];
  if (max > 64) max = 64;
  int n = epoll_wait(epfd, evs, max, timeout_ms);
  for (int i = 0; i < n; i++) {
    fds[i] = evs[i].data.fd;
    int e = 0;
    if (evs[i].events & EPOLLIN) e |= SR_LANE_IN;
    if (evs[i].events & EPOLLOUT) e |= SR_LANE_OUT;
    if (evs[i].events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) e |= SR_LANE_HUP;
    events[i] = e;
  }
  return n;
}

int sr_accept_nonblocking(int listen_fd) { return accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

static _Thread_local int sr_last_lane_fd = -1;
void sr_set_last_lane(int fd) { sr_last_lane_fd = fd; }
int sr_last_lane(void) { return sr_last_lane_fd; }
static _Thread_local int sr_reading_for_fd = -1;
void sr_set_reading_for(int fd) { sr_reading_for_fd = fd; }
int sr_reading_for(void) { return sr_reading_for_fd; }
