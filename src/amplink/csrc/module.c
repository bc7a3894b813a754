/* amplink._speedups: module definition, the fence, argument helpers. */
#include "speedups.h"

/* Called at every fence when set (tests: a peer acting at the fence must be seen after
 * it). Not re-entered: a fence inside the hook runs without it. */
static PyObject *fence_hook = NULL;
static int in_fence_hook = 0;

int amp_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (UNLIKELY(fence_hook != NULL) && !in_fence_hook) {
        in_fence_hook = 1;
        PyObject *res = PyObject_CallNoArgs(fence_hook);
        in_fence_hook = 0;
        if (res == NULL)
            return -1;
        Py_DECREF(res);
    }
    return 0;
}

static PyObject *set_fence_hook(PyObject *module, PyObject *hook)
{
    (void)module;
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "the fence hook must be callable or None");
        return NULL;
    }
    Py_XSETREF(fence_hook, hook == Py_None ? NULL : Py_NewRef(hook));
    Py_RETURN_NONE;
}

static PyObject *fence(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    if (amp_fence() < 0)
        return NULL;
    Py_RETURN_NONE;
}

int arg_u64(PyObject *obj, const char *what, uint64_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %.100s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "%s must be in 0..0xffffffffffffffff", what);
        return -1;
    }
    *out = v;
    return 0;
}

int arg_u32(PyObject *obj, const char *what, uint32_t *out)
{
    uint64_t v;
    if (arg_u64(obj, what, &v) < 0)
        return -1;
    if (v > 0xFFFFFFFFu) {
        PyErr_Format(PyExc_ValueError, "%s must be in 0..0xffffffff", what);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static PyMethodDef module_methods[] = {
    {"fence", fence, METH_NOARGS, "A full memory fence (store-load barrier)."},
    {"set_fence_hook", set_fence_hook, METH_O,
     "Call hook() at every fence of the rings (None: stop); for tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "amplink._speedups",
    .m_doc = "The compiled fast path of amplink's split rings and rpmsg backend.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    PyTypeObject *types[] = {&DriverRing_Type, &DeviceRing_Type, &DriverRpmsg_Type,
                             &DeviceRpmsg_Type};
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const char *dot = strrchr(types[i]->tp_name, '.');
        if (PyType_Ready(types[i]) < 0 || PyModule_AddObjectRef(m, dot + 1, (PyObject *)types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
