/* amplink_buffers.h: shared buffers for C firmware of amplink's simulated processors.
 *
 * Header only. The host attaches buffers through the socket whose fd is in
 * AMPLINK_BUFFERS_FD (see amplink/platforms/sim_abi.py); buffers are handed over on an
 * rpmsg endpoint with 24-byte records (docs/large-data.md). Call amplink_buffers_poll()
 * whenever the socket is readable (add its fd to your poll set): it maps what is attached,
 * unmaps what is detached and answers the host. amplink_dma() and amplink_buf_ref() give a
 * pointer only inside an attachment, with a direction it allows; otherwise they return
 * NULL and report the fault to the host (its IOMMU counts it).
 *
 * Everything is little-endian and packed. Single-threaded; no allocation.
 */
#ifndef AMPLINK_BUFFERS_H
#define AMPLINK_BUFFERS_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define AMPLINK_ATTACH_OP_ATTACH 1
#define AMPLINK_ATTACH_OP_DETACH 2
#define AMPLINK_ATTACH_OP_ACK 3
#define AMPLINK_ATTACH_OP_FAULT 4
#define AMPLINK_HANDOVER_VERSION 1
#define AMPLINK_REC_SEND 1
#define AMPLINK_REC_DONE 2
#define AMPLINK_MAX_ATTACHMENTS 64

struct amplink_attach_msg {
	char magic[4]; /* "AMAT" */
	uint8_t version, op, access, status;
	uint32_t id, seq;
	uint64_t da, offset, length;
} __attribute__((packed));

struct amplink_handover_record {
	uint8_t version, type, access, flags;
	uint32_t id;
	uint64_t offset, length;
} __attribute__((packed));

struct amplink_attachment {
	uint32_t id;
	uint8_t access, used;
	uint64_t da, length;
	uint8_t *map;   /* the page-aligned mapping */
	size_t map_len;
	uint8_t *bytes; /* the attached bytes (map + offset within the page) */
};

static struct amplink_attachment amplink_att[AMPLINK_MAX_ATTACHMENTS];
static int amplink_buffers_fd = -1;

static void amplink_buffers_send(uint8_t op, uint32_t id, uint32_t seq, uint8_t status,
				 uint64_t da, uint64_t length, uint8_t access)
{
	struct amplink_attach_msg m = { {'A', 'M', 'A', 'T'}, 1, op, access, status, id, seq,
					da, 0, length };
	(void)!send(amplink_buffers_fd, &m, sizeof m, MSG_NOSIGNAL);
}

static uint8_t amplink_attach_one(const struct amplink_attach_msg *m, int fd)
{
	struct stat st;
	long page = sysconf(_SC_PAGESIZE);
	int slot = -1;
	for (int i = 0; i < AMPLINK_MAX_ATTACHMENTS; i++)
		if (!amplink_att[i].used) { slot = i; break; }
	if (slot < 0) return ENOSPC;
	if (fd < 0 || m->length == 0 || m->access < 1 || m->access > 3 || fstat(fd, &st) ||
	    !S_ISREG(st.st_mode) || m->offset > (uint64_t)st.st_size ||
	    m->length > (uint64_t)st.st_size - m->offset)
		return EINVAL;
	uint64_t base = m->offset - m->offset % (uint64_t)page, delta = m->offset - base;
	int prot = PROT_READ | ((m->access & 2) ? PROT_WRITE : 0);
	void *p = mmap(NULL, delta + m->length, prot, MAP_SHARED, fd, (off_t)base);
	if (p == MAP_FAILED) return (uint8_t)errno;
	amplink_att[slot] = (struct amplink_attachment){ m->id, m->access, 1, m->da, m->length,
							  p, delta + m->length, (uint8_t *)p + delta };
	return 0;
}

static uint8_t amplink_detach_one(uint32_t id)
{
	for (int i = 0; i < AMPLINK_MAX_ATTACHMENTS; i++)
		if (amplink_att[i].used && amplink_att[i].id == id) {
			munmap(amplink_att[i].map, amplink_att[i].map_len);
			amplink_att[i].used = 0;
			return 0;
		}
	return ENOENT;
}

/* Handle every pending message of the buffer socket; -1 when the host hung up. */
static int amplink_buffers_poll(void)
{
	for (;;) {
		struct amplink_attach_msg m;
		char control[CMSG_SPACE(4 * sizeof(int))];
		struct iovec iov = { &m, sizeof m };
		struct msghdr msg = { 0 };
		msg.msg_iov = &iov; msg.msg_iovlen = 1;
		msg.msg_control = control; msg.msg_controllen = sizeof control;
		ssize_t n = recvmsg(amplink_buffers_fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
		if (n == 0) return -1;
		int fds[4], nfds = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
				for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int) && nfds < 4; i++)
					memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		if (n == sizeof m && !memcmp(m.magic, "AMAT", 4) && m.version == 1) {
			uint8_t status = EINVAL;
			if (m.op == AMPLINK_ATTACH_OP_ATTACH)
				status = amplink_attach_one(&m, nfds == 1 ? fds[0] : -1);
			else if (m.op == AMPLINK_ATTACH_OP_DETACH)
				status = amplink_detach_one(m.id);
			if (m.op == AMPLINK_ATTACH_OP_ATTACH || m.op == AMPLINK_ATTACH_OP_DETACH)
				amplink_buffers_send(AMPLINK_ATTACH_OP_ACK, m.id, m.seq, status, 0, 0, 0);
		}
		for (int i = 0; i < nfds; i++) close(fds[i]); /* the mapping keeps the memory */
	}
}

/* Bytes [da, da + len) of an attachment that allows `access` (1 read, 2 write, 3 both),
 * else NULL and a fault reported to the host. */
static uint8_t *amplink_dma(uint64_t da, uint64_t len, uint8_t access)
{
	for (int i = 0; i < AMPLINK_MAX_ATTACHMENTS; i++) {
		struct amplink_attachment *a = &amplink_att[i];
		if (a->used && da >= a->da && da - a->da < a->length && len &&
		    len <= a->length - (da - a->da) && access >= 1 && access <= 3 &&
		    !(access & ~a->access))
			return a->bytes + (da - a->da);
	}
	amplink_buffers_send(AMPLINK_ATTACH_OP_FAULT, 0, 0, 0, da, len, access);
	return NULL;
}

/* The bytes a SEND record names (attachment id, offset, length), checked like amplink_dma. */
static uint8_t *amplink_buf_ref(const struct amplink_handover_record *r)
{
	for (int i = 0; i < AMPLINK_MAX_ATTACHMENTS; i++) {
		struct amplink_attachment *a = &amplink_att[i];
		if (a->used && a->id == r->id) {
			if (r->offset > a->length || r->length > a->length - r->offset)
				break;
			return amplink_dma(a->da + r->offset, r->length ? r->length : 1, r->access);
		}
	}
	amplink_buffers_send(AMPLINK_ATTACH_OP_FAULT, 0, 0, 0, UINT64_MAX, 1, 1);
	return NULL;
}

/* A DONE record for a SEND record (the whole range received). */
static struct amplink_handover_record amplink_done(const struct amplink_handover_record *r)
{
	struct amplink_handover_record d = { AMPLINK_HANDOVER_VERSION, AMPLINK_REC_DONE, 0, 0,
					     r->id, r->offset, r->length };
	return d;
}

#endif /* AMPLINK_BUFFERS_H */
