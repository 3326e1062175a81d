// The CPython C API as Swift sees it. <sys/select.h> first: without it an
// intermittent module clash with Dispatch's fd_set (DESIGN §9).
#ifndef SWIFTRAY_CPYTHON_SHIM_H
#define SWIFTRAY_CPYTHON_SHIM_H
#include <sys/select.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <structmember.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

// The fork server's fork (ForkServer.swift). The fork happens on a thread created for
// it that ran no Swift before: the Swift runtime caches each thread's id the first
// time the thread takes one of its locks, and a forked child inherits the forking
// thread's cache with its parent's id in it. The runtime's locks record their
// owner's id for the kernel (PI futexes), so a child running on a thread whose cache
// is stale makes the kernel refuse its lock waiters, who then spin (two threads of
// each new worker at full CPU in a profile). A fresh thread's cache is empty; it
// fills with the child's own id.
typedef void (*sr_fork_child_main)(void *ctx);
struct sr_fork_job {
  int out_fd, err_fd;
  sr_fork_child_main child;
  void *ctx;
  pid_t pid;
  int error;
};

static inline void *sr_fork_job_run(void *arg) {
  struct sr_fork_job *job = (struct sr_fork_job *)arg;
  PyGILState_STATE g = PyGILState_Ensure();
  PyOS_BeforeFork();
  pid_t pid = fork();
  if (pid == 0) {
    // The child: its own process group (as a spawned worker), its output pipes,
    // nothing of the server's but the lifeline on stdin, no signal blocked.
    setpgid(0, 0);
    dup2(job->out_fd, 1);
    dup2(job->err_fd, 2);
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
#endif
    {
      for (int fd = 3; fd < 65536; fd++) close(fd);
    }
    signal(SIGCHLD, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    // This thread becomes the interpreter's main thread (signals, threading).
    PyOS_AfterFork_Child();
    job->child(job->ctx);
    _exit(70);
  }
  job->error = pid < 0 ? errno : 0;
  job->pid = pid;
  PyOS_AfterFork_Parent();
  PyGILState_Release(g);
  return NULL;
}

// Forks a worker from a fresh thread (see above): returns the child's pid in the
// caller, or -1 with errno; the child runs `child(ctx)`, which must not return.
// Threading: the interpreter's main thread, GIL held (released while it waits).
static inline pid_t sr_fork_on_fresh_thread(int out_fd, int err_fd, sr_fork_child_main child, void *ctx) {
  struct sr_fork_job job = {out_fd, err_fd, child, ctx, -1, 0};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 8u << 20);
  PyThreadState *saved = PyEval_SaveThread();
  pthread_t t;
  int rc = pthread_create(&t, &attr, sr_fork_job_run, &job);
  if (rc == 0) pthread_join(t, NULL);
  PyEval_RestoreThread(saved);
  pthread_attr_destroy(&attr);
  if (rc != 0) { errno = rc; return -1; }
  if (job.pid < 0) errno = job.error;
  return job.pid;
}

// Macros and globals Swift cannot import directly.
static inline PyObject *sr_None(void) { return Py_None; }
static inline PyObject *sr_True(void) { return Py_True; }
static inline PyObject *sr_False(void) { return Py_False; }
static inline PyObject *sr_NewRefNone(void) { Py_INCREF(Py_None); return Py_None; }
static inline PyObject *sr_ExcRuntimeError(void) { return PyExc_RuntimeError; }
static inline PyObject *sr_ExcValueError(void) { return PyExc_ValueError; }
static inline PyObject *sr_ExcTypeError(void) { return PyExc_TypeError; }
static inline PyObject *sr_ExcKeyboardInterrupt(void) { return PyExc_KeyboardInterrupt; }
static inline PyObject *sr_ExcSystemExit(void) { return PyExc_SystemExit; }
static inline int sr_IsBytes(PyObject *o) { return PyBytes_Check(o); }
static inline int sr_IsList(PyObject *o) { return PyList_Check(o); }
static inline int sr_IsTuple(PyObject *o) { return PyTuple_Check(o); }
static inline int sr_IsUnicode(PyObject *o) { return PyUnicode_Check(o); }
static inline int sr_IsLong(PyObject *o) { return PyLong_Check(o); }
static inline int sr_IsFloat(PyObject *o) { return PyFloat_Check(o); }
static inline int sr_IsDict(PyObject *o) { return PyDict_Check(o); }
static inline char *sr_BytesData(PyObject *o) { return PyBytes_AS_STRING(o); }
static inline Py_ssize_t sr_BytesSize(PyObject *o) { return PyBytes_GET_SIZE(o); }
static inline void sr_IncRef(PyObject *o) { Py_INCREF(o); }
static inline void sr_DecRef(PyObject *o) { Py_DECREF(o); }
static inline void sr_XDecRef(PyObject *o) { Py_XDECREF(o); }

// Slots of a `__slots__` class read in place: wait() over thousands of refs reads each
// ref's id without an attribute lookup per ref.
static inline PyObject *sr_Type(PyObject *o) { return (PyObject *)Py_TYPE(o); }
/// The offset of object slot `name` of class `type`, or -1 when it has none.
static inline Py_ssize_t sr_SlotOffset(PyObject *type, const char *name) {
  PyObject *d = PyObject_GetAttrString(type, name);
  if (!d) { PyErr_Clear(); return -1; }
  Py_ssize_t off = -1;
  if (Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX)
    off = ((PyMemberDescrObject *)d)->d_member->offset;
  Py_DECREF(d);
  return off;
}
/// The slot's value (borrowed; NULL when unset).
static inline PyObject *sr_SlotGet(PyObject *o, Py_ssize_t off) { return *(PyObject **)((char *)o + off); }
/// Stores `v` (a new reference, stolen) in an unset slot of a fresh instance.
static inline void sr_SlotInit(PyObject *o, Py_ssize_t off, PyObject *v) { *(PyObject **)((char *)o + off) = v; }
/// A bare instance of class `type` (what object.__new__ makes), or NULL with an error set.
static inline PyObject *sr_Alloc(PyObject *type) { return ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 0); }
/// Makes `f` the finalizer of instances of heap type `type` (in place of the slot that
/// calls its Python `__del__`). Subclasses made before keep theirs.
static inline void sr_SetFinalize(PyObject *type, destructor f) { ((PyTypeObject *)type)->tp_finalize = f; }
/// The same, left out of the cyclic garbage collector's lists: for instances that can
/// hold no reference back to a container (an ObjectRef holds its id bytes only), so
/// the collector never needs to look at them, and thousands made at once cost no passes.
static inline PyObject *sr_AllocUntracked(PyObject *type) {
  PyObject *o = ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 0);
  if (o && PyObject_IS_GC(o)) PyObject_GC_UnTrack(o);
  return o;
}

// A zero-filled PyModuleDef with the head initialised; Swift fills the rest.
static inline PyModuleDef sr_ModuleDefInit(void) {
  PyModuleDef d = { PyModuleDef_HEAD_INIT };
  return d;
}
static inline int sr_METH_VARARGS(void) { return METH_VARARGS; }
static inline int sr_METH_NOARGS(void) { return METH_NOARGS; }
static inline int sr_METH_O(void) { return METH_O; }
static inline int sr_METH_FASTCALL(void) { return METH_FASTCALL; }
#endif
