// The CPython C API as Swift sees it. <sys/select.h> first: without it an
// intermittent module clash with Dispatch's fd_set (DESIGN §9).
#ifndef SWIFTRAY_CPYTHON_SHIM_H
#define SWIFTRAY_CPYTHON_SHIM_H
#include <sys/select.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>

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
