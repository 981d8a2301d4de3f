/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfio-nvme I/O phases: the pattern each function writes, a write or read
 * phase on every function at once (a thread each, so their DMA overlaps in
 * the one domain), and the check of what came back.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "vn.h"

static uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + 0x9e3779b97f4a7c15ULL;

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t le64(uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return __builtin_bswap64(v);
#else
    return v;
#endif
}

/* Word o / 8 of the namespace is splitmix64(seed + o / 8), little-endian. */
void vn_fill_pattern(struct vn_dev *v, const struct vn_io *io)
{
    uint64_t *w = v->data.va, base = io->lba0 * v->ctrl.lba_size / 8;

    for (uint64_t i = 0; i < v->data.len / 8; i++) {
        w[i] = le64(splitmix64(io->seed + base + i));
    }
}

struct phase_arg {
    struct vn_dev *dev;
    const struct vn_io *io;
    bool write;
};

static void *io_phase(void *opaque)
{
    struct phase_arg *a = opaque;
    struct vn_dev *v = a->dev;
    uint64_t t0 = vn_now_ns();

    v->rc = vn_ctrl_io(&v->ctrl, a->write, a->io->lba0, a->io->bs, a->io->count, a->io->qd,
                       &v->data, v->state, v->err, sizeof(v->err));
    *(a->write ? &v->wns : &v->rns) = vn_now_ns() - t0;
    return NULL;
}

void vn_run_phase(struct vn_dev *devs, int n, const struct vn_io *io, bool write)
{
    pthread_t th[VN_MAX_DEVS];
    struct phase_arg arg[VN_MAX_DEVS];
    bool started[VN_MAX_DEVS] = { false };

    for (int i = 0; i < n; i++) {
        arg[i] = (struct phase_arg){ .dev = &devs[i], .io = io, .write = write };
    }
    for (int i = 1; i < n; i++) {
        started[i] = pthread_create(&th[i], NULL, io_phase, &arg[i]) == 0;
        if (!started[i]) {
            io_phase(&arg[i]); /* no thread: in turn, still correct */
        }
    }
    io_phase(&arg[0]);
    for (int i = 1; i < n; i++) {
        if (started[i]) {
            pthread_join(th[i], NULL);
        }
    }
}

void vn_verify(struct vn_dev *v, const struct vn_io *io)
{
    uint64_t *w = v->data.va, base = io->lba0 * v->ctrl.lba_size / 8, per = io->bs / 8;

    for (uint64_t c = 0; c < io->count; c++) {
        uint64_t bad = 0;
        if (v->state[c] != VN_DONE) {
            v->failed_chunks++;
            continue;
        }
        for (uint64_t i = c * per; i < (c + 1) * per; i++) {
            bad += w[i] != le64(splitmix64(io->seed + base + i));
        }
        v->verified += io->bs;
        v->mismatched += bad;
        v->bad_chunks += bad != 0;
    }
    if (!v->rc && v->mismatched) {
        snprintf(v->err, sizeof(v->err), "%llu words in %llu commands differ from the pattern",
                 (unsigned long long)v->mismatched, (unsigned long long)v->bad_chunks);
    }
}

bool vn_dev_ok(const struct vn_dev *v)
{
    return !v->rc && !v->mismatched;
}
