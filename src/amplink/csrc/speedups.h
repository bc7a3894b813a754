/* amplink._speedups: the compiled fast path of the split rings and the rpmsg backend.
 *
 * Shared memory is untrusted: every index, length and address read from it is loaded
 * once into a local, checked, and only then used; the region is accessed through a
 * buffer export of its mmap taken for the length of each call (a closed region raises
 * ValueError instead of being touched).
 *
 * Memory ordering: the fields the peer reads while we write them (indices, flags) are
 * stored with release semantics and loaded with acquire semantics; a store that must be
 * visible before a later load of the peer's state is followed by a full fence
 * (__atomic_thread_fence(__ATOMIC_SEQ_CST): mfence / dmb ish).
 */
#ifndef AMPLINK_SPEEDUPS_H
#define AMPLINK_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define VRING_DESC_F_NEXT 1u
#define VRING_DESC_F_WRITE 2u
#define VRING_DESC_F_INDIRECT 4u
#define VRING_AVAIL_F_NO_INTERRUPT 1u
#define VRING_USED_F_NO_NOTIFY 1u
#define VRING_MAX_SIZE 32768u
#define DESC_SIZE 16
#define USED_ELEM_SIZE 8
#define RPMSG_HDR_SIZE 16

#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* -- the region for the length of one call ------------------------------------------ */
typedef struct {
    Py_buffer view;
    uint8_t *base;
    Py_ssize_t len;
} Mem;

static inline int mem_get(PyObject *mm, Mem *m)
{
    if (PyObject_GetBuffer(mm, &m->view, PyBUF_WRITABLE) < 0)
        return -1;
    m->base = (uint8_t *)m->view.buf;
    m->len = m->view.len;
    return 0;
}

static inline void mem_put(Mem *m) { PyBuffer_Release(&m->view); }

/* -- single loads and stores of fields the peer may change at any moment ------------- */
static inline uint16_t ld16_acquire(const uint8_t *p)
{
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}
static inline uint16_t ld16(const uint8_t *p)
{
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
}
static inline uint32_t ld32(const uint8_t *p)
{
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
}
static inline void st16_release(uint8_t *p, uint16_t v)
{
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}
static inline void st32(uint8_t *p, uint32_t v)
{
    __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELAXED);
}

/* virtio's vring_need_event: did [old, new) cross the peer's event index? */
static inline int need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx)
{
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old_idx);
}

/* -- an exception set aside while cleaning up, put back afterwards ---------------------- */
#if PY_VERSION_HEX >= 0x030C0000
typedef PyObject *SavedError;
static inline SavedError err_take(void) { return PyErr_GetRaisedException(); }
static inline void err_put(SavedError e) { PyErr_SetRaisedException(e); }
#else
typedef struct { PyObject *type, *value, *tb; } SavedError;
static inline SavedError err_take(void)
{
    SavedError e;
    PyErr_Fetch(&e.type, &e.value, &e.tb);
    return e;
}
static inline void err_put(SavedError e) { PyErr_Restore(e.type, e.value, e.tb); }
#endif

/* A full fence; runs the test hook (module.c) if one is set. -1 with an exception. */
int amp_fence(void);

/* -- ring halves (ring.c) ------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    PyObject *mm;        /* the region's mmap */
    PyObject *broken;    /* None, or why the ring is unusable */
    Py_ssize_t end;      /* first byte after the ring: the mapping must reach it */
    Py_ssize_t desc, avail_flags, avail_idx, avail_ring, used_event;
    Py_ssize_t used_flags, used_idx, used_ring, avail_event;
    uint32_t num, mask;
    int event_idx;
    int ready;           /* __init__ completed */
} Ring;

typedef struct {
    Ring r;
    PyObject **tokens;   /* per head: the caller's token while the buffer is out */
    uint32_t *lengths;   /* per head: the length we posted */
    uint8_t *state;      /* per head: 0 free, 1 added, 2 published */
    uint16_t *free_heads;
    uint32_t nfree;
    uint16_t *unpublished;
    uint32_t nunpublished;
    uint16_t next_avail, kick_checked, last_used, irq_flags;
} DriverRing;

typedef struct {
    Ring r;
    uint8_t *held;        /* per head: 1 while the device holds it */
    uint8_t *with_driver; /* per head: returned with data, not offered again yet */
    uint64_t da_base, region_size;
    int device_writes;
    uint16_t last_avail, next_used, notify_checked, notify_flags;
} DeviceRing;

extern PyTypeObject DriverRing_Type;
extern PyTypeObject DeviceRing_Type;

/* what pop_avail found: a usable buffer, or nothing */
typedef struct {
    uint32_t head;
    uint64_t offset;
    uint32_t length;
} AvailBuf;

/* The C-level ring operations the rpmsg engines use; m is the region of this call.
 * Those returning int: 1 yes / found, 0 no / nothing, -1 error (exception set). */
int drv_add(DriverRing *q, Mem *m, uint64_t da, uint32_t length, PyObject *token,
            int writable);
int drv_publish(DriverRing *q, Mem *m);
int drv_pop_used(DriverRing *q, Mem *m, PyObject **token, uint32_t *used_len);
int drv_used_pending(DriverRing *q, Mem *m);
int drv_enable_interrupts(DriverRing *q, Mem *m);
void drv_disable_interrupts(DriverRing *q, Mem *m);
int dev_pop_avail(DeviceRing *q, Mem *m, AvailBuf *out);
int dev_push_used(DeviceRing *q, Mem *m, uint32_t head, uint32_t written);
int dev_notify_needed(DeviceRing *q, Mem *m);
int dev_avail_pending(DeviceRing *q, Mem *m);
int dev_enable_notify(DeviceRing *q, Mem *m);
void dev_disable_notify(DeviceRing *q, Mem *m);
/* the mapping reaches the ring (it did at __init__; a remapped region may not): -1 if not */
int ring_mem(Ring *r, Mem *m);
/* call self.faults(reason): -1 if it raised */
int ring_fault(Ring *r, const char *reason);
/* where the index the peer publishes lies: used.idx (driver) or avail.idx (device) */
static inline Py_ssize_t ring_peer_idx(Ring *r, int driver)
{
    return driver ? r->used_idx : r->avail_idx;
}

/* -- rpmsg engines (rpmsg.c) ----------------------------------------------------------- */
extern PyTypeObject DriverRpmsg_Type;
extern PyTypeObject DeviceRpmsg_Type;

/* argument helpers (module.c) */
int arg_u32(PyObject *obj, const char *what, uint32_t *out);
int arg_u64(PyObject *obj, const char *what, uint64_t *out);

#endif
