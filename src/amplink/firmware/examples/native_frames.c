/*
 * native_frames.c - native C firmware that takes buffers by reference and processes them
 * in place: the C twin of amplink.firmware.examples.frames (service "rpmsg-frames").
 *
 * The host attaches its buffers through the buffer socket (AMPLINK_BUFFERS_FD,
 * amplink_buffers.h: each one is mapped here once, at the device address the host gave)
 * and hands them over with 24-byte SEND records (docs/large-data.md). For each SEND this
 * firmware resolves the reference (amplink_buf_ref: a pointer inside an attachment, or
 * NULL and a fault reported to the host), works on the bytes where they are, and answers
 * with a DONE record; the DONEs of one message travel together in one answer.
 *
 * Mode (the first argument):
 *   invert (the default)  every byte of the range becomes 255 - byte (a SEND without
 *                         write access is given back untouched)
 *   touch                 read the first byte only (the cost of a hand-over)
 *   sum                   the byte sum of the range (32 bits, little-endian) is written
 *                         over its first 4 bytes (with write access and at least 4 bytes)
 *
 * Build: gcc -O2 -Wall -o native_frames native_frames.c   (the two headers beside it)
 * Run:   SimRemoteProc("./native_frames", args=["invert"]); then
 *        BufferChannel(rproc.link.open_channel("rpmsg-frames"), port=rproc.buffers)
 */
#define AMPLINK_FW_NAME "native_frames"
#include "amplink_rpmsg.h"
#include "amplink_buffers.h"

#define FRAMES_ADDR 1024
#define SERVICE "rpmsg-frames"
#define MAX_PAYLOAD 496 /* the rpmsg MTU with 512-byte buffers */
#define REC_SIZE ((uint16_t)sizeof(struct amplink_handover_record))

enum { MODE_INVERT, MODE_TOUCH, MODE_SUM };
static int mode = MODE_INVERT;
static uint8_t reply[MAX_PAYLOAD];
static uint16_t reply_len;
static int reply_pending; /* DONEs made, waiting for a buffer of the host */
static unsigned long frames, refused;

static void process(uint8_t *bytes, const struct amplink_handover_record *r)
{
    volatile uint8_t first;
    uint64_t i;
    uint32_t sum = 0;

    if (mode == MODE_TOUCH || !(r->access & 2)) {
        if (r->length)
            first = bytes[0];
        (void)first;
        return;
    }
    if (mode == MODE_INVERT) {
        for (i = 0; i < r->length; i++)
            bytes[i] = (uint8_t)(255 - bytes[i]);
        return;
    }
    for (i = 0; i < r->length; i++)
        sum += bytes[i];
    if (r->length >= 4)
        memcpy(bytes, &sum, 4);
}

/* One message of SEND records: each buffer processed in place, the DONEs answered in one
   message. Returns 0 (the same message again later) if the host posted no buffer for the
   answer yet: the DONEs made are kept, nothing is processed twice. */
static int on_message(uint32_t src, uint32_t dst, const uint8_t *payload, uint16_t len)
{
    char note[96];

    if (dst != FRAMES_ADDR)
        return 1;
    if (!reply_pending) {
        uint16_t at;

        if (len == 0)
            return 1; /* the host's hello */
        if (len % REC_SIZE) {
            refused++;
            return 1; /* not whole records: refused whole */
        }
        reply_len = 0;
        for (at = 0; at < len; at += REC_SIZE) {
            struct amplink_handover_record r;
            struct amplink_handover_record d;
            uint8_t *bytes;

            memcpy(&r, payload + at, REC_SIZE);
            if (r.version != AMPLINK_HANDOVER_VERSION || r.type != AMPLINK_REC_SEND ||
                r.id == 0 || r.length == 0) {
                refused++;
                continue;
            }
            bytes = amplink_buf_ref(&r); /* NULL: the host was told (an IOMMU fault) */
            if (!bytes) {
                refused++;
                continue;
            }
            process(bytes, &r);
            frames++;
            d = amplink_done(&r);
            memcpy(reply + reply_len, &d, REC_SIZE);
            reply_len += REC_SIZE;
        }
        if (!reply_len)
            return 1;
        reply_pending = 1;
        snprintf(note, sizeof note, "native_frames: %lu frame(s), %lu refused\n", frames,
                 refused);
        amplink_trace(note);
    }
    if (!amplink_rpmsg_send(FRAMES_ADDR, src, reply, reply_len))
        return 0;
    reply_pending = 0;
    return 1;
}

int main(int argc, char **argv)
{
    const char *fd = getenv("AMPLINK_BUFFERS_FD");

    if (argc > 1 && strcmp(argv[1], "touch") == 0)
        mode = MODE_TOUCH;
    else if (argc > 1 && strcmp(argv[1], "sum") == 0)
        mode = MODE_SUM;
    else if (argc > 1 && strcmp(argv[1], "invert") != 0)
        die(2, "unknown mode: invert, touch or sum");
    if (!fd)
        die(2, "no AMPLINK_BUFFERS_FD: the host attached no buffer socket");
    amplink_buffers_fd = (int)env_long("AMPLINK_BUFFERS_FD", 0, 1 << 20);
    if (amplink_fw_start())
        return 0; /* the host went away before we came up */
    amplink_announce(SERVICE, FRAMES_ADDR);
    amplink_trace("native_frames: up, serving rpmsg-frames at 0x400\n");
    return amplink_fw_run(on_message, amplink_buffers_fd, amplink_buffers_poll);
}
