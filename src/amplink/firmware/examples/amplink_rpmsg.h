/* amplink_rpmsg.h: the device side of one rpmsg link for C firmware of amplink's simulated
 * processors (header only; native_echo.c and native_frames.c use it).
 *
 * It follows the convention of amplink/platforms/sim_abi.py:
 *
 *   AMPLINK_SHM_FD, AMPLINK_SHM_SIZE, AMPLINK_DA_BASE   the processor's memory
 *   AMPLINK_RSC_TABLE, AMPLINK_RSC_SIZE                 the processed resource table in it
 *   AMPLINK_KICK_RX_FD / AMPLINK_KICK_TX_FD             eventfds: host -> us / us -> host
 *   AMPLINK_LIFELINE_FD                                 "R" when up, "H" heartbeats; EOF: exit
 *   AMPLINK_POLL, AMPLINK_WATCHDOG_MS                   poll the rings; heartbeat period
 *
 * Define AMPLINK_FW_NAME (a string: the prefix of every message) before including it.
 * Unless AMPLINK_CUSTOM_RESOURCE_TABLE is defined, it defines the firmware's own resource
 * table (the .resource_table section): a trace buffer and one rpmsg vdev with two vrings of
 * 64 buffers, every address left to the host. Everything read from shared memory is checked.
 *
 *   amplink_fw_start()                      environment, memory, table, DRIVER_OK, "R";
 *                                           returns 0, or 1 if the host left before we came up
 *   amplink_announce(service, addr)         a name-service announcement
 *   amplink_rpmsg_send(src, dst, p, n)      one message; 0 if the host posted no buffer yet
 *   amplink_trace(text)                     the trace buffer's text
 *   amplink_fw_run(handler, extra_fd, f)    the loop: handler(src, dst, payload, len) for each
 *                                           message (return 0 to have the same message again
 *                                           later, e.g. when amplink_rpmsg_send found no
 *                                           buffer); f() whenever extra_fd (e.g. the buffer
 *                                           socket, amplink_buffers.h) may be readable;
 *                                           heartbeats; returns the exit status (0: the host
 *                                           hung up)
 *
 * Exit status on errors: 2 for a bad setup, 3 when the host breaks the ring protocol.
 * Single-threaded; no allocation.
 */
#ifndef AMPLINK_RPMSG_H
#define AMPLINK_RPMSG_H

#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef AMPLINK_FW_NAME
#define AMPLINK_FW_NAME "amplink_fw"
#endif

#define FW_RSC_ADDR_ANY 0xFFFFFFFFu
#define RSC_TRACE 2
#define RSC_VDEV 3
#define VIRTIO_ID_RPMSG 7
#define VIRTIO_RPMSG_F_NS 0
#define VIRTIO_CONFIG_S_DRIVER_OK 4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define AMPLINK_NUM_BUFS 64
#define AMPLINK_RING_ALIGN 4096
#define AMPLINK_TRACE_LEN 1024
#define RPMSG_HDR_SIZE 16
#define RPMSG_NS_ADDR 53
#define RPMSG_NS_SIZE 40
#define AMPLINK_DRIVER_OK_TIMEOUT_MS 20000

struct fw_rsc_trace { uint32_t type, da, len, reserved; char name[32]; } __attribute__((packed));
struct fw_rsc_vring { uint32_t da, align, num, notifyid, pa; } __attribute__((packed));
struct fw_rsc_vdev {
    uint32_t type, id, notifyid, dfeatures, gfeatures, config_len;
    uint8_t status, num_of_vrings, reserved[2];
    struct fw_rsc_vring vring[2];
} __attribute__((packed));

#ifndef AMPLINK_CUSTOM_RESOURCE_TABLE
struct resource_table {
    uint32_t ver, num, reserved[2];
    uint32_t offset[2];
    struct fw_rsc_trace trace;
    struct fw_rsc_vdev vdev;
} __attribute__((packed));

__attribute__((section(".resource_table"), used))
const struct resource_table resource_table = {
    .ver = 1,
    .num = 2,
    .offset = {offsetof(struct resource_table, trace), offsetof(struct resource_table, vdev)},
    .trace = {RSC_TRACE, FW_RSC_ADDR_ANY, AMPLINK_TRACE_LEN, 0, "trace0"},
    .vdev = {RSC_VDEV, VIRTIO_ID_RPMSG, 0, 1u << VIRTIO_RPMSG_F_NS, 0, 0, 0, 2, {0, 0},
             {{FW_RSC_ADDR_ANY, AMPLINK_RING_ALIGN, AMPLINK_NUM_BUFS, FW_RSC_ADDR_ANY, 0},
              {FW_RSC_ADDR_ANY, AMPLINK_RING_ALIGN, AMPLINK_NUM_BUFS, FW_RSC_ADDR_ANY, 0}}},
};
#endif

static uint8_t *shm;
static uint64_t shm_size, da_base;
static int kick_rx = -1, kick_tx = -1, lifeline = -1, poll_mode;
static long watchdog_ms;
static uint64_t trace_off;
static uint32_t trace_len;
static uint32_t amplink_gfeatures;
static unsigned long small_buffers; /* receive buffers too small for a message */

static void die(int status, const char *what)
{
    fprintf(stderr, AMPLINK_FW_NAME ": %s\n", what);
    exit(status);
}

static long env_long(const char *key, long min, long max)
{
    const char *text = getenv(key);
    char *end;
    long value;

    if (!text)
        die(2, "an AMPLINK_* variable is missing: start me from an amplink host");
    value = strtol(text, &end, 0);
    if (*text == '\0' || *end != '\0' || value < min || value > max)
        die(2, "an AMPLINK_* variable is out of range");
    return value;
}

/* Is [off, off + len) inside the shared memory? (overflow-safe) */
static int in_shm(uint64_t off, uint64_t len)
{
    return off <= shm_size && len <= shm_size - off;
}

/* The offset of device range [da, da + len), or die: the host wrote it. */
static uint64_t da_to_off(uint64_t da, uint64_t len)
{
    if (da < da_base || !in_shm(da - da_base, len))
        die(3, "a device address is outside the shared memory");
    return da - da_base;
}

static uint32_t rd32(uint64_t off) { uint32_t v; memcpy(&v, shm + off, 4); return v; }
static void wr32(uint64_t off, uint32_t v) { memcpy(shm + off, &v, 4); }
/* 16-bit ring fields are accessed atomically: vring_init checks they are aligned. */
static uint16_t load16(uint64_t off) { return __atomic_load_n((uint16_t *)(shm + off), __ATOMIC_ACQUIRE); }
static void store16(uint64_t off, uint16_t v) { __atomic_store_n((uint16_t *)(shm + off), v, __ATOMIC_RELEASE); }

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- one split vring, device side (single-descriptor buffers, as rpmsg uses) ---- */
struct vring {
    uint64_t desc, avail, used; /* offsets in shm */
    uint32_t num;
    uint16_t last_avail, used_idx;
};

static void vring_init(struct vring *v, uint64_t entry, int index)
{
    uint64_t at = entry + 4 + 24 + 20 * (uint64_t)index; /* type word, vdev header */
    uint32_t da = rd32(at), align = rd32(at + 4), num = rd32(at + 8);
    uint64_t used_at, size;

    if (num == 0 || num > 32768 || (num & (num - 1)) || align == 0 || (align & (align - 1)))
        die(3, "a vring has a bad size or alignment");
    used_at = (16ull * num + 2ull * (3 + num) + align - 1) & ~(uint64_t)(align - 1);
    size = used_at + 6 + 8ull * num;
    v->desc = da_to_off(da, size);
    /* The descriptor table must be 16-byte aligned (virtio); then the avail ring is, and
       the used ring is at least 2-byte aligned: load16/store16 stay aligned (shm is a
       page-aligned mapping, so offsets decide the alignment). */
    if (da % 16 || v->desc % 16)
        die(3, "a vring address is not 16-byte aligned");
    v->avail = v->desc + 16ull * num;
    v->used = v->desc + used_at;
    v->num = num;
    v->last_avail = v->used_idx = 0;
}

/* Take the next buffer the driver made available: its head, offset and length. */
static int vring_pop(struct vring *v, uint16_t *head, uint64_t *off, uint32_t *len)
{
    uint16_t idx = load16(v->avail + 2), id;
    uint64_t addr;

    if (idx == v->last_avail)
        return 0;
    if ((uint16_t)(idx - v->last_avail) > v->num)
        die(3, "avail.idx jumped by more than the ring size");
    id = load16(v->avail + 4 + 2ull * (v->last_avail % v->num));
    if (id >= v->num)
        die(3, "an avail entry names a descriptor outside the ring");
    memcpy(&addr, shm + v->desc + 16ull * id, 8);
    *len = rd32(v->desc + 16ull * id + 8);
    *off = da_to_off(addr, *len);
    *head = id;
    v->last_avail++;
    return 1;
}

/* Give a buffer back; kick the driver unless it asked not to be interrupted. */
static void vring_push(struct vring *v, uint16_t head, uint32_t len)
{
    uint64_t elem = v->used + 4 + 8ull * (v->used_idx % v->num);
    static const uint64_t one = 1;

    wr32(elem, head);
    wr32(elem + 4, len);
    store16(v->used + 2, ++v->used_idx);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!(load16(v->avail) & VRING_AVAIL_F_NO_INTERRUPT) && !poll_mode)
        if (write(kick_tx, &one, sizeof one) < 0)
            die(0, "the host is gone");
}

/* ---- rpmsg ---- */
static struct vring to_host, from_host; /* vring 0 (device -> driver), vring 1 */

static void amplink_trace(const char *text)
{
    size_t n = strlen(text);

    if (trace_len == 0)
        return;
    if (n > trace_len - 1)
        n = trace_len - 1;
    shm[trace_off + n] = 0;
    memcpy(shm + trace_off, text, n);
}

/* Send one message in a buffer of vring 0; 0 if the host has posted none big enough.
   A buffer too small for the message goes back unused (counted and traced), and the
   next one is tried: the message itself is not dropped. */
static int amplink_rpmsg_send(uint32_t src, uint32_t dst, const uint8_t *payload, uint16_t n)
{
    uint16_t head, zero16 = 0;
    uint64_t off;
    uint32_t len, zero = 0, tries;
    char note[96];

    for (tries = 0;; tries++) {
        if (tries == to_host.num || !vring_pop(&to_host, &head, &off, &len))
            return 0;
        if (len >= RPMSG_HDR_SIZE + (uint32_t)n)
            break;
        vring_push(&to_host, head, 0); /* too small for this message: hand it back */
        small_buffers++;
        snprintf(note, sizeof note, AMPLINK_FW_NAME ": %lu receive buffer(s) too small for "
                 "a message returned unused\n", small_buffers);
        amplink_trace(note);
        if (!(small_buffers & (small_buffers - 1))) /* 1, 2, 4, ...: a bounded log */
            fputs(note, stderr);
    }
    wr32(off, src);
    wr32(off + 4, dst);
    wr32(off + 8, zero);
    memcpy(shm + off + 12, &n, 2);
    memcpy(shm + off + 14, &zero16, 2);
    memmove(shm + off + RPMSG_HDR_SIZE, payload, n);
    vring_push(&to_host, head, RPMSG_HDR_SIZE + n);
    return 1;
}

/* Announce `service` at `addr` (if the host accepted the name service); dies if the host
   posted no receive buffer big enough. */
static void amplink_announce(const char *service, uint32_t addr)
{
    uint8_t ns[RPMSG_NS_SIZE];
    uint32_t flags = 0;
    size_t n = strlen(service);

    if (!(amplink_gfeatures & (1u << VIRTIO_RPMSG_F_NS)))
        return;
    memset(ns, 0, sizeof ns);
    memcpy(ns, service, n < 31 ? n : 31);
    memcpy(ns + 32, &addr, 4);
    memcpy(ns + 36, &flags, 4);
    if (!amplink_rpmsg_send(addr, RPMSG_NS_ADDR, ns, sizeof ns))
        die(3, "the host posted no receive buffer big enough for the announcement");
}

/* Environment, memory, resource table; wait for DRIVER_OK; the vrings; "R" on the
   lifeline. 0 when up, 1 if the host went away first (exit 0 then). */
static int amplink_fw_start(void)
{
    long table_off, table_size;
    uint64_t vdev = 0, entry;
    uint32_t num, i;
    int64_t deadline;
    struct stat st;
    int shm_fd;

    signal(SIGPIPE, SIG_IGN); /* a lifeline write after the host hung up: exit 0 */
    shm_size = (uint64_t)env_long("AMPLINK_SHM_SIZE", 1, 1L << 40);
    da_base = (uint64_t)env_long("AMPLINK_DA_BASE", 0, 1L << 40);
    table_off = env_long("AMPLINK_RSC_TABLE", 0, 1L << 40);
    table_size = env_long("AMPLINK_RSC_SIZE", 16, 1L << 20);
    kick_rx = (int)env_long("AMPLINK_KICK_RX_FD", 0, 1 << 20);
    kick_tx = (int)env_long("AMPLINK_KICK_TX_FD", 0, 1 << 20);
    lifeline = (int)env_long("AMPLINK_LIFELINE_FD", 0, 1 << 20);
    poll_mode = getenv("AMPLINK_POLL") && strcmp(getenv("AMPLINK_POLL"), "1") == 0;
    watchdog_ms = getenv("AMPLINK_WATCHDOG_MS") ? env_long("AMPLINK_WATCHDOG_MS", 0, 1L << 30) : 0;
    shm_fd = (int)env_long("AMPLINK_SHM_FD", 0, 1 << 20);
    /* Touching a page past the end of the file would be SIGBUS: check the size first. */
    if (fstat(shm_fd, &st) < 0)
        die(2, "cannot stat the shared memory fd");
    if (st.st_size < 0 || (uint64_t)st.st_size < shm_size)
        die(2, "the shared memory is smaller than AMPLINK_SHM_SIZE");
    shm = mmap(NULL, shm_size, PROT_READ | PROT_WRITE, MAP_SHARED, shm_fd, 0);
    if (shm == MAP_FAILED)
        die(2, "cannot map the shared memory");
    if (!in_shm((uint64_t)table_off, (uint64_t)table_size))
        die(2, "the resource table is outside the shared memory");

    /* The processed table: header, offsets, then the entries we know. */
    if (rd32(table_off) != 1)
        die(3, "resource table version is not 1");
    num = rd32(table_off + 4);
    if (num > ((uint64_t)table_size - 16) / 4)
        die(3, "resource table: too many entries for its size");
    for (i = 0; i < num; i++) {
        uint32_t at = rd32(table_off + 16 + 4ull * i);

        if ((uint64_t)at + 4 > (uint64_t)table_size)
            die(3, "resource table: an entry offset is outside the table");
        entry = table_off + at;
        if (rd32(entry) == RSC_VDEV && !vdev) {
            if ((uint64_t)at + 4 + 24 + 40 > (uint64_t)table_size)
                die(3, "resource table: the vdev entry is truncated");
            if (rd32(entry + 4) == VIRTIO_ID_RPMSG && shm[entry + 4 + 21] == 2)
                vdev = entry;
        } else if (rd32(entry) == RSC_TRACE && !trace_len) {
            if ((uint64_t)at + 4 + 44 > (uint64_t)table_size)
                die(3, "resource table: the trace entry is truncated");
            trace_len = rd32(entry + 8);
            trace_off = da_to_off(rd32(entry + 4), trace_len);
        }
    }
    if (!vdev)
        die(3, "resource table: no rpmsg vdev with two vrings");
    amplink_trace(AMPLINK_FW_NAME ": waiting for DRIVER_OK\n");

    /* Never touch the vrings before the host set DRIVER_OK. */
    deadline = now_ms() + AMPLINK_DRIVER_OK_TIMEOUT_MS;
    while (!(__atomic_load_n(shm + vdev + 4 + 20, __ATOMIC_ACQUIRE) & VIRTIO_CONFIG_S_DRIVER_OK)) {
        struct pollfd pfd[2] = {{kick_rx, POLLIN, 0}, {lifeline, POLLIN, 0}};
        uint64_t kicks;

        if (now_ms() > deadline)
            die(2, "the host did not set DRIVER_OK");
        if (poll(pfd, 2, 10) > 0) {
            if (pfd[1].revents)
                return 1; /* the host went away before we came up */
            if (read(kick_rx, &kicks, sizeof kicks) < 0) { /* nothing: it was not a kick */ }
        }
    }
    amplink_gfeatures = rd32(vdev + 4 + 12);
    if (amplink_gfeatures & ~rd32(vdev + 4 + 8))
        die(3, "the host accepted features we never offered");
    vring_init(&to_host, vdev, 0);
    vring_init(&from_host, vdev, 1);
    if (write(lifeline, "R", 1) != 1)
        return 1;
    return 0;
}

typedef int (*amplink_rx_handler)(uint32_t src, uint32_t dst, const uint8_t *payload,
                                  uint16_t len);

/* Serve messages until the host hangs up (returns 0). */
static int amplink_fw_run(amplink_rx_handler handler, int extra_fd, int (*on_extra)(void))
{
    /* heartbeats every quarter period, but at least 1 ms apart: no busy loop */
    int64_t feed_period = watchdog_ms >= 4 ? watchdog_ms / 4 : 1, next_feed = now_ms();
    int have_msg = 0;
    uint16_t mhead = 0;
    uint64_t moff = 0;
    uint32_t mlen = 0;

    for (;;) {
        /* lifeline, the extra fd (poll ignores a negative one), the host's kicks */
        struct pollfd pfd[3] = {{lifeline, POLLIN, 0}, {extra_fd, POLLIN, 0}, {kick_rx, POLLIN, 0}};
        int timeout = poll_mode ? 1 : 100, progress = 1;
        uint64_t kicks;

        /* What the extra fd brought first (e.g. attachments named by the messages). */
        if (on_extra && extra_fd >= 0 && on_extra() < 0)
            extra_fd = -1; /* closed: the lifeline says the rest */
        /* Consume kicks before draining: a kick that comes later wakes the poll below. */
        if (!poll_mode && read(kick_rx, &kicks, sizeof kicks) < 0) { /* none pending */ }
        while (progress) {
            uint32_t src, dst;
            uint16_t plen;

            progress = 0;
            if (!have_msg)
                have_msg = vring_pop(&from_host, &mhead, &moff, &mlen);
            if (!have_msg)
                break;
            if (mlen < RPMSG_HDR_SIZE)
                die(3, "a message buffer is shorter than the rpmsg header");
            src = rd32(moff);
            dst = rd32(moff + 4);
            memcpy(&plen, shm + moff + 12, 2);
            if (plen > mlen - RPMSG_HDR_SIZE)
                die(3, "an rpmsg header's length exceeds its buffer");
            /* Not handled yet (e.g. no free buffer of vring 0 for the answer): keep the
               message until the host posts one (it kicks). */
            if (!handler(src, dst, shm + moff + RPMSG_HDR_SIZE, plen))
                break;
            vring_push(&from_host, mhead, mlen);
            have_msg = 0;
            progress = 1;
        }
        if (watchdog_ms > 0) {
            int64_t now = now_ms();

            if (now >= next_feed) {
                if (write(lifeline, "H", 1) != 1)
                    return 0;
                next_feed = now + feed_period;
            }
            if (next_feed - now < timeout)
                timeout = (int)(next_feed - now);
        }
        if (poll(pfd, poll_mode ? 2 : 3, timeout) > 0 && pfd[0].revents) {
            char byte;

            if (read(lifeline, &byte, 1) <= 0)
                return 0; /* the host hung up: stop */
        }
    }
}

#endif /* AMPLINK_RPMSG_H */
