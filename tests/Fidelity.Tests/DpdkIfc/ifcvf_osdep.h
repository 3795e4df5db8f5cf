/*
 * The OS-dependency layer that DPDK's IFC VF base code (drivers/vdpa/ifc/base/ifcvf.c, built unmodified
 * at test time from Debian's dpdk source package) is compiled against in the issue 17 fidelity test.
 * Written for this project: every register access and PCI config read goes to the software IFC VF, which
 * lives in the C# test process (see harness.c for the wire and for how plain pointer dereferences into
 * BAR4 are trapped).
 */
#ifndef IFCVF_HARNESS_OSDEP_H
#define IFCVF_HARNESS_OSDEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/pci_regs.h> /* PCI_CAPABILITY_LIST, PCI_CAP_ID_VNDR */

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define STATIC static
#define __rte_packed __attribute__((packed))

/* The function the base code probes: which software VF of the test it is. */
struct harness_pci_dev {
	int index;
};
#define PCI_DEV struct harness_pci_dev

void harness_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void harness_delay_ms(unsigned int ms);
u32 harness_mmio_read(const volatile void *addr, int size);
void harness_mmio_write(const volatile void *addr, int size, u32 value);
int harness_config_read(PCI_DEV *dev, void *buf, int len, int where);

#define DEBUGOUT(...) harness_log("debug", __VA_ARGS__)
#define WARNINGOUT(...) harness_log("warning", __VA_ARGS__)
#define RTE_LOG(level, type, ...) harness_log(#level, __VA_ARGS__)
#define msec_delay(ms) harness_delay_ms(ms)

#define IFCVF_READ_REG8(reg) ((u8)harness_mmio_read((reg), 1))
#define IFCVF_READ_REG16(reg) ((u16)harness_mmio_read((reg), 2))
#define IFCVF_READ_REG32(reg) ((u32)harness_mmio_read((reg), 4))
#define IFCVF_WRITE_REG8(val, reg) harness_mmio_write((reg), 1, (u8)(val))
#define IFCVF_WRITE_REG16(val, reg) harness_mmio_write((reg), 2, (u16)(val))
#define IFCVF_WRITE_REG32(val, reg) harness_mmio_write((reg), 4, (u32)(val))

/* Return the bytes read, or a negative value on failure (what the base code tests for). */
#define PCI_READ_CONFIG_BYTE(dev, val, where) harness_config_read((dev), (val), 1, (where))
#define PCI_READ_CONFIG_DWORD(dev, val, where) harness_config_read((dev), (val), 4, (where))
#define PCI_READ_CONFIG_RANGE(dev, val, len, where) harness_config_read((dev), (val), (len), (where))

#endif
