/* rpmsg over a pair of split rings in C: the hot operations of transports/virtio.py's
 * DriverRpmsgBackend and DeviceRpmsgBackend (sending, batches of sends, receiving with
 * the header checks, returning buffers, the doorbell, waiting for the peer).
 *
 * An engine works on the C ring halves of its backend and on lists the backend shares
 * with it (the driver's fresh transmit buffers, the device's spare ones). Rare paths
 * call back into the backend: a malformed message (backend._malformed(queue, reason)),
 * a doorbell other than an eventfd (backend._kick()).
 */
#include "speedups.h"

#include <errno.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    PyObject *malformed;  /* backend._malformed(queue, reason) */
    PyObject *kick;       /* backend._kick(): rings the peer through the Python doorbell */
    PyObject *whole;      /* a memoryview of the region: views of received payloads */
    PyObject *spare;      /* the driver's fresh TX offsets / the device's spare TX buffers */
    Ring *rx, *tx;
    Py_ssize_t buf_size;
    uint64_t da_base;     /* the driver's: device address of region offset 0 */
    unsigned long long kicks;  /* kicks written to kick_fd */
    Mem mem;              /* the region, exported from __init__ until close() */
    int have_mem;
    int closed;           /* close() ran: nothing touches the region any more */
    int spinners;         /* threads in wait_pending without the GIL */
    int kick_fd;          /* an eventfd rung directly, or -1: call kick */
    int views;            /* deliver() gets views of the buffers, not copies */
} Engine;

#define DRV_RX(e) ((DriverRing *)(e)->rx)
#define DRV_TX(e) ((DriverRing *)(e)->tx)
#define DEV_RX(e) ((DeviceRing *)(e)->rx)
#define DEV_TX(e) ((DeviceRing *)(e)->tx)

/* -- shared parts ---------------------------------------------------------------------- */
static int engine_kick(Engine *e)
{
    if (e->kick_fd >= 0) {
        uint64_t one = 1;
        if (write(e->kick_fd, &one, sizeof one) == (ssize_t)sizeof one) {
            e->kicks++;
            return 0;
        }
        /* let the Python doorbell meet (and report) the same failure */
    }
    PyObject *res = PyObject_CallNoArgs(e->kick);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static int engine_malformed(Engine *e, Ring *queue, const char *reason)
{
    PyObject *res = PyObject_CallFunction(e->malformed, "Os", (PyObject *)queue, reason);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* The region for one call: the engine's own export (mem_put on it does nothing). */
static int engine_mem(Engine *e, Mem *m)
{
    if (UNLIKELY(!e->have_mem || __atomic_load_n(&e->closed, __ATOMIC_SEQ_CST))) {
        PyErr_SetString(PyExc_ValueError, "the backend is closed");
        return -1;
    }
    m->base = e->mem.base;
    m->len = e->mem.len;
    m->view.obj = NULL;
    return 0;
}

typedef struct {
    const char *data;
    Py_ssize_t len;
    Py_buffer view;
    int has_view;
} Payload;

static int payload_get(PyObject *obj, Payload *p)
{
    if (PyBytes_CheckExact(obj)) {
        p->data = PyBytes_AS_STRING(obj);
        p->len = PyBytes_GET_SIZE(obj);
        p->has_view = 0;
        return 0;
    }
    if (PyObject_GetBuffer(obj, &p->view, PyBUF_SIMPLE) < 0)
        return -1;
    p->data = p->view.buf;
    p->len = p->view.len;
    p->has_view = 1;
    return 0;
}

static void payload_put(Payload *p)
{
    if (p->has_view)
        PyBuffer_Release(&p->view);
}

static void write_header(uint8_t *at, uint32_t src, uint32_t dst, uint16_t len)
{
    uint8_t hdr[RPMSG_HDR_SIZE] = {0};
    memcpy(hdr, &src, 4);
    memcpy(hdr + 4, &dst, 4);
    memcpy(hdr + 12, &len, 2);  /* reserved and flags stay 0 */
    memcpy(at, hdr, RPMSG_HDR_SIZE);
}

typedef struct {
    uint32_t src, dst;
    uint16_t len;
} Header;

static Header read_header(const uint8_t *at)
{
    uint8_t hdr[RPMSG_HDR_SIZE];
    Header h;
    memcpy(hdr, at, RPMSG_HDR_SIZE);  /* one read: the peer may rewrite it meanwhile */
    memcpy(&h.src, hdr, 4);
    memcpy(&h.dst, hdr + 4, 4);
    memcpy(&h.len, hdr + 12, 2);
    return h;
}

/* an offset this engine owns as a buffer of buf_size bytes in the mapping */
static int own_offset(Engine *e, Mem *m, PyObject *token, Py_ssize_t *offset)
{
    Py_ssize_t off = PyLong_AsSsize_t(token);
    if (off == -1 && PyErr_Occurred())
        return -1;
    if (off < 0 || off > m->len - e->buf_size) {
        PyErr_Format(PyExc_ValueError, "buffer offset 0x%zx lies outside the region", off);
        return -1;
    }
    *offset = off;
    return 0;
}

static int parse_addresses(PyObject *const *args, uint32_t *src, uint32_t *dst)
{
    return arg_u32(args[0], "src", src) < 0 || arg_u32(args[1], "dst", dst) < 0 ? -1 : 0;
}

static int check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
        return -1;
    }
    return 0;
}

static int check_payload(Engine *e, Py_ssize_t n)
{
    if (UNLIKELY(n > e->buf_size - RPMSG_HDR_SIZE)) {
        PyErr_Format(PyExc_ValueError, "payload of %zd bytes exceeds the MTU of %zd", n,
                     e->buf_size - RPMSG_HDR_SIZE);
        return -1;
    }
    return 0;
}

/* Finish a batch (publish / notify, kick); an error already set wins over a later one. */
static int finish_batch(Engine *e, Mem *m, int driver, int failed)
{
    SavedError exc;
    if (failed)
        exc = err_take();
    int rc = driver ? drv_publish(DRV_RX(e), m) : dev_notify_needed(DEV_RX(e), m);
    mem_put(m);
    if (rc > 0)
        rc = engine_kick(e);
    if (failed) {
        if (rc < 0)
            PyErr_Clear();
        err_put(exc);
        return -1;
    }
    return rc < 0 ? -1 : 0;
}

/* -- the driver (host) ----------------------------------------------------------------- */
/* a free TX buffer: fresh first (lowest address first), then one the device returned */
static int drvtx_take(Engine *e, Mem *m, PyObject **token, Py_ssize_t *offset)
{
    PyObject *fresh = e->spare;
    Py_ssize_t n = PyList_GET_SIZE(fresh);
    if (n > 0) {
        PyObject *t = Py_NewRef(PyList_GET_ITEM(fresh, n - 1));
        if (PyList_SetSlice(fresh, n - 1, n, NULL) < 0) {
            Py_DECREF(t);
            return -1;
        }
        *token = t;
    } else {
        uint32_t used_len;
        int rc = drv_pop_used(DRV_TX(e), m, token, &used_len);
        if (rc <= 0)
            return rc;
    }
    if (own_offset(e, m, *token, offset) < 0) {
        Py_CLEAR(*token);
        return -1;
    }
    return 1;
}

/* header and descriptor of a filled TX buffer; the caller publishes */
static int drvtx_post(Engine *e, Mem *m, PyObject *token, Py_ssize_t offset, uint32_t src,
                      uint32_t dst, Py_ssize_t n)
{
    write_header(m->base + offset, src, dst, (uint16_t)n);
    return drv_add(DRV_TX(e), m, e->da_base + (uint64_t)offset, (uint32_t)(RPMSG_HDR_SIZE + n),
                   token, 0);
}

static int drvtx_publish(Engine *e, Mem *m)
{
    int rc = drv_publish(DRV_TX(e), m);
    mem_put(m);
    return rc > 0 ? engine_kick(e) : rc;
}

static PyObject *DriverRpmsg_try_send(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t src, dst;
    Payload p;
    if (check_nargs("try_send", nargs, 3) < 0 || parse_addresses(args, &src, &dst) < 0
        || payload_get(args[2], &p) < 0)
        return NULL;
    Mem m;
    PyObject *token = NULL;
    Py_ssize_t offset;
    int rc = check_payload(e, p.len);
    if (rc == 0)
        rc = engine_mem(e, &m);
    if (rc < 0) {
        payload_put(&p);
        return NULL;
    }
    rc = drvtx_take(e, &m, &token, &offset);
    if (rc == 1) {
        memcpy(m.base + offset + RPMSG_HDR_SIZE, p.data, (size_t)p.len);
        rc = drvtx_post(e, &m, token, offset, src, dst, p.len) < 0 ? -1 : 1;
        Py_DECREF(token);
    }
    payload_put(&p);
    if (rc < 0) {
        mem_put(&m);
        return NULL;
    }
    if (rc == 0) {  /* no buffer */
        mem_put(&m);
        Py_RETURN_FALSE;
    }
    if (drvtx_publish(e, &m) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* payloads[first:] as far as buffers go: one publication, at most one kick */
static PyObject *DriverRpmsg_send_many(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t src, dst;
    Py_ssize_t first;
    if (check_nargs("send_many", nargs, 4) < 0 || parse_addresses(args, &src, &dst) < 0)
        return NULL;
    first = PyLong_AsSsize_t(args[3]);
    if (first == -1 && PyErr_Occurred())
        return NULL;
    PyObject *seq = PySequence_Fast(args[2], "payloads must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(seq), sent = 0;
    Mem m;
    if (first < 0 || first > total) {
        PyErr_SetString(PyExc_ValueError, "first lies outside the payloads");
        Py_DECREF(seq);
        return NULL;
    }
    if (engine_mem(e, &m) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    int rc = 0;
    for (Py_ssize_t i = first; i < total; i++) {
        Payload p;
        PyObject *token;
        Py_ssize_t offset;
        if ((rc = payload_get(PySequence_Fast_GET_ITEM(seq, i), &p)) < 0)
            break;
        if ((rc = check_payload(e, p.len)) == 0 && (rc = drvtx_take(e, &m, &token, &offset)) == 1) {
            memcpy(m.base + offset + RPMSG_HDR_SIZE, p.data, (size_t)p.len);
            rc = drvtx_post(e, &m, token, offset, src, dst, p.len);
            Py_DECREF(token);
            if (rc == 0) {
                sent++;
                rc = 1;
            }
        }
        payload_put(&p);
        if (rc <= 0)
            break;
    }
    Py_DECREF(seq);
    if (sent == 0) {
        mem_put(&m);
        return rc < 0 ? NULL : PyLong_FromLong(0);
    }
    /* what was posted goes out even if a later payload failed */
    SavedError exc;
    if (rc < 0)
        exc = err_take();
    int prc = drvtx_publish(e, &m);
    if (rc < 0) {
        if (prc < 0)
            PyErr_Clear();
        err_put(exc);
        return NULL;
    }
    return prc < 0 ? NULL : PyLong_FromSsize_t(sent);
}

static PyObject *DriverRpmsg_take_tx(Engine *e, PyObject *unused)
{
    (void)unused;
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    PyObject *token = NULL;
    Py_ssize_t offset;
    int rc = drvtx_take(e, &m, &token, &offset);
    mem_put(&m);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return token;
}

static PyObject *DriverRpmsg_post_tx(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t src, dst;
    if (check_nargs("post_tx", nargs, 4) < 0 || parse_addresses(args + 1, &src, &dst) < 0)
        return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[3]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || check_payload(e, n) < 0) {
        if (n < 0)
            PyErr_SetString(PyExc_ValueError, "a message length is >= 0");
        return NULL;
    }
    Mem m;
    Py_ssize_t offset;
    if (engine_mem(e, &m) < 0)
        return NULL;
    if (own_offset(e, &m, args[0], &offset) < 0 || drvtx_post(e, &m, args[0], offset, src, dst, n) < 0) {
        mem_put(&m);
        return NULL;
    }
    if (drvtx_publish(e, &m) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The next received message of the driver: 1 found (*offset, *hdr valid, or *malformed),
 * 0 none, -1 error. The caller owns *token. */
static int drvrx_next(Engine *e, Mem *m, PyObject **token, Py_ssize_t *offset, Header *hdr,
                      const char **malformed)
{
    uint32_t used_len;
    int rc = drv_pop_used(DRV_RX(e), m, token, &used_len);
    if (rc <= 0)
        return rc;
    if (own_offset(e, m, *token, offset) < 0) {
        Py_CLEAR(*token);
        return -1;
    }
    *hdr = read_header(m->base + *offset);
    Py_ssize_t room = (Py_ssize_t)used_len < e->buf_size ? (Py_ssize_t)used_len : e->buf_size;
    /* Linux lets used_len < 16 wrap; len is bounded by both limits */
    *malformed = (used_len < RPMSG_HDR_SIZE || hdr->len > room - RPMSG_HDR_SIZE)
                     ? "rpmsg header length exceeds the used length or buffer" : NULL;
    return 1;
}

static int drvrx_repost(Engine *e, Mem *m, PyObject *token, Py_ssize_t offset)
{
    return drv_add(DRV_RX(e), m, e->da_base + (uint64_t)offset, (uint32_t)e->buf_size, token, 1);
}

/* repost a receive buffer; an error already raised (failed) wins: 1 if one is set */
static int repost_keeping_error(Engine *e, Mem *m, PyObject *token, Py_ssize_t offset, int failed)
{
    SavedError exc;
    if (failed)
        exc = err_take();
    int rc = drvrx_repost(e, m, token, offset);
    if (failed) {
        if (rc < 0)
            PyErr_Clear();
        err_put(exc);
    }
    return failed || rc < 0;
}

static PyObject *payload_object(Engine *e, Mem *m, Py_ssize_t start, Py_ssize_t length, int view)
{
    if (view)
        return PySequence_GetSlice(e->whole, start, start + length);
    return PyBytes_FromStringAndSize((const char *)m->base + start, length);
}

/* deliver(src, dst, payload, handle) -> kept, for up to budget buffers */
static PyObject *DriverRpmsg_receive(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("receive", nargs, 2) < 0)
        return NULL;
    PyObject *deliver = args[0];
    Py_ssize_t budget = PyLong_AsSsize_t(args[1]), taken = 0;
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    int failed = 0;
    while (taken < budget) {
        PyObject *token = NULL;
        Py_ssize_t offset;
        Header h;
        const char *bad;
        int rc = drvrx_next(e, &m, &token, &offset, &h, &bad);
        if (rc <= 0) {
            failed = rc < 0;
            break;
        }
        taken++;
        int kept = 0;
        if (bad != NULL) {
            failed = engine_malformed(e, e->rx, bad) < 0;
        } else {
            PyObject *payload = payload_object(e, &m, offset + RPMSG_HDR_SIZE, h.len, e->views);
            PyObject *res = payload == NULL ? NULL
                : PyObject_CallFunction(deliver, "IINO", h.src, h.dst, payload, token);
            kept = res == NULL ? 0 : PyObject_IsTrue(res);
            Py_XDECREF(res);
            if (kept < 0)
                kept = 0;
            failed = PyErr_Occurred() != NULL;
        }
        if (!kept)  /* the buffer goes back unless kept, whatever delivery did */
            failed = repost_keeping_error(e, &m, token, offset, failed);
        Py_DECREF(token);
        if (failed)
            break;
    }
    if (finish_batch(e, &m, 1, failed) < 0)
        return NULL;
    return PyLong_FromSsize_t(taken);
}

/* Up to budget buffers, every payload copied: (taken, [(src, dst, bytes), ...]) */
static PyObject *DriverRpmsg_receive_copies(Engine *e, PyObject *arg)
{
    Py_ssize_t budget = PyLong_AsSsize_t(arg), taken = 0;
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Mem m;
    if (engine_mem(e, &m) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    int failed = 0;
    while (taken < budget) {
        PyObject *token = NULL;
        Py_ssize_t offset;
        Header h;
        const char *bad;
        int rc = drvrx_next(e, &m, &token, &offset, &h, &bad);
        if (rc <= 0) {
            failed = rc < 0;
            break;
        }
        taken++;
        PyObject *item = NULL;
        if (bad != NULL)
            failed = engine_malformed(e, e->rx, bad) < 0;
        else
            item = Py_BuildValue("(IIN)", h.src, h.dst,
                                 payload_object(e, &m, offset + RPMSG_HDR_SIZE, h.len, 0));
        if (item != NULL) {
            failed = PyList_Append(out, item) < 0;
            Py_DECREF(item);
        } else if (bad == NULL) {
            failed = 1;
        }
        failed = repost_keeping_error(e, &m, token, offset, failed);
        Py_DECREF(token);
        if (failed)
            break;
    }
    if (finish_batch(e, &m, 1, failed) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return Py_BuildValue("(nN)", taken, out);
}

static PyObject *DriverRpmsg_release(Engine *e, PyObject *handle)
{
    Mem m;
    Py_ssize_t offset;
    if (engine_mem(e, &m) < 0)
        return NULL;
    if (own_offset(e, &m, handle, &offset) < 0 || drvrx_repost(e, &m, handle, offset) < 0) {
        mem_put(&m);
        return NULL;
    }
    if (finish_batch(e, &m, 1, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -- the device (remote) --------------------------------------------------------------- */
static PyObject *avail_tuple(const AvailBuf *b)
{
    return Py_BuildValue("(IKI)", b->head, (unsigned long long)b->offset, b->length);
}

/* a driver buffer of at least need bytes: 1 found, 0 none, -1 error */
static int devtx_take(Engine *e, Mem *m, uint32_t need, AvailBuf *out)
{
    PyObject *spares = e->spare;
    Py_ssize_t n = PyList_GET_SIZE(spares);
    if (n > 0) {
        unsigned int head;
        unsigned long long offset;
        unsigned int length;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(spares, n - 1), "IKI", &head, &offset, &length))
            return -1;
        if (length >= need) {
            if (PyList_SetSlice(spares, n - 1, n, NULL) < 0)
                return -1;
            out->head = head;
            out->offset = offset;
            out->length = length;
            goto check;
        }
    }
    DeviceRing *tx = DEV_TX(e);
    for (uint32_t i = 0; i < tx->r.num + 1; i++) {
        int rc = dev_pop_avail(tx, m, out);
        if (rc <= 0)
            return rc;
        if (out->length >= need)
            goto check;
        if (out->length >= (uint64_t)e->buf_size) {  /* big enough for a full message */
            PyObject *t = avail_tuple(out);
            if (t == NULL || PyList_Append(spares, t) < 0) {
                Py_XDECREF(t);
                return -1;
            }
            Py_DECREF(t);
            return 0;
        }
        if (ring_fault(&tx->r, "driver posted an RX buffer smaller than the rpmsg buffer size") < 0)
            return -1;
        dev_push_used(tx, m, out->head, 0);  /* held: cannot fail */
    }
    return 0;
check:
    /* pop_avail checked it against the region; the mapping must hold it as well */
    if (out->offset > (uint64_t)m->len || out->length > (uint64_t)m->len - out->offset) {
        PyErr_SetString(PyExc_ValueError, "a transmit buffer lies outside the mapping");
        return -1;
    }
    return 1;
}

static int devtx_post(Engine *e, Mem *m, const AvailBuf *b, uint32_t src, uint32_t dst,
                      Py_ssize_t n)
{
    write_header(m->base + b->offset, src, dst, (uint16_t)n);
    return dev_push_used(DEV_TX(e), m, b->head, (uint32_t)(RPMSG_HDR_SIZE + n));
}

static int devtx_notify(Engine *e, Mem *m)
{
    int rc = dev_notify_needed(DEV_TX(e), m);
    mem_put(m);
    return rc > 0 ? engine_kick(e) : rc;
}

static PyObject *DeviceRpmsg_try_send(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t src, dst;
    Payload p;
    if (check_nargs("try_send", nargs, 3) < 0 || parse_addresses(args, &src, &dst) < 0
        || payload_get(args[2], &p) < 0)
        return NULL;
    Mem m;
    AvailBuf b;
    int rc = check_payload(e, p.len);
    if (rc == 0)
        rc = engine_mem(e, &m);
    if (rc < 0) {
        payload_put(&p);
        return NULL;
    }
    rc = devtx_take(e, &m, (uint32_t)(RPMSG_HDR_SIZE + p.len), &b);
    if (rc == 1) {
        memcpy(m.base + b.offset + RPMSG_HDR_SIZE, p.data, (size_t)p.len);
        rc = devtx_post(e, &m, &b, src, dst, p.len) < 0 ? -1 : 1;
    }
    payload_put(&p);
    if (rc <= 0) {
        mem_put(&m);
        if (rc < 0)
            return NULL;
        Py_RETURN_FALSE;
    }
    if (devtx_notify(e, &m) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *DeviceRpmsg_send_many(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t src, dst;
    if (check_nargs("send_many", nargs, 4) < 0 || parse_addresses(args, &src, &dst) < 0)
        return NULL;
    Py_ssize_t first = PyLong_AsSsize_t(args[3]);
    if (first == -1 && PyErr_Occurred())
        return NULL;
    PyObject *seq = PySequence_Fast(args[2], "payloads must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(seq), sent = 0;
    Mem m;
    if (first < 0 || first > total) {
        PyErr_SetString(PyExc_ValueError, "first lies outside the payloads");
        Py_DECREF(seq);
        return NULL;
    }
    if (engine_mem(e, &m) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    int rc = 0;
    for (Py_ssize_t i = first; i < total; i++) {
        Payload p;
        AvailBuf b;
        if ((rc = payload_get(PySequence_Fast_GET_ITEM(seq, i), &p)) < 0)
            break;
        if ((rc = check_payload(e, p.len)) == 0
            && (rc = devtx_take(e, &m, (uint32_t)(RPMSG_HDR_SIZE + p.len), &b)) == 1) {
            memcpy(m.base + b.offset + RPMSG_HDR_SIZE, p.data, (size_t)p.len);
            rc = devtx_post(e, &m, &b, src, dst, p.len) < 0 ? -1 : 1;
            sent += rc == 1;
        }
        payload_put(&p);
        if (rc <= 0)
            break;
    }
    Py_DECREF(seq);
    if (sent == 0) {
        mem_put(&m);
        return rc < 0 ? NULL : PyLong_FromLong(0);
    }
    SavedError exc;
    if (rc < 0)
        exc = err_take();
    int nrc = devtx_notify(e, &m);
    if (rc < 0) {
        if (nrc < 0)
            PyErr_Clear();
        err_put(exc);
        return NULL;
    }
    return nrc < 0 ? NULL : PyLong_FromSsize_t(sent);
}

static PyObject *DeviceRpmsg_take_tx(Engine *e, PyObject *arg)
{
    uint32_t need;
    if (arg_u32(arg, "need", &need) < 0)
        return NULL;
    Mem m;
    AvailBuf b;
    if (engine_mem(e, &m) < 0)
        return NULL;
    int rc = devtx_take(e, &m, need, &b);
    mem_put(&m);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return avail_tuple(&b);
}

static int parse_avail(PyObject *handle, AvailBuf *b)
{
    unsigned int head, length;
    unsigned long long offset;
    if (!PyArg_ParseTuple(handle, "IKI", &head, &offset, &length))
        return -1;
    b->head = head;
    b->offset = offset;
    b->length = length;
    return 0;
}

static PyObject *DeviceRpmsg_post_tx(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t src, dst;
    AvailBuf b;
    if (check_nargs("post_tx", nargs, 4) < 0 || parse_avail(args[0], &b) < 0
        || parse_addresses(args + 1, &src, &dst) < 0)
        return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[3]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || check_payload(e, n) < 0 || (uint64_t)(RPMSG_HDR_SIZE + n) > b.length) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "the message does not fit its buffer");
        return NULL;
    }
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    if (b.offset > (uint64_t)m.len || b.length > (uint64_t)m.len - b.offset) {
        mem_put(&m);
        PyErr_SetString(PyExc_ValueError, "a transmit buffer lies outside the mapping");
        return NULL;
    }
    if (devtx_post(e, &m, &b, src, dst, n) < 0) {
        mem_put(&m);
        return NULL;
    }
    if (devtx_notify(e, &m) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The next message the driver sent: 1 found (*malformed or the header), 0 none, -1 error. */
static int devrx_next(Engine *e, Mem *m, AvailBuf *b, Header *hdr, const char **malformed)
{
    int rc = dev_pop_avail(DEV_RX(e), m, b);
    if (rc <= 0)
        return rc;
    if (b->offset > (uint64_t)m->len || b->length > (uint64_t)m->len - b->offset) {
        PyErr_SetString(PyExc_ValueError, "a received buffer lies outside the mapping");
        return -1;
    }
    *malformed = NULL;
    if (b->length < RPMSG_HDR_SIZE) {
        *malformed = "TX buffer shorter than an rpmsg header";
        return 1;
    }
    *hdr = read_header(m->base + b->offset);
    uint64_t limit = (uint64_t)(e->buf_size - RPMSG_HDR_SIZE);  /* the MTU, whatever is posted */
    uint64_t room = b->length - RPMSG_HDR_SIZE;
    if (hdr->len > (room < limit ? room : limit))
        *malformed = "rpmsg header length exceeds the buffer or the MTU";
    return 1;
}

static PyObject *DeviceRpmsg_receive(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("receive", nargs, 2) < 0)
        return NULL;
    PyObject *deliver = args[0];
    Py_ssize_t budget = PyLong_AsSsize_t(args[1]), taken = 0;
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    int failed = 0;
    while (taken < budget) {
        AvailBuf b;
        Header h;
        const char *bad;
        int rc = devrx_next(e, &m, &b, &h, &bad);
        if (rc <= 0) {
            failed = rc < 0;
            break;
        }
        taken++;
        int kept = 0;
        if (bad != NULL) {
            failed = engine_malformed(e, e->rx, bad) < 0;
        } else {
            PyObject *payload = payload_object(e, &m, (Py_ssize_t)b.offset + RPMSG_HDR_SIZE, h.len,
                                               e->views);
            PyObject *res = payload == NULL ? NULL
                : PyObject_CallFunction(deliver, "IIN(II)", h.src, h.dst, payload, b.head, b.length);
            kept = res == NULL ? 0 : PyObject_IsTrue(res);
            Py_XDECREF(res);
            if (kept < 0)
                kept = 0;
            failed = PyErr_Occurred() != NULL;
        }
        if (!kept)  /* the buffer goes back unless kept, whatever delivery did */
            dev_push_used(DEV_RX(e), &m, b.head, b.length);  /* held: cannot fail */
        if (failed)
            break;
    }
    if (finish_batch(e, &m, 0, failed) < 0)
        return NULL;
    return PyLong_FromSsize_t(taken);
}

static PyObject *DeviceRpmsg_receive_copies(Engine *e, PyObject *arg)
{
    Py_ssize_t budget = PyLong_AsSsize_t(arg), taken = 0;
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Mem m;
    if (engine_mem(e, &m) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    int failed = 0;
    while (taken < budget) {
        AvailBuf b;
        Header h;
        const char *bad;
        int rc = devrx_next(e, &m, &b, &h, &bad);
        if (rc <= 0) {
            failed = rc < 0;
            break;
        }
        taken++;
        if (bad != NULL) {
            failed = engine_malformed(e, e->rx, bad) < 0;
        } else {
            PyObject *item = Py_BuildValue(
                "(IIN)", h.src, h.dst,
                payload_object(e, &m, (Py_ssize_t)b.offset + RPMSG_HDR_SIZE, h.len, 0));
            failed = item == NULL || PyList_Append(out, item) < 0;
            Py_XDECREF(item);
        }
        dev_push_used(DEV_RX(e), &m, b.head, b.length);  /* held: cannot fail */
        if (failed)
            break;
    }
    if (finish_batch(e, &m, 0, failed) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return Py_BuildValue("(nN)", taken, out);
}

static PyObject *DeviceRpmsg_release(Engine *e, PyObject *handle)
{
    unsigned int head, length;
    if (!PyArg_ParseTuple(handle, "II", &head, &length))
        return NULL;
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    if (dev_push_used(DEV_RX(e), &m, head, length) < 0) {
        mem_put(&m);
        return NULL;
    }
    if (finish_batch(e, &m, 0, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -- readiness, notifications, waiting (both roles) ------------------------------------ */
static int is_driver(Engine *e) { return Py_IS_TYPE(e, &DriverRpmsg_Type); }

/* the peer's index that announces work for rx or tx, and our position in it */
static void watched(Engine *e, int tx, Py_ssize_t *at, uint16_t **mine)
{
    Ring *ring = tx ? e->tx : e->rx;
    if (is_driver(e)) {
        *at = ring->used_idx;
        *mine = &((DriverRing *)ring)->last_used;
    } else {
        *at = ring->avail_idx;
        *mine = &((DeviceRing *)ring)->last_avail;
    }
}

static PyObject *pending(Engine *e, int tx)
{
    if (tx && PyList_GET_SIZE(e->spare) > 0)
        Py_RETURN_TRUE;
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    Py_ssize_t at;
    uint16_t *mine;
    watched(e, tx, &at, &mine);
    int rc = ld16(m.base + at) != *mine;
    mem_put(&m);
    return PyBool_FromLong(rc);
}

static PyObject *Engine_rx_pending(Engine *e, PyObject *unused)
{
    (void)unused;
    return pending(e, 0);
}

static PyObject *Engine_tx_available(Engine *e, PyObject *unused)
{
    (void)unused;
    return pending(e, 1);
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spin up to timeout seconds, without the GIL, until the peer moves the index that
 * announces work (tx: a freed transmit buffer, else a received message). */
static PyObject *Engine_wait_pending(Engine *e, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs("wait_pending", nargs, 2) < 0)
        return NULL;
    int tx = PyObject_IsTrue(args[0]);
    double timeout = PyFloat_AsDouble(args[1]);
    if (tx < 0 || (timeout == -1.0 && PyErr_Occurred()))
        return NULL;
    if (tx && PyList_GET_SIZE(e->spare) > 0)
        Py_RETURN_TRUE;
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    Py_ssize_t at;
    uint16_t *mine;
    watched(e, tx, &at, &mine);
    const uint8_t *idx = m.base + at;
    int found = ld16(idx) != __atomic_load_n(mine, __ATOMIC_RELAXED);
    if (found || timeout <= 0)
        return PyBool_FromLong(found);
    /* close() waits for the threads spinning here to leave before the mapping goes:
     * announce ourselves, then look at closed (both sequentially consistent) */
    __atomic_add_fetch(&e->spinners, 1, __ATOMIC_SEQ_CST);
    Py_BEGIN_ALLOW_THREADS
    double deadline = monotonic() + timeout;
    int closed = 0;
    do {
        for (int i = 0; i < 64 && !found && !closed; i++) {
            cpu_relax();
            closed = __atomic_load_n(&e->closed, __ATOMIC_SEQ_CST);
            found = !closed && ld16(idx) != __atomic_load_n(mine, __ATOMIC_RELAXED);
        }
        /* Give the core to whoever is runnable on it (returns at once if nobody is):
         * with more spinning processes than cores (a service's client, the service,
         * the firmware on two cores) the one with the next move must not wait for a
         * time slice to end. */
        if (!found && !closed)
            sched_yield();
    } while (!found && !closed && monotonic() < deadline);
    __atomic_sub_fetch(&e->spinners, 1, __ATOMIC_SEQ_CST);  /* no access after this */
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(found);
}

static PyObject *Engine_arm(Engine *e, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *usage = "arm(*, rx, tx) takes two keyword arguments";
    if (nargs != 0 || kwnames == NULL || PyTuple_GET_SIZE(kwnames) != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    int want[2] = {-1, -1};  /* rx, tx */
    for (Py_ssize_t i = 0; i < 2; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int which = PyUnicode_CompareWithASCIIString(name, "rx") == 0 ? 0
                  : PyUnicode_CompareWithASCIIString(name, "tx") == 0 ? 1 : -1;
        if (which < 0) {
            PyErr_SetString(PyExc_TypeError, usage);
            return NULL;
        }
        if ((want[which] = PyObject_IsTrue(args[i])) < 0)
            return NULL;
    }
    if (want[0] < 0 || want[1] < 0) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    int driver = is_driver(e), found = 0, rc = 0;
    for (int tx = 0; tx < 2 && rc >= 0; tx++) {
        if (!want[tx])
            continue;
        Ring *ring = tx ? e->tx : e->rx;
        rc = driver ? drv_enable_interrupts((DriverRing *)ring, &m)
                    : dev_enable_notify((DeviceRing *)ring, &m);
        found |= rc > 0;
    }
    mem_put(&m);
    return rc < 0 ? NULL : PyBool_FromLong(found);
}

static PyObject *Engine_disarm(Engine *e, PyObject *unused)
{
    (void)unused;
    Mem m;
    if (engine_mem(e, &m) < 0)
        return NULL;
    if (is_driver(e)) {
        drv_disable_interrupts(DRV_RX(e), &m);
        drv_disable_interrupts(DRV_TX(e), &m);
    } else {
        dev_disable_notify(DEV_RX(e), &m);
        dev_disable_notify(DEV_TX(e), &m);
    }
    mem_put(&m);
    Py_RETURN_NONE;
}

static void engine_release(Engine *e)
{
    __atomic_store_n(&e->closed, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&e->spinners, __ATOMIC_SEQ_CST))  /* they leave within a pause */
        cpu_relax();
    if (e->have_mem) {
        e->have_mem = 0;
        PyBuffer_Release(&e->mem.view);
    }
}

static PyObject *Engine_close(Engine *e, PyObject *unused)
{
    (void)unused;
    e->kick_fd = -1;  /* the doorbell closes with the backend: never write to its old fd */
    engine_release(e);  /* the region may be unmapped next */
    Py_RETURN_NONE;
}

/* -- construction and lifetime --------------------------------------------------------- */
static int Engine_init(Engine *e, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"rx", "tx", "spare", "buf_size", "whole", "malformed", "kick",
                             "kick_fd", "da_base", NULL};
    PyObject *rx, *tx, *spare, *whole, *malformed, *kick, *da_obj = NULL;
    Py_ssize_t buf_size;
    int kick_fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!nOOOi|O", kwlist, &rx, &tx, &PyList_Type,
                                     &spare, &buf_size, &whole, &malformed, &kick, &kick_fd,
                                     &da_obj))
        return -1;
    PyTypeObject *ring_type = is_driver(e) ? &DriverRing_Type : &DeviceRing_Type;
    if (!PyObject_TypeCheck(rx, ring_type) || !PyObject_TypeCheck(tx, ring_type)) {
        PyErr_Format(PyExc_TypeError, "rx and tx must be %s rings", ring_type->tp_name);
        return -1;
    }
    if (!((Ring *)rx)->ready || !((Ring *)tx)->ready || ((Ring *)rx)->mm != ((Ring *)tx)->mm) {
        PyErr_SetString(PyExc_ValueError, "rx and tx must be ready rings of one region");
        return -1;
    }
    if (buf_size <= RPMSG_HDR_SIZE || buf_size > 0xFFFF + RPMSG_HDR_SIZE) {
        PyErr_Format(PyExc_ValueError, "buf_size must be in 17..65551, got %zd", buf_size);
        return -1;
    }
    if (!PyCallable_Check(malformed) || !PyCallable_Check(kick)) {
        PyErr_SetString(PyExc_TypeError, "malformed and kick must be callable");
        return -1;
    }
    uint64_t da_base = 0;
    if (da_obj != NULL && arg_u64(da_obj, "da_base", &da_base) < 0)
        return -1;
    Mem mem;
    if (mem_get(((Ring *)rx)->mm, &mem) < 0)
        return -1;
    if (mem.len < ((Ring *)rx)->end || mem.len < ((Ring *)tx)->end) {
        mem_put(&mem);
        PyErr_SetString(PyExc_ValueError, "the region no longer holds the rings");
        return -1;
    }
    engine_release(e);  /* of an earlier __init__ */
    e->mem = mem;
    e->have_mem = 1;
    e->closed = 0;
    Py_XSETREF(e->rx, (Ring *)Py_NewRef(rx));
    Py_XSETREF(e->tx, (Ring *)Py_NewRef(tx));
    Py_XSETREF(e->spare, Py_NewRef(spare));
    Py_XSETREF(e->whole, Py_NewRef(whole));
    Py_XSETREF(e->malformed, Py_NewRef(malformed));
    Py_XSETREF(e->kick, Py_NewRef(kick));
    e->buf_size = buf_size;
    e->kick_fd = kick_fd;
    e->da_base = da_base;
    return 0;
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e != NULL)
        e->kick_fd = -1;
    return (PyObject *)e;
}

static int Engine_traverse(Engine *e, visitproc visit, void *arg)
{
    Py_VISIT(e->malformed);
    Py_VISIT(e->kick);
    Py_VISIT(e->whole);
    Py_VISIT(e->spare);
    Py_VISIT(e->rx);
    Py_VISIT(e->tx);
    return 0;
}

static int Engine_clear(Engine *e)
{
    Py_CLEAR(e->malformed);
    Py_CLEAR(e->kick);
    Py_CLEAR(e->whole);
    Py_CLEAR(e->spare);
    Py_CLEAR(e->rx);
    Py_CLEAR(e->tx);
    return 0;
}

static void Engine_dealloc(Engine *e)
{
    PyObject_GC_UnTrack(e);
    engine_release(e);
    Engine_clear(e);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *Engine_get_kicks(Engine *e, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(e->kicks);
}

static PyObject *Engine_get_views(Engine *e, void *closure)
{
    (void)closure;
    return PyBool_FromLong(e->views);
}

static int Engine_set_views(Engine *e, PyObject *value, void *closure)
{
    (void)closure;
    int v = value == NULL ? -1 : PyObject_IsTrue(value);
    if (v < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "views cannot be deleted");
        return -1;
    }
    e->views = v;
    return 0;
}

static PyGetSetDef Engine_getset[] = {
    {"kicks", (getter)Engine_get_kicks, NULL, "kicks written to the eventfd directly", NULL},
    {"views", (getter)Engine_get_views, (setter)Engine_set_views,
     "receive() hands views of the buffers (zero copy), not copies", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define COMMON_METHODS                                                                     \
    {"rx_pending", (PyCFunction)Engine_rx_pending, METH_NOARGS,                           \
     "Cheap check: may a message be waiting?"},                                            \
    {"tx_available", (PyCFunction)Engine_tx_available, METH_NOARGS,                       \
     "Cheap check: may a transmit buffer be free?"},                                       \
    {"wait_pending", (PyCFunction)(void (*)(void))Engine_wait_pending, METH_FASTCALL,      \
     "wait_pending(tx, timeout): spin without the GIL until rx/tx work may be there."},   \
    {"arm", (PyCFunction)(void (*)(void))Engine_arm, METH_FASTCALL | METH_KEYWORDS,        \
     "Ask the peer to ring for rx and/or tx; True if work arrived meanwhile."},           \
    {"disarm", (PyCFunction)Engine_disarm, METH_NOARGS, "Tell the peer not to ring."},    \
    {"close", (PyCFunction)Engine_close, METH_NOARGS,                                     \
     "The backend closes: let go of the region and the doorbell's fd (waits for spinners)."}

static PyMethodDef DriverRpmsg_methods[] = {
    {"try_send", (PyCFunction)(void (*)(void))DriverRpmsg_try_send, METH_FASTCALL,
     "try_send(src, dst, payload) -> bool: copy one message out if a buffer is free."},
    {"send_many", (PyCFunction)(void (*)(void))DriverRpmsg_send_many, METH_FASTCALL,
     "send_many(src, dst, payloads, first) -> int: payloads[first:] while buffers last, "
     "one publication, at most one kick."},
    {"take_tx", (PyCFunction)DriverRpmsg_take_tx, METH_NOARGS,
     "A free transmit buffer's offset, or None."},
    {"post_tx", (PyCFunction)(void (*)(void))DriverRpmsg_post_tx, METH_FASTCALL,
     "post_tx(offset, src, dst, length): send a filled transmit buffer."},
    {"receive", (PyCFunction)(void (*)(void))DriverRpmsg_receive, METH_FASTCALL,
     "receive(deliver, budget) -> taken (see Backend.receive)."},
    {"receive_copies", (PyCFunction)DriverRpmsg_receive_copies, METH_O,
     "receive_copies(budget) -> (taken, [(src, dst, bytes), ...])."},
    {"release", (PyCFunction)DriverRpmsg_release, METH_O, "Give back a kept receive buffer."},
    COMMON_METHODS,
    {NULL, NULL, 0, NULL},
};

static PyMethodDef DeviceRpmsg_methods[] = {
    {"try_send", (PyCFunction)(void (*)(void))DeviceRpmsg_try_send, METH_FASTCALL,
     "try_send(src, dst, payload) -> bool: copy one message out if a buffer is free."},
    {"send_many", (PyCFunction)(void (*)(void))DeviceRpmsg_send_many, METH_FASTCALL,
     "send_many(src, dst, payloads, first) -> int: payloads[first:] while buffers last, "
     "one notification check, at most one kick."},
    {"take_tx", (PyCFunction)DeviceRpmsg_take_tx, METH_O,
     "take_tx(need) -> (head, offset, length) of a driver buffer of need bytes, or None."},
    {"post_tx", (PyCFunction)(void (*)(void))DeviceRpmsg_post_tx, METH_FASTCALL,
     "post_tx((head, offset, length), src, dst, length): send a filled buffer."},
    {"receive", (PyCFunction)(void (*)(void))DeviceRpmsg_receive, METH_FASTCALL,
     "receive(deliver, budget) -> taken (see Backend.receive)."},
    {"receive_copies", (PyCFunction)DeviceRpmsg_receive_copies, METH_O,
     "receive_copies(budget) -> (taken, [(src, dst, bytes), ...])."},
    {"release", (PyCFunction)DeviceRpmsg_release, METH_O, "Give back a kept receive buffer."},
    COMMON_METHODS,
    {NULL, NULL, 0, NULL},
};

#define ENGINE_TYPE(Name, doc)                                                             \
    PyTypeObject Name##_Type = {                                                           \
        PyVarObject_HEAD_INIT(NULL, 0)                                                     \
        .tp_name = "amplink._speedups." #Name,                                             \
        .tp_doc = doc,                                                                     \
        .tp_basicsize = sizeof(Engine),                                                    \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,                               \
        .tp_new = Engine_new,                                                              \
        .tp_init = (initproc)Engine_init,                                                  \
        .tp_dealloc = (destructor)Engine_dealloc,                                          \
        .tp_traverse = (traverseproc)Engine_traverse,                                      \
        .tp_clear = (inquiry)Engine_clear,                                                 \
        .tp_methods = Name##_methods,                                                      \
        .tp_getset = Engine_getset,                                                        \
    };

ENGINE_TYPE(DriverRpmsg, "The hot path of the host's rpmsg backend (DriverRpmsgBackend).")
ENGINE_TYPE(DeviceRpmsg, "The hot path of the remote's rpmsg backend (DeviceRpmsgBackend).")
