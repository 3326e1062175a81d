#include "storeview.h"
#include <string.h>

typedef struct {
  PyObject_HEAD
  const void *buf;
  Py_ssize_t len;
  void *ctx;
  unsigned char id[28];
} StoreView;

static sr_view_release_fn release_fn = NULL;
static long live = 0;  // guarded by the GIL

static int sv_getbuffer(PyObject *self, Py_buffer *view, int flags) {
  StoreView *v = (StoreView *)self;
  // readonly=1: a request for a writable buffer fails, so numpy arrays are read-only.
  return PyBuffer_FillInfo(view, self, (void *)v->buf, v->len, 1, flags);
}

static void sv_dealloc(PyObject *self) {
  StoreView *v = (StoreView *)self;
  live--;
  if (release_fn && v->ctx) release_fn(v->ctx, v->id);
  Py_TYPE(self)->tp_free(self);
}

static PyObject *sv_repr(PyObject *self) {
  return PyUnicode_FromFormat("<swiftray object store view of %zd bytes>", ((StoreView *)self)->len);
}

static Py_ssize_t sv_length(PyObject *self) { return ((StoreView *)self)->len; }

static PyBufferProcs sv_as_buffer = {sv_getbuffer, NULL};
static PySequenceMethods sv_as_sequence = {.sq_length = sv_length};

static PyTypeObject StoreViewType = {
  PyVarObject_HEAD_INIT(NULL, 0)
  .tp_name = "swiftray._core.StoreView",
  .tp_basicsize = sizeof(StoreView),
  .tp_dealloc = sv_dealloc,
  .tp_repr = sv_repr,
  .tp_as_sequence = &sv_as_sequence,
  .tp_as_buffer = &sv_as_buffer,
  .tp_flags = Py_TPFLAGS_DEFAULT,
  .tp_doc = "Read-only bytes of an object in swiftray's shared-memory store; the object stays "
            "pinned in memory while this view (or any array made from it) is alive.",
};

void sr_StoreView_SetRelease(sr_view_release_fn fn) { release_fn = fn; }

PyObject *sr_StoreView_New(const void *buf, Py_ssize_t len, void *ctx, const unsigned char *object_id) {
  static int ready = 0;
  if (!ready) {
    if (PyType_Ready(&StoreViewType) < 0) return NULL;
    ready = 1;
  }
  StoreView *v = PyObject_New(StoreView, &StoreViewType);
  if (!v) return NULL;
  v->buf = buf;
  v->len = len;
  v->ctx = ctx;
  memcpy(v->id, object_id, 28);
  live++;
  return (PyObject *)v;
}

long sr_StoreView_Live(void) { return live; }
