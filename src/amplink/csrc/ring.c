/* The two halves of a split virtqueue in C: amplink.virtio's DriverQueue and DeviceQueue.
 *
 * The same state machine as the pure-Python halves (virtio/driver.py, virtio/device.py),
 * operation for operation: the same checks of what the peer wrote, the same fault
 * reasons, the same order of descriptor reuse, so that both give the same results on
 * the same bytes. The Python subclasses add the fault counter and the breaking hook
 * (RingHalf); this file calls them by name on the rare paths.
 */
#include "speedups.h"

/* -- common ------------------------------------------------------------------------------- */
int ring_mem(Ring *r, Mem *m)
{
    if (UNLIKELY(!r->ready)) {
        PyErr_SetString(PyExc_RuntimeError, "ring used before __init__");
        return -1;
    }
    if (mem_get(r->mm, m) < 0)
        return -1;
    if (UNLIKELY(m->len < r->end)) {
        mem_put(m);
        PyErr_SetString(PyExc_ValueError, "the mapping no longer holds the ring");
        return -1;
    }
    return 0;
}

int ring_fault(Ring *r, const char *reason)
{
    PyObject *faults = PyObject_GetAttrString((PyObject *)r, "faults");
    if (faults == NULL)
        return -1;
    PyObject *res = PyObject_CallFunction(faults, "s", reason);
    Py_DECREF(faults);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* self._break(reason): the peer broke the ring beyond repair */
static int ring_break(Ring *r, const char *what, unsigned pending)
{
    PyObject *res = PyObject_CallMethod((PyObject *)r, "_break", "N",
                                        PyUnicode_FromFormat("%s moved %u entries past a ring of %u",
                                                             what, pending, r->num));
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static int ring_setup(Ring *r, PyObject *mm, Py_ssize_t desc, Py_ssize_t avail, Py_ssize_t used,
                      Py_ssize_t num, Py_ssize_t end, int event_idx)
{
    if (num <= 0 || num > (Py_ssize_t)VRING_MAX_SIZE || (num & (num - 1))) {
        PyErr_Format(PyExc_ValueError, "vring size must be a power of two in 1..%u, got %zd",
                     VRING_MAX_SIZE, num);
        return -1;
    }
    if (desc < 0 || desc % 4 || used % 4 || avail != desc + DESC_SIZE * num || used < avail) {
        PyErr_SetString(PyExc_ValueError,
                        "a ring needs a 4-byte aligned descriptor table and used ring");
        return -1;
    }
    Py_ssize_t avail_end = avail + 6 + 2 * num, used_end = used + 6 + USED_ELEM_SIZE * num;
    if (end < avail_end || end < used_end) {
        PyErr_SetString(PyExc_ValueError, "the ring's end lies before its last field");
        return -1;
    }
    Mem m;
    if (mem_get(mm, &m) < 0)
        return -1;
    Py_ssize_t len = m.len;
    mem_put(&m);
    if (end > len) {
        PyErr_Format(PyExc_ValueError, "the ring ends at 0x%zx, beyond the region of 0x%zx bytes",
                     end, len);
        return -1;
    }
    Py_INCREF(mm);
    Py_XSETREF(r->mm, mm);
    r->end = end;
    r->desc = desc;
    r->avail_flags = avail;
    r->avail_idx = avail + 2;
    r->avail_ring = avail + 4;
    r->used_event = avail + 4 + 2 * num;
    r->used_flags = used;
    r->used_idx = used + 2;
    r->used_ring = used + 4;
    r->avail_event = used + 4 + USED_ELEM_SIZE * num;
    r->num = (uint32_t)num;
    r->mask = (uint32_t)num - 1;
    r->event_idx = event_idx;
    return 0;
}

static PyObject *ring_get_broken(Ring *r, void *closure)
{
    (void)closure;
    return Py_NewRef(r->broken);
}

static int ring_set_broken(Ring *r, PyObject *value, void *closure)
{
    (void)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "broken cannot be deleted");
        return -1;
    }
    Py_XSETREF(r->broken, Py_NewRef(value));
    return 0;
}

static PyObject *ring_get_event_idx(Ring *r, void *closure)
{
    (void)closure;
    return PyBool_FromLong(r->event_idx);
}

/* a flag read on every operation (as the Python halves read their attributes) */
static int set_flag(int *field, PyObject *value, const char *name)
{
    int v = value == NULL ? -1 : PyObject_IsTrue(value);
    if (v < 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_AttributeError, "%s cannot be deleted", name);
        return -1;
    }
    *field = v;
    return 0;
}

static int ring_set_event_idx(Ring *r, PyObject *value, void *closure)
{
    (void)closure;
    return set_flag(&r->event_idx, value, "event_idx");
}

static int ring_traverse(Ring *r, visitproc visit, void *arg)
{
    Py_VISIT(r->mm);
    Py_VISIT(r->broken);
    return 0;
}

static void ring_clear(Ring *r)
{
    Py_CLEAR(r->mm);
    Py_CLEAR(r->broken);
}

static PyObject *ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Ring *r = (Ring *)type->tp_alloc(type, 0);
    if (r != NULL)
        r->broken = Py_NewRef(Py_None);
    return (PyObject *)r;
}

/* a u16 of the ring state as a Python attribute (for tests that play a hostile peer) */
static int set_u16(uint16_t *field, PyObject *value, const char *name)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "%s cannot be deleted", name);
        return -1;
    }
    long v = PyLong_AsLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 0xFFFF) {
        PyErr_Format(PyExc_ValueError, "a ring index is 16 bits, got %ld", v);
        return -1;
    }
    *field = (uint16_t)v;
    return 0;
}

/* -- the driver half --------------------------------------------------------------------- */
static void drv_free_arrays(DriverRing *q)
{
    if (q->tokens != NULL) {
        for (uint32_t i = 0; i < q->r.num; i++)
            Py_CLEAR(q->tokens[i]);
    }
    PyMem_Free(q->tokens);
    PyMem_Free(q->lengths);
    PyMem_Free(q->state);
    PyMem_Free(q->free_heads);
    PyMem_Free(q->unpublished);
    q->tokens = NULL;
    q->lengths = NULL;
    q->state = NULL;
    q->free_heads = NULL;
    q->unpublished = NULL;
}

/* every descriptor free, lowest head first, nothing published (the state of reset()) */
static void drv_reset_state(DriverRing *q)
{
    uint32_t num = q->r.num;
    for (uint32_t i = 0; i < num; i++) {
        Py_CLEAR(q->tokens[i]);
        q->free_heads[i] = (uint16_t)(num - 1 - i);
    }
    memset(q->lengths, 0, num * sizeof(uint32_t));
    memset(q->state, 0, num);
    q->nfree = num;
    q->nunpublished = 0;
    q->next_avail = q->kick_checked = q->last_used = q->irq_flags = 0;
}

static int DriverRing_init(DriverRing *q, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mm", "desc", "avail", "used", "num", "end", "event_idx", NULL};
    PyObject *mm;
    Py_ssize_t desc, avail, used, num, end;
    int event_idx = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onnnnn|p", kwlist, &mm, &desc, &avail, &used,
                                     &num, &end, &event_idx))
        return -1;
    q->r.ready = 0;
    drv_free_arrays(q);  /* of an earlier __init__, while r.num is still its size */
    if (ring_setup(&q->r, mm, desc, avail, used, num, end, event_idx) < 0)
        return -1;
    q->tokens = PyMem_Calloc(num, sizeof(PyObject *));
    q->lengths = PyMem_Calloc(num, sizeof(uint32_t));
    q->state = PyMem_Calloc(num, 1);
    q->free_heads = PyMem_Calloc(num, sizeof(uint16_t));
    q->unpublished = PyMem_Calloc(num, sizeof(uint16_t));
    if (!q->tokens || !q->lengths || !q->state || !q->free_heads || !q->unpublished) {
        drv_free_arrays(q);
        PyErr_NoMemory();
        return -1;
    }
    drv_reset_state(q);
    q->r.ready = 1;
    return 0;
}

static int DriverRing_traverse(DriverRing *q, visitproc visit, void *arg)
{
    if (q->tokens != NULL) {
        for (uint32_t i = 0; i < q->r.num; i++)
            Py_VISIT(q->tokens[i]);
    }
    return ring_traverse(&q->r, visit, arg);
}

static int DriverRing_clear(DriverRing *q)
{
    if (q->tokens != NULL) {
        for (uint32_t i = 0; i < q->r.num; i++)
            Py_CLEAR(q->tokens[i]);
    }
    ring_clear(&q->r);
    return 0;
}

static void DriverRing_dealloc(DriverRing *q)
{
    PyObject_GC_UnTrack(q);
    DriverRing_clear(q);
    drv_free_arrays(q);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

int drv_add(DriverRing *q, Mem *m, uint64_t da, uint32_t length, PyObject *token, int writable)
{
    Ring *r = &q->r;
    if (UNLIKELY(!q->nfree)) {
        PyErr_SetString(PyExc_IndexError, "every descriptor is outstanding");
        return -1;
    }
    uint16_t head = q->free_heads[--q->nfree];
    uint8_t *d = m->base + r->desc + (Py_ssize_t)DESC_SIZE * head;
    uint16_t flags = writable ? VRING_DESC_F_WRITE : 0, next = 0;
    /* plain stores: the descriptor becomes the device's at the release store of avail.idx */
    memcpy(d, &da, 8);
    memcpy(d + 8, &length, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
    q->tokens[head] = Py_NewRef(token);
    q->lengths[head] = length;
    q->state[head] = 1;
    q->unpublished[q->nunpublished++] = head;
    __atomic_store_n((uint16_t *)(m->base + r->avail_ring + 2 * (q->next_avail & r->mask)), head,
                     __ATOMIC_RELAXED);
    q->next_avail++;
    return 0;
}

int drv_publish(DriverRing *q, Mem *m)
{
    Ring *r = &q->r;
    uint16_t new_idx = q->next_avail;
    st16_release(m->base + r->avail_idx, new_idx);  /* after the entries and descriptors */
    for (uint32_t i = 0; i < q->nunpublished; i++)
        q->state[q->unpublished[i]] = 2;
    q->nunpublished = 0;
    uint16_t old = q->kick_checked;
    if (new_idx == old)
        return 0;
    q->kick_checked = new_idx;
    if (amp_fence() < 0)  /* our index store is visible before we read the device's flag */
        return -1;
    if (r->event_idx)
        return need_event(ld16(m->base + r->avail_event), new_idx, old);
    return !(ld16(m->base + r->used_flags) & VRING_USED_F_NO_NOTIFY);
}

int drv_used_pending(DriverRing *q, Mem *m)
{
    return ld16(m->base + q->r.used_idx) != q->last_used;
}

int drv_pop_used(DriverRing *q, Mem *m, PyObject **token, uint32_t *used_len)
{
    Ring *r = &q->r;
    const uint8_t *b = m->base;
    uint16_t last = q->last_used;
    uint16_t pending = (uint16_t)(ld16_acquire(b + r->used_idx) - last);
    if (!pending || r->broken != Py_None)
        return 0;
    if (pending > r->num)
        return ring_break(r, "used.idx", pending) < 0 ? -1 : 0;
    for (uint32_t i = 0; i < pending; i++) {
        const uint8_t *elem = b + r->used_ring + USED_ELEM_SIZE * (Py_ssize_t)(last & r->mask);
        uint32_t head = ld32(elem), len = ld32(elem + 4);
        last++;
        q->last_used = last;
        if (head >= r->num || q->state[head] != 2) {
            if (ring_fault(r, "used.id names no buffer the device holds") < 0)
                return -1;
            continue;
        }
        PyObject *t = q->tokens[head];
        q->tokens[head] = NULL;
        q->state[head] = 0;
        q->free_heads[q->nfree++] = (uint16_t)head;
        if (len > q->lengths[head]) {
            len = q->lengths[head];
            if (ring_fault(r, "used.len exceeds the buffer's length") < 0) {
                Py_DECREF(t);
                return -1;
            }
        }
        *token = t;
        *used_len = len;
        return 1;
    }
    return 0;
}

int drv_enable_interrupts(DriverRing *q, Mem *m)
{
    Ring *r = &q->r;
    if (r->event_idx)
        st16_release(m->base + r->used_event, q->last_used);
    if (q->irq_flags) {
        q->irq_flags = 0;
        st16_release(m->base + r->avail_flags, 0);
    }
    if (amp_fence() < 0)  /* publish the request before re-checking the ring */
        return -1;
    return drv_used_pending(q, m);
}

void drv_disable_interrupts(DriverRing *q, Mem *m)
{
    Ring *r = &q->r;
    if (!q->irq_flags) {
        q->irq_flags = VRING_AVAIL_F_NO_INTERRUPT;
        st16_release(m->base + r->avail_flags, VRING_AVAIL_F_NO_INTERRUPT);
    }
    if (r->event_idx)  /* half the index space away: the device's test stays false */
        st16_release(m->base + r->used_event, (uint16_t)(q->last_used - 0x8000));
}

/* Python-facing methods */
#define WITH_MEM(ring, m, fail) Mem m; if (ring_mem((ring), &m) < 0) return fail

static PyObject *DriverRing_reset(DriverRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    memset(m.base + q->r.desc, 0, (size_t)(q->r.end - q->r.desc));
    mem_put(&m);
    drv_reset_state(q);
    Py_SETREF(q->r.broken, Py_NewRef(Py_None));
    Py_RETURN_NONE;
}

static PyObject *DriverRing_add(DriverRing *q, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"da", "length", "token", "writable", NULL};
    PyObject *da_obj, *len_obj, *token;
    int writable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|$p", kwlist, &da_obj, &len_obj, &token,
                                     &writable))
        return NULL;
    if (token == Py_None) {
        PyErr_SetString(PyExc_ValueError, "token must not be None");
        return NULL;
    }
    uint64_t da;
    uint32_t length;
    if (arg_u64(da_obj, "da", &da) < 0 || arg_u32(len_obj, "length", &length) < 0)
        return NULL;
    WITH_MEM(&q->r, m, NULL);
    int rc = drv_add(q, &m, da, length, token, writable);
    mem_put(&m);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *DriverRing_publish(DriverRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    int rc = drv_publish(q, &m);
    mem_put(&m);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyObject *DriverRing_used_pending(DriverRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    int rc = drv_used_pending(q, &m);
    mem_put(&m);
    return PyBool_FromLong(rc);
}

static PyObject *DriverRing_pop_used(DriverRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    PyObject *token = NULL;
    uint32_t len = 0;
    int rc = drv_pop_used(q, &m, &token, &len);
    mem_put(&m);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    PyObject *n = PyLong_FromUnsignedLong(len);
    if (n == NULL) {
        Py_DECREF(token);
        return NULL;
    }
    PyObject *res = PyTuple_New(2);
    if (res == NULL) {
        Py_DECREF(token);
        Py_DECREF(n);
        return NULL;
    }
    PyTuple_SET_ITEM(res, 0, token);
    PyTuple_SET_ITEM(res, 1, n);
    return res;
}

static PyObject *DriverRing_outstanding(DriverRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    uint16_t pending = (uint16_t)(ld16_acquire(m.base + q->r.used_idx) - q->last_used);
    mem_put(&m);
    long held = 0;
    for (uint32_t i = 0; i < q->r.num; i++)
        held += q->state[i] == 2;
    if (q->r.broken != Py_None || pending > q->r.num)
        return PyLong_FromLong(held);
    return PyLong_FromLong(held > pending ? held - pending : 0);
}

static PyObject *DriverRing_enable_interrupts(DriverRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    int rc = drv_enable_interrupts(q, &m);
    mem_put(&m);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyObject *DriverRing_disable_interrupts(DriverRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    drv_disable_interrupts(q, &m);
    mem_put(&m);
    Py_RETURN_NONE;
}

static PyObject *DriverRing_get_free_count(DriverRing *q, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(q->nfree);
}

#define U16_GETSET(Type, field, pyname)                                                    \
    static PyObject *Type##_get_##field(Type *q, void *closure)                            \
    {                                                                                      \
        (void)closure;                                                                     \
        return PyLong_FromLong(q->field);                                                  \
    }                                                                                      \
    static int Type##_set_##field(Type *q, PyObject *value, void *closure)                 \
    {                                                                                      \
        (void)closure;                                                                     \
        return set_u16(&q->field, value, pyname);                                          \
    }

U16_GETSET(DriverRing, next_avail, "_next_avail")
U16_GETSET(DriverRing, last_used, "_last_used")

static PyMethodDef DriverRing_methods[] = {
    {"reset", (PyCFunction)DriverRing_reset, METH_NOARGS,
     "Zero the whole ring in shared memory (the driver owns its initial state)."},
    {"add", (PyCFunction)(void (*)(void))DriverRing_add, METH_VARARGS | METH_KEYWORDS,
     "Post one buffer; it becomes visible to the device only at publish()."},
    {"publish", (PyCFunction)DriverRing_publish, METH_NOARGS,
     "Make added buffers visible; return True if the device asked to be kicked."},
    {"used_pending", (PyCFunction)DriverRing_used_pending, METH_NOARGS,
     "True if the device returned buffers not yet popped."},
    {"pop_used", (PyCFunction)DriverRing_pop_used, METH_NOARGS,
     "Return (token, used_len) of the next used buffer, or None."},
    {"outstanding", (PyCFunction)DriverRing_outstanding, METH_NOARGS,
     "Buffers published to the device that it has not returned."},
    {"enable_interrupts", (PyCFunction)DriverRing_enable_interrupts, METH_NOARGS,
     "Ask to be notified of new used buffers; True if some arrived meanwhile."},
    {"disable_interrupts", (PyCFunction)DriverRing_disable_interrupts, METH_NOARGS,
     "Tell the device that notifications are not needed (a hint)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef DriverRing_getset[] = {
    {"broken", (getter)ring_get_broken, (setter)ring_set_broken,
     "why the ring is unusable (the peer broke the protocol beyond repair), or None", NULL},
    {"event_idx", (getter)ring_get_event_idx, (setter)ring_set_event_idx,
     "event-index notification suppression", NULL},
    {"free_count", (getter)DriverRing_get_free_count, NULL, "descriptors not outstanding", NULL},
    {"_next_avail", (getter)DriverRing_get_next_avail, (setter)DriverRing_set_next_avail, NULL,
     NULL},
    {"_last_used", (getter)DriverRing_get_last_used, (setter)DriverRing_set_last_used, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DriverRing_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "amplink._speedups.DriverRing",
    .tp_doc = "The driver half of a split ring (amplink.virtio.DriverQueue's C base).",
    .tp_basicsize = sizeof(DriverRing),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = ring_new,
    .tp_init = (initproc)DriverRing_init,
    .tp_dealloc = (destructor)DriverRing_dealloc,
    .tp_traverse = (traverseproc)DriverRing_traverse,
    .tp_clear = (inquiry)DriverRing_clear,
    .tp_methods = DriverRing_methods,
    .tp_getset = DriverRing_getset,
};

/* -- the device half --------------------------------------------------------------------- */
static int DeviceRing_init(DeviceRing *q, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mm", "desc", "avail", "used", "num", "end", "da_base",
                             "region_size", "device_writes", "event_idx", NULL};
    PyObject *mm, *da_obj, *size_obj;
    Py_ssize_t desc, avail, used, num, end;
    int device_writes, event_idx = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnnnnOOp|p", kwlist, &mm, &desc, &avail,
                                     &used, &num, &end, &da_obj, &size_obj, &device_writes,
                                     &event_idx))
        return -1;
    uint64_t da_base, region_size;
    if (arg_u64(da_obj, "da_base", &da_base) < 0 || arg_u64(size_obj, "region_size", &region_size) < 0)
        return -1;
    q->r.ready = 0;
    if (ring_setup(&q->r, mm, desc, avail, used, num, end, event_idx) < 0)
        return -1;
    PyMem_Free(q->held);
    PyMem_Free(q->with_driver);
    q->held = PyMem_Calloc(num, 1);
    q->with_driver = PyMem_Calloc(num, 1);
    if (!q->held || !q->with_driver) {
        PyErr_NoMemory();
        return -1;
    }
    q->da_base = da_base;
    q->region_size = region_size;
    q->device_writes = device_writes;
    q->last_avail = q->next_used = q->notify_checked = q->notify_flags = 0;
    q->r.ready = 1;
    return 0;
}

static int DeviceRing_traverse(DeviceRing *q, visitproc visit, void *arg)
{
    return ring_traverse(&q->r, visit, arg);
}

static int DeviceRing_clear(DeviceRing *q)
{
    ring_clear(&q->r);
    return 0;
}

static void DeviceRing_dealloc(DeviceRing *q)
{
    PyObject_GC_UnTrack(q);
    ring_clear(&q->r);
    PyMem_Free(q->held);
    PyMem_Free(q->with_driver);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

int dev_avail_pending(DeviceRing *q, Mem *m)
{
    return ld16(m->base + q->r.avail_idx) != q->last_avail;
}

int dev_push_used(DeviceRing *q, Mem *m, uint32_t head, uint32_t written)
{
    Ring *r = &q->r;
    if (UNLIKELY(head >= r->num)) {  /* as the Python half's table lookup */
        PyErr_Format(PyExc_IndexError, "descriptor %u is outside the table", head);
        return -1;
    }
    if (UNLIKELY(!q->held[head])) {
        PyErr_Format(PyExc_ValueError, "descriptor %u is not held by the device", head);
        return -1;
    }
    q->held[head] = 0;
    if (written)
        q->with_driver[head] = 1;
    uint16_t idx = q->next_used;
    uint8_t *elem = m->base + r->used_ring + USED_ELEM_SIZE * (Py_ssize_t)(idx & r->mask);
    st32(elem, head);
    st32(elem + 4, written);
    idx++;
    q->next_used = idx;
    st16_release(m->base + r->used_idx, idx);  /* after the entry */
    return 0;
}

int dev_pop_avail(DeviceRing *q, Mem *m, AvailBuf *out)
{
    Ring *r = &q->r;
    const uint8_t *b = m->base;
    uint16_t last = q->last_avail;
    uint16_t pending = (uint16_t)(ld16_acquire(b + r->avail_idx) - last);
    if (!pending || r->broken != Py_None)
        return 0;
    if (pending > r->num)  /* more buffers than descriptors: no working driver does this */
        return ring_break(r, "avail.idx", pending) < 0 ? -1 : 0;
    for (uint32_t i = 0; i < pending; i++) {
        uint16_t head = ld16(b + r->avail_ring + 2 * (Py_ssize_t)(last & r->mask));
        last++;
        q->last_avail = last;
        if (head >= r->num) {
            if (ring_fault(r, "avail ring names a descriptor outside the table") < 0)
                return -1;
            continue;
        }
        if (q->held[head]) {
            if (ring_fault(r, "avail ring offers a descriptor the device already holds") < 0)
                return -1;
            continue;
        }
        q->held[head] = 1;
        q->with_driver[head] = 0;
        /* each field read once: the driver may rewrite the descriptor meanwhile */
        const uint8_t *d = b + r->desc + (Py_ssize_t)DESC_SIZE * head;
        uint64_t da;
        uint32_t length;
        uint16_t flags;
        memcpy(&da, d, 8);
        memcpy(&length, d + 8, 4);
        memcpy(&flags, d + 12, 2);
        const char *bad;
        if (flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT))
            bad = "chained or indirect descriptor (rpmsg uses single buffers)";
        else if (!!(flags & VRING_DESC_F_WRITE) != !!q->device_writes)
            bad = "descriptor WRITE flag does not match the queue direction";
        else if (length == 0)
            bad = "descriptor of length 0";
        else if (da < q->da_base || da - q->da_base > q->region_size
                 || length > q->region_size - (da - q->da_base))
            bad = "descriptor address outside shared memory";
        else {
            out->head = head;
            out->offset = da - q->da_base;
            out->length = length;
            return 1;
        }
        if (ring_fault(r, bad) < 0)
            return -1;
        dev_push_used(q, m, head, 0);  /* held: cannot fail */
    }
    return 0;
}

int dev_notify_needed(DeviceRing *q, Mem *m)
{
    Ring *r = &q->r;
    uint16_t new_idx = q->next_used, old = q->notify_checked;
    if (new_idx == old)
        return 0;
    q->notify_checked = new_idx;
    if (amp_fence() < 0)  /* our used.idx store is visible before we read the driver's flag */
        return -1;
    if (r->event_idx)
        return need_event(ld16(m->base + r->used_event), new_idx, old);
    return !(ld16(m->base + r->avail_flags) & VRING_AVAIL_F_NO_INTERRUPT);
}

int dev_enable_notify(DeviceRing *q, Mem *m)
{
    Ring *r = &q->r;
    if (r->event_idx)
        st16_release(m->base + r->avail_event, q->last_avail);
    if (q->notify_flags) {
        q->notify_flags = 0;
        st16_release(m->base + r->used_flags, 0);
    }
    if (amp_fence() < 0)  /* publish the request before re-checking the ring */
        return -1;
    return dev_avail_pending(q, m);
}

void dev_disable_notify(DeviceRing *q, Mem *m)
{
    Ring *r = &q->r;
    if (!q->notify_flags) {
        q->notify_flags = VRING_USED_F_NO_NOTIFY;
        st16_release(m->base + r->used_flags, VRING_USED_F_NO_NOTIFY);
    }
    if (r->event_idx)
        st16_release(m->base + r->avail_event, (uint16_t)(q->last_avail - 0x8000));
}

static PyObject *DeviceRing_avail_pending(DeviceRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    int rc = dev_avail_pending(q, &m);
    mem_put(&m);
    return PyBool_FromLong(rc);
}

static PyObject *DeviceRing_pop_avail(DeviceRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    AvailBuf buf;
    int rc = dev_pop_avail(q, &m, &buf);
    mem_put(&m);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(IKI)", buf.head, (unsigned long long)buf.offset, buf.length);
}

static PyObject *DeviceRing_push_used(DeviceRing *q, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "push_used(head, written) takes 2 arguments");
        return NULL;
    }
    uint32_t head, written;
    if (arg_u32(args[0], "head", &head) < 0 || arg_u32(args[1], "written", &written) < 0)
        return NULL;
    WITH_MEM(&q->r, m, NULL);
    int rc = dev_push_used(q, &m, head, written);
    mem_put(&m);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *DeviceRing_returned_unconsumed(DeviceRing *q, PyObject *unused)
{
    (void)unused;
    Ring *r = &q->r;
    long count = 0;
    for (uint32_t i = 0; i < r->num; i++)
        count += q->with_driver[i];
    WITH_MEM(r, m, NULL);
    uint16_t last = q->last_avail;
    uint16_t pending = (uint16_t)(ld16_acquire(m.base + r->avail_idx) - last);
    if (r->broken != Py_None || pending > r->num) {
        mem_put(&m);
        return PyLong_FromLong(count);
    }
    /* heads offered again but not yet popped count as consumed (each once) */
    uint8_t *seen = PyMem_Calloc(r->num, 1);
    if (seen == NULL) {
        mem_put(&m);
        return PyErr_NoMemory();
    }
    for (uint32_t i = 0; i < pending; i++) {
        uint16_t head = ld16(m.base + r->avail_ring + 2 * (Py_ssize_t)((uint16_t)(last + i) & r->mask));
        if (head < r->num && !seen[head]) {
            seen[head] = 1;
            count -= q->with_driver[head];
        }
    }
    mem_put(&m);
    PyMem_Free(seen);
    return PyLong_FromLong(count);
}

static PyObject *DeviceRing_notify_needed(DeviceRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    int rc = dev_notify_needed(q, &m);
    mem_put(&m);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyObject *DeviceRing_enable_notify(DeviceRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    int rc = dev_enable_notify(q, &m);
    mem_put(&m);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyObject *DeviceRing_disable_notify(DeviceRing *q, PyObject *unused)
{
    (void)unused;
    WITH_MEM(&q->r, m, NULL);
    dev_disable_notify(q, &m);
    mem_put(&m);
    Py_RETURN_NONE;
}

static PyObject *DeviceRing_start_at(DeviceRing *q, PyObject *arg)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    if (v < 0 || v > 0xFFFF) {
        PyErr_Format(PyExc_ValueError, "a ring index is 16 bits, got %ld", v);
        return NULL;
    }
    WITH_MEM(&q->r, m, NULL);
    q->last_avail = (uint16_t)v;
    q->next_used = q->notify_checked = ld16_acquire(m.base + q->r.used_idx);
    mem_put(&m);
    Py_RETURN_NONE;
}

static PyObject *DeviceRing_get_device_writes(DeviceRing *q, void *closure)
{
    (void)closure;
    return PyBool_FromLong(q->device_writes);
}

static int DeviceRing_set_device_writes(DeviceRing *q, PyObject *value, void *closure)
{
    (void)closure;
    return set_flag(&q->device_writes, value, "device_writes");
}

static PyObject *DeviceRing_get_last_avail_pub(DeviceRing *q, void *closure)
{
    (void)closure;
    return PyLong_FromLong(q->last_avail);
}

U16_GETSET(DeviceRing, last_avail, "_last_avail")
U16_GETSET(DeviceRing, next_used, "_next_used")

static PyMethodDef DeviceRing_methods[] = {
    {"avail_pending", (PyCFunction)DeviceRing_avail_pending, METH_NOARGS,
     "True if the driver offered buffers not yet popped."},
    {"pop_avail", (PyCFunction)DeviceRing_pop_avail, METH_NOARGS,
     "Return (head, region_offset, length) of the next valid buffer, or None."},
    {"push_used", (PyCFunction)(void (*)(void))DeviceRing_push_used, METH_FASTCALL,
     "Return a buffer taken with pop_avail(); written = bytes the device wrote."},
    {"returned_unconsumed", (PyCFunction)DeviceRing_returned_unconsumed, METH_NOARGS,
     "Buffers returned with data that the driver has not offered again."},
    {"notify_needed", (PyCFunction)DeviceRing_notify_needed, METH_NOARGS,
     "After returning buffers: True if the driver asked to be notified of them."},
    {"enable_notify", (PyCFunction)DeviceRing_enable_notify, METH_NOARGS,
     "Ask the driver to kick on new buffers; True if some arrived meanwhile."},
    {"disable_notify", (PyCFunction)DeviceRing_disable_notify, METH_NOARGS,
     "Tell the driver that kicks are not needed (a hint)."},
    {"start_at", (PyCFunction)DeviceRing_start_at, METH_O,
     "Continue a ring from a position another device instance reached."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef DeviceRing_getset[] = {
    {"broken", (getter)ring_get_broken, (setter)ring_set_broken,
     "why the ring is unusable (the peer broke the protocol beyond repair), or None", NULL},
    {"event_idx", (getter)ring_get_event_idx, (setter)ring_set_event_idx,
     "event-index notification suppression", NULL},
    {"device_writes", (getter)DeviceRing_get_device_writes, (setter)DeviceRing_set_device_writes,
     "the device writes the buffers of this ring", NULL},
    {"last_avail", (getter)DeviceRing_get_last_avail_pub, NULL,
     "the free-running index of the next avail entry the device will read", NULL},
    {"_last_avail", (getter)DeviceRing_get_last_avail, (setter)DeviceRing_set_last_avail, NULL,
     NULL},
    {"_next_used", (getter)DeviceRing_get_next_used, (setter)DeviceRing_set_next_used, NULL,
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DeviceRing_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "amplink._speedups.DeviceRing",
    .tp_doc = "The device half of a split ring (amplink.virtio.DeviceQueue's C base).",
    .tp_basicsize = sizeof(DeviceRing),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = ring_new,
    .tp_init = (initproc)DeviceRing_init,
    .tp_dealloc = (destructor)DeviceRing_dealloc,
    .tp_traverse = (traverseproc)DeviceRing_traverse,
    .tp_clear = (inquiry)DeviceRing_clear,
    .tp_methods = DeviceRing_methods,
    .tp_getset = DeviceRing_getset,
};
