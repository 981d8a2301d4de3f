/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfio-nvme: what sysfs and /proc say about a PCI function and our memory:
 * is it an NVMe controller held by vfio-pci, its group, and the
 * guest-physical address behind a buffer (for the host's checks).
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vn.h"

static int read_sysfs(const char *pci, const char *attr, char *out, size_t len)
{
    char path[PATH_MAX];
    FILE *f;

    snprintf(path, sizeof(path), SYSPCI "/%s/%s", pci, attr);
    f = fopen(path, "r");
    if (!f) {
        return -1;
    }
    if (!fgets(out, (int)len, f)) {
        out[0] = 0;
    }
    fclose(f);
    out[strcspn(out, "\n")] = 0;
    return 0;
}

/* basename of the symlink SYSPCI/pci/link, or "" */
void vn_link_name(const char *pci, const char *link, char *out, size_t len)
{
    char path[PATH_MAX], target[PATH_MAX];
    ssize_t n;
    const char *slash;

    snprintf(path, sizeof(path), SYSPCI "/%s/%s", pci, link);
    n = readlink(path, target, sizeof(target) - 1);
    out[0] = 0;
    if (n <= 0) {
        return;
    }
    target[n] = 0;
    slash = strrchr(target, '/');
    slash = slash ? slash + 1 : target;
    if (strlen(slash) < len) {
        memcpy(out, slash, strlen(slash) + 1);
    }
}

/* The checks every mode shares: an NVMe function held by vfio-pci. */
void vn_check_owned(const char *pci)
{
    char buf[64], drv[64];

    if (read_sysfs(pci, "class", buf, sizeof(buf)) < 0) {
        vn_fail("device", "no PCI device %s (%s/%s missing)", pci, SYSPCI, pci);
    }
    if (strcmp(buf, "0x010802") != 0) {
        vn_fail("device", "%s is class %s, not an NVMe controller (0x010802): "
                "refusing it", pci, buf);
    }
    vn_link_name(pci, "driver", drv, sizeof(drv));
    if (!drv[0]) {
        vn_fail("device", "%s has no driver: bind it to vfio-pci first "
                "(echo vfio-pci > %s/%s/driver_override; echo %s > "
                "/sys/bus/pci/drivers_probe)", pci, SYSPCI, pci, pci);
    }
    if (strcmp(drv, "vfio-pci") != 0) {
        vn_fail("device", "%s is bound to the kernel driver '%s', not vfio-pci: this "
                "driver cannot own it (unbind it and set driver_override=vfio-pci)",
                pci, drv);
    }
}

uint64_t vn_phys(const void *va)
{
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t ent = 0, off = (uintptr_t)va / pg * sizeof(ent);
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        return 0;
    }
    if (pread(fd, &ent, sizeof(ent), off) != sizeof(ent) || !(ent & (1ULL << 63))) {
        ent = 0;
    }
    close(fd);
    ent &= (1ULL << 55) - 1;
    return ent ? ent * pg + (uintptr_t)va % pg : 0;
}
