// A read-only buffer over object-store memory for Python (DESIGN §4): numpy arrays
// and memoryviews from `get` point into the shared arena; when the last of them dies
// the view's release hook unpins the object. Requires the GIL for every call.
#ifndef SWIFTRAY_STOREVIEW_H
#define SWIFTRAY_STOREVIEW_H
#include <sys/select.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>

// Called from the view's dealloc (GIL held) with the context and the 28-byte object id.
typedef void (*sr_view_release_fn)(void *ctx, const unsigned char *object_id);

void sr_StoreView_SetRelease(sr_view_release_fn fn);
// A new read-only view of `len` bytes at `buf`; `ctx` is handed back to the release hook.
PyObject *sr_StoreView_New(const void *buf, Py_ssize_t len, void *ctx, const unsigned char *object_id);
// Live views (for tests and leak checks).
long sr_StoreView_Live(void);
#endif
