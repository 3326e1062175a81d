#define _GNU_SOURCE
#include "cswiftray.h"
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <unistd.h>

int sr_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  errno = ENOSYS;
  return -1;
#endif
}

int sr_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int sr_spawn(const char *path, char *const argv[], char *const envp[],
             int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
  posix_spawn_file_actions_adddup2(&fa, stdout_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, stderr_fd, 2);
  // Nothing else crosses into the worker: not the node's listening sockets (user code
  // could accept() on the head's port), not its connections, not other workers' pipes.
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
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
  return rc;
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
