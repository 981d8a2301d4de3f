/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfio-nvme controller layer: BAR0 mapped from the VFIO device fd, the
 * controller reset and enabled with an admin queue pair in the driver's own
 * DMA memory, Identify, one I/O queue pair, polled I/O with PRP lists.
 * No interrupts: every wait polls with a deadline, so a dead controller or a
 * DMA fault ends in an error line, never a hang.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uapi.h"
#include "vn.h"

#define REG_CAP 0x00
#define REG_VS 0x08
#define REG_CC 0x14
#define REG_CSTS 0x1c
#define REG_AQA 0x24
#define REG_ASQ 0x28
#define REG_ACQ 0x30
#define REG_DBS 0x1000

#define CC_EN 1u
#define CC_SHN_NORMAL (1u << 14)
#define CC_IOSQES (6u << 16)
#define CC_IOCQES (4u << 20)
#define CSTS_RDY 1u
#define CSTS_CFS 2u
#define CSTS_SHST_MASK (3u << 2)
#define CSTS_SHST_DONE (2u << 2)

#define ADM_DELETE_SQ 0x00
#define ADM_CREATE_SQ 0x01
#define ADM_DELETE_CQ 0x04
#define ADM_CREATE_CQ 0x05
#define ADM_IDENTIFY 0x06
#define IO_WRITE 0x01
#define IO_READ 0x02

#define PG 4096u
#define AQ_SIZE 16u

struct sqe {
    uint32_t cdw0, nsid, rsvd2, rsvd3;
    uint64_t mptr, prp1, prp2;
    uint32_t cdw10, cdw11, cdw12, cdw13, cdw14, cdw15;
};

struct cqe {
    uint32_t result, rsvd;
    uint16_t sqhd, sqid, cid, status; /* status bit 0 is the phase */
};

/* BAR0 is device memory: every access must reach it (volatile), in order. */
static inline uint32_t rd32(struct vn_ctrl *c, uint32_t off)
{
    uint32_t v = ~0u;

    if (c->bar) {
        return *(volatile uint32_t *)(c->bar + off); /* device memory */
    }
    if (pread(c->bar_fd, &v, 4, c->bar_off + off) != 4) {
        return ~0u;
    }
    return v;
}

static inline void wr32(struct vn_ctrl *c, uint32_t off, uint32_t v)
{
    __sync_synchronize(); /* queue entries visible before the doorbell */
    if (c->bar) {
        *(volatile uint32_t *)(c->bar + off) = v; /* device memory */
    } else if (pwrite(c->bar_fd, &v, 4, c->bar_off + off) != 4) {
        fprintf(stderr, "vfio-nvme: BAR0 write at 0x%x: %s\n", off, strerror(errno));
    }
}

static uint64_t rd64(struct vn_ctrl *c, uint32_t off)
{
    return rd32(c, off) | (uint64_t)rd32(c, off + 4) << 32;
}

static void wr64(struct vn_ctrl *c, uint32_t off, uint64_t v)
{
    wr32(c, off, (uint32_t)v);
    wr32(c, off + 4, (uint32_t)(v >> 32));
}

static void sq_db(struct vn_ctrl *c, int qid, uint32_t tail)
{
    wr32(c, REG_DBS + (2 * qid) * c->dstrd, tail);
}

static void cq_db(struct vn_ctrl *c, int qid, uint32_t head)
{
    wr32(c, REG_DBS + (2 * qid + 1) * c->dstrd, head);
}

/* Wait for (CSTS & mask) == want; false on timeout. */
static bool wait_csts(struct vn_ctrl *c, uint32_t mask, uint32_t want)
{
    uint64_t end = vn_now_ns() + (uint64_t)c->timeout_ms * 1000000;

    while ((rd32(c, REG_CSTS) & mask) != want) {
        if (vn_now_ns() > end) {
            return false;
        }
        usleep(100);
    }
    return true;
}

static void pci_command(struct vn_dma *d, bool master)
{
    struct vfio_region_info ri = { .argsz = sizeof(ri),
                                   .index = VFIO_PCI_CONFIG_REGION_INDEX };
    uint16_t cmd;

    if (ioctl(d->dev_fd, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0 ||
        pread(d->dev_fd, &cmd, 2, ri.offset + 4) != 2) {
        vn_fail("pci", "cannot read the PCI command register: %s", strerror(errno));
    }
    cmd = master ? (cmd | 0x6) : (cmd & ~0x4); /* memory space + bus master */
    if (pwrite(d->dev_fd, &cmd, 2, ri.offset + 4) != 2) {
        vn_fail("pci", "cannot write the PCI command register: %s", strerror(errno));
    }
}

void vn_ctrl_open(struct vn_ctrl *c, struct vn_dma *d, uint32_t qd)
{
    struct vfio_region_info ri = { .argsz = sizeof(ri),
                                   .index = VFIO_PCI_BAR0_REGION_INDEX };
    uint32_t timeout_ms = c->timeout_ms;
    long hpg = sysconf(_SC_PAGESIZE);
    uint64_t cap;
    size_t sq_bytes, cq_bytes, off = 0;
    void *p;

    memset(c, 0, sizeof(*c));
    c->timeout_ms = timeout_ms;
    c->dma = d;
    if (ioctl(d->dev_fd, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0) {
        vn_fail("bar", "VFIO_DEVICE_GET_REGION_INFO BAR0: %s", strerror(errno));
    }
    if (ri.size < 0x2000 || !(ri.flags & VFIO_REGION_INFO_FLAG_READ) ||
        !(ri.flags & VFIO_REGION_INFO_FLAG_WRITE)) {
        vn_fail("bar", "BAR0 of %s is not a usable register window (flags 0x%x, %llu "
                "bytes)", d->pci, ri.flags, (unsigned long long)ri.size);
    }
    c->bar_fd = d->dev_fd;
    c->bar_off = ri.offset;
    c->bar_len = ri.size;
    /*
     * mmap when VFIO allows it; else (a BAR smaller than the kernel's page that
     * shares it, e.g. 16 KiB BARs under 64 KiB pages) pread/pwrite the region.
     */
    p = (ri.flags & VFIO_REGION_INFO_FLAG_MMAP) ?
        mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, d->dev_fd, ri.offset) :
        MAP_FAILED;
    c->bar = p == MAP_FAILED ? NULL : p;
    pci_command(d, true);

    cap = rd64(c, REG_CAP);
    if (cap == ~0ULL) {
        vn_fail("bar", "BAR0 reads all ones: the device does not answer");
    }
    c->mqes = (uint32_t)(cap & 0xffff) + 1;
    c->dstrd = 4u << ((cap >> 32) & 0xf);
    if (!((cap >> 37) & 1)) {
        vn_fail("controller", "CAP 0x%llx: no NVM command set", (unsigned long long)cap);
    }
    if ((cap >> 48) & 0xf) {
        vn_fail("controller", "CAP.MPSMIN %u: the controller has no 4 KiB pages",
                (unsigned)((cap >> 48) & 0xf));
    }
    c->aq_size = AQ_SIZE;
    c->ioq_size = qd + 1 < 2 ? 2 : qd + 1;
    if (c->ioq_size > c->mqes) {
        vn_fail("args", "qd=%u needs %u queue entries, the controller allows %u", qd,
                c->ioq_size, c->mqes);
    }

    /* One DMA region: admin SQ/CQ, I/O SQ/CQ, identify page, qd PRP lists. */
    sq_bytes = (c->ioq_size * 64 + PG - 1) / PG * PG;
    cq_bytes = (c->ioq_size * 16 + PG - 1) / PG * PG;
    c->ctl.len = 3 * PG + sq_bytes + cq_bytes + (size_t)qd * PG;
    c->ctl.len = (c->ctl.len + hpg - 1) / hpg * hpg;
    c->ctl.va = mmap(NULL, c->ctl.len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (c->ctl.va == MAP_FAILED) {
        vn_fail("memory", "cannot allocate %zu bytes of queue memory", c->ctl.len);
    }
    memset(c->ctl.va, 0, c->ctl.len);
    vn_dma_map(d, &c->ctl);
#define CARVE(ptr_, iova_, n_) do { \
        c->ptr_ = (uint8_t *)c->ctl.va + off; c->iova_ = c->ctl.iova + off; off += (n_); \
    } while (0)
    CARVE(asq, asq_iova, PG);
    CARVE(acq, acq_iova, PG);
    CARVE(iosq, iosq_iova, sq_bytes);
    CARVE(iocq, iocq_iova, cq_bytes);
    CARVE(ident, ident_iova, PG);
    CARVE(prp, prp_iova, (size_t)qd * PG);
#undef CARVE

    /* Reset, then enable with our admin queues. */
    wr32(c, REG_CC, rd32(c, REG_CC) & ~CC_EN);
    if (!wait_csts(c, CSTS_RDY, 0)) {
        vn_fail("reset", "CSTS.RDY still 1 %u ms after CC.EN=0 (CSTS 0x%x)",
                c->timeout_ms, rd32(c, REG_CSTS));
    }
    wr32(c, REG_AQA, (c->aq_size - 1) << 16 | (c->aq_size - 1));
    wr64(c, REG_ASQ, c->asq_iova);
    wr64(c, REG_ACQ, c->acq_iova);
    c->acq_phase = c->iocq_phase = 1;
    wr32(c, REG_CC, CC_EN | CC_IOSQES | CC_IOCQES);
    c->enabled = true;
    if (!wait_csts(c, CSTS_RDY | CSTS_CFS, CSTS_RDY)) {
        vn_fail("enable", "controller not ready %u ms after CC.EN=1 (CSTS 0x%x%s)",
                c->timeout_ms, rd32(c, REG_CSTS),
                rd32(c, REG_CSTS) & CSTS_CFS ? ", fatal status" : "");
    }
}

static const char *status_name(unsigned sct, unsigned sc)
{
    if (sct == 0) {
        switch (sc) {
        case 0x02: return "invalid field";
        case 0x04: return "data transfer error";
        case 0x06: return "internal error";
        case 0x80: return "LBA out of range";
        }
    }
    if (sct == 2) {
        switch (sc) {
        case 0x80:
            return "write fault";
        case 0x81:
            return "unrecovered read error";
        }
        return "media or data integrity error";
    }
    return "error";
}

/* One admin command, waited for; fails the run on error or timeout. */
static uint32_t admin(struct vn_ctrl *c, struct sqe *cmd, const char *what)
{
    struct sqe *slot = (struct sqe *)c->asq + c->asq_tail;
    /* the controller writes completions by DMA: read them fresh (volatile) */
    volatile struct cqe *e = (struct cqe *)c->acq + c->acq_head;
    uint64_t end = vn_now_ns() + (uint64_t)c->timeout_ms * 1000000;
    uint16_t cid = c->next_cid++;
    uint32_t result;
    unsigned st;

    cmd->cdw0 |= (uint32_t)cid << 16;
    *slot = *cmd;
    c->asq_tail = (c->asq_tail + 1) % c->aq_size;
    sq_db(c, 0, c->asq_tail);
    while ((e->status & 1) != c->acq_phase) {
        uint32_t csts = rd32(c, REG_CSTS);
        /*
         * CFS: the controller gave up, e.g. it could not fetch the command by
         * DMA; no completion will come, so say so now rather than time out.
         */
        if (csts & CSTS_CFS) {
            vn_fail("admin", "%s: the controller reports a fatal status (CSTS 0x%x): "
                    "it could not fetch the command or post its completion by DMA",
                    what, csts);
        }
        if (vn_now_ns() > end) {
            vn_fail("admin", "%s: no completion within %u ms (CSTS 0x%x)", what,
                    c->timeout_ms, csts);
        }
        usleep(50);
    }
    __sync_synchronize();
    st = e->status >> 1;
    result = e->result;
    if (++c->acq_head == c->aq_size) {
        c->acq_head = 0;
        c->acq_phase ^= 1;
    }
    cq_db(c, 0, c->acq_head);
    if (st & 0x7ff) {
        vn_fail("admin", "%s: status sct 0x%x sc 0x%x (%s)", what, (st >> 8) & 7,
                st & 0xff, status_name((st >> 8) & 7, st & 0xff));
    }
    return result;
}

static void copy_str(char *dst, const uint8_t *src, size_t n)
{
    memcpy(dst, src, n);
    dst[n] = 0;
    while (n && (dst[n - 1] == ' ' || dst[n - 1] == 0)) {
        dst[--n] = 0;
    }
}

void vn_ctrl_identify(struct vn_ctrl *c)
{
    struct sqe cmd = { .cdw0 = ADM_IDENTIFY, .prp1 = c->ident_iova, .cdw10 = 1 };
    uint8_t *id = c->ident;
    uint32_t lbaf;

    admin(c, &cmd, "Identify controller");
    c->vid = id[0] | id[1] << 8;
    copy_str(c->serial, id + 4, 20);
    copy_str(c->model, id + 24, 40);
    copy_str(c->fw, id + 64, 8);
    c->mdts_bytes = id[77] ? (1u << id[77]) * PG : 0;
    memcpy(&c->nn, id + 516, 4);
    if (c->nn < 1) {
        vn_fail("identify", "the controller has no namespace (NN 0)");
    }
    memset(id, 0, PG);
    cmd = (struct sqe){ .cdw0 = ADM_IDENTIFY, .nsid = 1, .prp1 = c->ident_iova };
    admin(c, &cmd, "Identify namespace 1");
    memcpy(&c->nsze, id, 8);
    memcpy(&lbaf, id + 128 + 4 * (id[26] & 0xf), 4);
    c->lba_size = 1u << ((lbaf >> 16) & 0xff);
    if (!c->nsze || c->lba_size < 512 || c->lba_size > PG) {
        vn_fail("identify", "namespace 1: %llu blocks of %u bytes: not usable",
                (unsigned long long)c->nsze, c->lba_size);
    }
}

void vn_ctrl_create_ioq(struct vn_ctrl *c)
{
    struct sqe cq = { .cdw0 = ADM_CREATE_CQ, .prp1 = c->iocq_iova,
                      .cdw10 = (c->ioq_size - 1) << 16 | 1, .cdw11 = 1 };
    struct sqe sq = { .cdw0 = ADM_CREATE_SQ, .prp1 = c->iosq_iova,
                      .cdw10 = (c->ioq_size - 1) << 16 | 1, .cdw11 = 1 << 16 | 1 };

    admin(c, &cq, "Create I/O completion queue 1");
    admin(c, &sq, "Create I/O submission queue 1");
    c->ioq_created = true;
}

/* PRP1/PRP2 for [iova, iova + len), using the slot's list page when needed. */
static void build_prps(struct vn_ctrl *c, struct sqe *s, uint64_t iova, uint32_t len,
                       uint32_t slot)
{
    uint32_t first = PG - (uint32_t)(iova & (PG - 1));
    uint64_t *list = (uint64_t *)(c->prp + (size_t)slot * PG);
    uint64_t next = (iova & ~(uint64_t)(PG - 1)) + PG;

    s->prp1 = iova;
    s->prp2 = 0;
    if (len <= first) {
        return;
    }
    if (len - first <= PG) {
        s->prp2 = next;
        return;
    }
    for (uint32_t i = 0; first + i * PG < len; i++) {
        list[i] = next + (uint64_t)i * PG;
    }
    s->prp2 = c->prp_iova + (uint64_t)slot * PG;
}

int vn_ctrl_io(struct vn_ctrl *c, bool write, uint64_t lba0, uint32_t bs, uint64_t count,
               uint32_t qd, const struct vn_buf *data, uint8_t *state, char *err,
               size_t errlen)
{
    uint32_t lbas = bs / c->lba_size, free_n = qd, inflight = 0;
    uint32_t *free_slots = calloc(qd, sizeof(uint32_t));
    uint64_t *slot_chunk = calloc(qd, sizeof(uint64_t));
    uint64_t next = 0, done = 0, deadline;
    int rc = 0;

    if (!free_slots || !slot_chunk) {
        vn_fail("memory", "out of memory");
    }
    for (uint32_t i = 0; i < qd; i++) {
        free_slots[i] = qd - 1 - i;
    }
    memset(state, VN_NOT_RUN, count);
    deadline = vn_now_ns() + (uint64_t)c->timeout_ms * 1000000;
    while (done < count) {
        bool queued = false;
        volatile struct cqe *e; /* written by the controller's DMA */

        while (!rc && free_n && next < count) {
            uint32_t slot = free_slots[--free_n];
            struct sqe *s = (struct sqe *)c->iosq + c->iosq_tail;
            uint64_t lba = lba0 + next * lbas;

            memset(s, 0, sizeof(*s));
            s->cdw0 = (write ? IO_WRITE : IO_READ) | slot << 16;
            s->nsid = 1;
            build_prps(c, s, data->iova + next * bs, bs, slot);
            s->cdw10 = (uint32_t)lba;
            s->cdw11 = (uint32_t)(lba >> 32);
            s->cdw12 = lbas - 1;
            slot_chunk[slot] = next++;
            c->iosq_tail = (c->iosq_tail + 1) % c->ioq_size;
            inflight++;
            queued = true;
        }
        if (queued) {
            sq_db(c, 1, c->iosq_tail);
        }
        if (!inflight) {
            break; /* an error stopped submission and everything drained */
        }
        e = (struct cqe *)c->iocq + c->iocq_head;
        if ((e->status & 1) != c->iocq_phase) {
            if (vn_now_ns() > deadline) {
                uint32_t csts = rd32(c, REG_CSTS);
                snprintf(err, errlen, "%s: %u commands without completion after %u ms "
                         "(CSTS 0x%x%s)", write ? "write" : "read", inflight,
                         c->timeout_ms, csts, csts & CSTS_CFS ? ", fatal status" : "");
                rc = -1;
                break;
            }
            continue;
        }
        __sync_synchronize();
        {
            unsigned st = e->status >> 1;
            uint16_t slot = e->cid;

            if (slot >= qd) {
                snprintf(err, errlen, "completion for unknown command id %u", slot);
                rc = -1;
                break;
            }
            state[slot_chunk[slot]] = (st & 0x7ff) ? VN_FAILED : VN_DONE;
            if ((st & 0x7ff) && !rc) {
                uint64_t lba = lba0 + slot_chunk[slot] * lbas;
                snprintf(err, errlen, "%s lba %llu (+%u blocks): status sct 0x%x sc 0x%x "
                         "(%s)", write ? "write" : "read", (unsigned long long)lba, lbas,
                         (st >> 8) & 7, st & 0xff, status_name((st >> 8) & 7, st & 0xff));
                rc = -1;
            }
            free_slots[free_n++] = slot;
            inflight--;
            done++;
        }
        if (++c->iocq_head == c->ioq_size) {
            c->iocq_head = 0;
            c->iocq_phase ^= 1;
        }
        cq_db(c, 1, c->iocq_head);
        deadline = vn_now_ns() + (uint64_t)c->timeout_ms * 1000000;
    }
    free(free_slots);
    free(slot_chunk);
    return rc;
}

/* Best effort and bounded: delete the I/O queues, shut down, disable. */
void vn_ctrl_close(struct vn_ctrl *c)
{
    if (!c->bar_len) {
        return;
    }
    if (c->ioq_created) {
        struct sqe sq = { .cdw0 = ADM_DELETE_SQ, .cdw10 = 1 };
        struct sqe cq = { .cdw0 = ADM_DELETE_CQ, .cdw10 = 1 };
        c->ioq_created = false; /* not again if admin() fails */
        admin(c, &sq, "Delete I/O submission queue 1");
        admin(c, &cq, "Delete I/O completion queue 1");
    }
    if (c->enabled) {
        c->enabled = false;
        wr32(c, REG_CC, (rd32(c, REG_CC) & ~(3u << 14)) | CC_SHN_NORMAL);
        if (!wait_csts(c, CSTS_SHST_MASK, CSTS_SHST_DONE)) {
            fprintf(stderr, "vfio-nvme: shutdown not complete after %u ms\n",
                    c->timeout_ms);
        }
        wr32(c, REG_CC, 0);
        if (!wait_csts(c, CSTS_RDY, 0)) {
            fprintf(stderr, "vfio-nvme: CSTS.RDY still 1 after disable\n");
        }
    }
    if (c->dma && c->dma->dev_fd >= 0) {
        pci_command(c->dma, false);
    }
    if (c->bar) {
        munmap((void *)c->bar, c->bar_len);
    }
    c->bar = NULL;
    c->bar_len = 0;
}
