// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * rtas-set-indicator INDICATOR INDEX VALUE: one PAPR set-indicator RTAS call
 * through the kernel's sys_rtas(2), as powerpc-utils' drmgr makes it.
 *
 * The guest agent's pci-unplug step needs exactly one RTAS call Linux 6.12
 * does not make itself for a PCI slot: isolating the DRC (indicator 9001,
 * value 0) after the kernel removed the function, which is what lets the
 * hypervisor (QEMU's spapr DRC) finish device_del.  Static, so the busybox
 * initramfs needs no libraries.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>

struct rtas_args {	/* arch/powerpc/include/uapi/asm/rtas.h: big-endian cells */
	uint32_t token, nargs, nret;
	uint32_t args[16];
	uint32_t *rets;
};

static uint32_t be32(uint32_t v) { return __builtin_bswap32(v); }

int main(int argc, char **argv)
{
	struct rtas_args a = { 0 };
	unsigned char tok[4];
	FILE *f;
	long rc;

	if (argc != 4) {
		fprintf(stderr, "usage: %s INDICATOR INDEX VALUE\n", argv[0]);
		return 2;
	}
	f = fopen("/proc/device-tree/rtas/set-indicator", "rb");
	if (!f || fread(tok, 1, 4, f) != 4) {
		perror("/proc/device-tree/rtas/set-indicator");
		return 1;
	}
	fclose(f);
	a.token = (uint32_t)tok[0] << 24 | tok[1] << 16 | tok[2] << 8 | tok[3]; /* already BE */
	a.token = be32(a.token);
	a.nargs = be32(3);
	a.nret = be32(1);
	a.args[0] = be32((uint32_t)strtoul(argv[1], NULL, 0));
	a.args[1] = be32((uint32_t)strtoul(argv[2], NULL, 0));
	a.args[2] = be32((uint32_t)strtoul(argv[3], NULL, 0));
	rc = syscall(SYS_rtas, &a);
	if (rc) {
		perror("rtas");
		return 1;
	}
	printf("%d\n", (int32_t)be32(a.args[3]));	/* the RTAS status */
	return (int32_t)be32(a.args[3]) ? 1 : 0;
}
