/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rtas-set-indicator INDICATOR INDEX VALUE: one PAPR set-indicator RTAS call
 * through the kernel's sys_rtas(2), as powerpc-utils' drmgr makes it; prints
 * the RTAS status (0 = success).
 *
 * The guest agent's pci-unplug and pci-plug steps need the RTAS calls Linux
 * 6.12 does not make itself for a PCI slot: isolating the DRC (indicator
 * 9001, value 0) after the kernel removed the function, which lets the
 * hypervisor (QEMU's spapr DRC) finish device_del, and unisolating it
 * (value 1) before configure-connector of a re-plugged one.  Built static,
 * so the busybox initramfs needs no libraries.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

/* arch/powerpc/include/uapi/asm/rtas.h: big-endian cells */
struct rtas_args {
    uint32_t token, nargs, nret;
    uint32_t args[16];
    uint32_t *rets;
};

/* a 32-bit number (decimal or 0x...) as a big-endian cell; exits on bad input */
static uint32_t cell(const char *name, const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 0);

    if (!*s || *end || v > UINT32_MAX) {
        fprintf(stderr, "%s '%s': not a 32-bit number\n", name, s);
        exit(2);
    }
    return __builtin_bswap32((uint32_t)v);
}

int main(int argc, char **argv)
{
    struct rtas_args a = { 0 };
    FILE *f;
    int32_t status;

    if (argc != 4) {
        fprintf(stderr, "usage: %s INDICATOR INDEX VALUE\n", argv[0]);
        return 2;
    }
    /* the token, as the device tree holds it: one big-endian cell */
    f = fopen("/proc/device-tree/rtas/set-indicator", "rb");
    if (!f || fread(&a.token, 4, 1, f) != 1) {
        perror("/proc/device-tree/rtas/set-indicator");
        return 1;
    }
    fclose(f);
    a.nargs = __builtin_bswap32(3);
    a.nret = __builtin_bswap32(1);
    a.args[0] = cell("INDICATOR", argv[1]);
    a.args[1] = cell("INDEX", argv[2]);
    a.args[2] = cell("VALUE", argv[3]);
    if (syscall(SYS_rtas, &a)) {
        perror("rtas");
        return 1;
    }
    status = (int32_t)__builtin_bswap32(a.args[3]);
    printf("%d\n", status);
    return status ? 1 : 0;
}
