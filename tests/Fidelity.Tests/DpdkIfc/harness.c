/*
 * Test harness for DPDK's IFC VF base code (issue 17). Built at test time with DPDK's UNMODIFIED
 * drivers/vdpa/ifc/base/ifcvf.c and ifcvf.h (from `apt-get source dpdk`, never committed) and this
 * project's own ifcvf_osdep.h. The software IFC VFs live in the C# test process; this program is the
 * DPDK driver's hardware layer in between, talking to the test over stdin (commands, replies) and
 * stdout (requests). Diagnostics go to stderr.
 *
 * Routing:
 *  - PCI config reads (the capability walk) and the IFCVF_READ/WRITE_REG macros become explicit
 *    requests ('C', 'R', 'W') with the BAR number and offset of the register.
 *  - Every BAR is a PROT_NONE window of the BAR's length. DPDK reaches the BAR4 live-migration block
 *    (ring state, MQ register, dirty-log registers) through plain pointer dereferences, not macros: each
 *    such access faults (SIGSEGV). The handler decodes the width of the faulting instruction's memory
 *    operand (the few move/load/compare forms a compiler emits; anything else is a fatal harness error,
 *    never a guess), opens the page, fills the operand from the device (read requests 'r', or for a
 *    store side-effect-free peeks 'p', so that a read-modify-write instruction sees the register), and
 *    single-steps the instruction (x86 trap flag). The SIGTRAP after that one instruction sends a store's
 *    bytes ('w'), checks that nothing outside the operand changed, and closes the page. So each
 *    dereference reaches the device in program order, as the instruction the compiler emitted, including
 *    stores of a value equal to the current one: a memory window synced by diffing could see neither
 *    those nor the order. An operand wider than 32 bits (GCC merges ifcvf_enable_logging's four address
 *    stores into one 16-byte store) reaches the model as ascending 32-bit writes, each tagged with the
 *    width of the store it came from (the model's bus takes 8/16/32-bit accesses).
 *
 * Wire (little-endian, fixed size): test -> harness `struct cmd` (48 bytes) and 8-byte replies;
 * harness -> test `struct msg` (32 bytes). A command ends with a 'D' message carrying its result.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ucontext.h>
#include <time.h>
#include <unistd.h>

#include "ifcvf.h"

#define MAX_DEVS 4
#define EFLAGS_TF 0x100

enum op {
	OP_BAR = 1, OP_INIT, OP_FEATURES, OP_CONFIG, OP_VRING, OP_START, OP_NOTIFY, OP_STOP,
	OP_LOG, OP_UNLOG, OP_ENABLE_VRING, OP_DISABLE_VRING, OP_NOTIFY_OFF, OP_EXIT, OP_PROBE, OP_DRAIN,
};

struct cmd {
	u32 op;
	u32 dev;
	u64 a, b, c, d, e;
};

struct msg {
	u32 type;
	u32 dev;
	u32 bar;
	u32 size;
	u64 offset;
	u64 value;
};

_Static_assert(sizeof(struct cmd) == 48, "cmd layout");
_Static_assert(sizeof(struct msg) == 32, "msg layout");

struct device {
	struct ifcvf_hw hw;
	struct harness_pci_dev pci;
};

static struct device devs[MAX_DEVS];
static long page_size;

/* The access being single-stepped (one at a time: the harness is single-threaded). */
static struct {
	int active;
	int write;
	int width;
	int dev;
	int bar;
	u64 offset;
	u8 *page;
	u8 snapshot[65536];
} trap;

static void fail(const char *why)
{
	struct msg m = { .type = 'E' };
	ssize_t unused = write(2, "ifcvf-harness: fatal: ", 22);
	unused = write(2, why, strlen(why));
	unused = write(2, "\n", 1);
	unused = write(1, &m, sizeof(m));
	(void)unused;
	_exit(3);
}

/* read()/write() loops: async-signal-safe, used from the trap handlers too. */
static void put(const void *p, size_t n)
{
	const u8 *b = p;
	while (n) {
		ssize_t w = write(1, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(4);
		b += w;
		n -= (size_t)w;
	}
}

static int get(void *p, size_t n)
{
	u8 *b = p;
	while (n) {
		ssize_t r = read(0, b, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

static u64 request(u32 type, int dev, int bar, int size, u64 offset, u64 value)
{
	struct msg m = { .type = type, .dev = (u32)dev, .bar = (u32)bar, .size = (u32)size,
			 .offset = offset, .value = value };
	u64 reply;
	put(&m, sizeof(m));
	if (get(&reply, sizeof(reply)) < 0)
		_exit(5);
	return reply;
}

static void emit(u32 type, int dev, int key, u64 value)
{
	struct msg m = { .type = type, .dev = (u32)dev, .bar = (u32)key, .value = value };
	put(&m, sizeof(m));
}

/* Which device and BAR a pointer falls in; -1 when it is in no BAR window. */
static int locate(const volatile void *addr, int *dev, int *bar, u64 *offset)
{
	const u8 *a = (const u8 *)addr;
	for (int d = 0; d < MAX_DEVS; d++) {
		for (int b = 0; b < IFCVF_PCI_MAX_RESOURCE; b++) {
			struct ifcvf_pci_mem_resource *r = &devs[d].hw.mem_resource[b];
			if (r->addr && a >= r->addr && a < r->addr + r->len) {
				*dev = d;
				*bar = b;
				*offset = (u64)(a - r->addr);
				return 0;
			}
		}
	}
	return -1;
}

static u64 where(const void *addr)
{
	int dev, bar;
	u64 off;
	if (addr == NULL)
		return ~0ULL;
	if (locate(addr, &dev, &bar, &off) < 0)
		return ~1ULL;
	return ((u64)bar << 56) | off;
}

void harness_log(const char *level, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "ifcvf[%s]: ", level);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	size_t n = strlen(fmt);
	if (n == 0 || fmt[n - 1] != '\n')
		fputc('\n', stderr);
	fflush(stderr);
}

void harness_delay_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

u32 harness_mmio_read(const volatile void *addr, int size)
{
	int dev, bar;
	u64 off;
	if (locate(addr, &dev, &bar, &off) < 0)
		fail("register read outside every BAR");
	return (u32)request('R', dev, bar, size, off, 0);
}

void harness_mmio_write(const volatile void *addr, int size, u32 value)
{
	int dev, bar;
	u64 off;
	if (locate(addr, &dev, &bar, &off) < 0)
		fail("register write outside every BAR");
	request('W', dev, bar, size, off, value);
}

int harness_config_read(PCI_DEV *dev, void *buf, int len, int where_)
{
	u8 *out = buf;
	int at = where_;
	int end = where_ + len;
	if (where_ < 0 || end > 256)
		return -1;
	/* naturally aligned dword, word and byte reads, as VFIO splits a config pread */
	while (at < end) {
		int size = (at % 4 == 0 && end - at >= 4) ? 4 : (at % 2 == 0 && end - at >= 2) ? 2 : 1;
		u32 v = (u32)request('C', dev->index, 0, size, (u64)at, 0);
		memcpy(out + (at - where_), &v, (size_t)size);
		at += size;
	}
	return len;
}

/*
 * The width of the memory operand of the instruction at `ip`, for the moves, loads and compares a compiler
 * emits for a plain dereference (GCC stores the four LM dirty-log address registers of
 * ifcvf_enable_logging as ONE 16-byte movups, Debian's librte_vdpa_ifc.so.23 included). 0 = not known:
 * the caller fails loudly rather than guess.
 */
static int operand_width(const u8 *ip)
{
	int opsize16 = 0, rep = 0, repne = 0, rexw = 0;
	for (;; ip++) {
		if (*ip == 0x66)
			opsize16 = 1;
		else if (*ip == 0xF3)
			rep = 1;
		else if (*ip == 0xF2)
			repne = 1;
		else if (*ip == 0x2E || *ip == 0x3E || *ip == 0x26 || *ip == 0x36 || *ip == 0x64 || *ip == 0x65 || *ip == 0xF0)
			;
		else
			break;
	}
	if ((*ip & 0xF0) == 0x40) {
		rexw = (*ip & 0x08) != 0;
		ip++;
	}
	int word = rexw ? 8 : opsize16 ? 2 : 4;
	switch (*ip) {
	case 0x88: case 0x8A: case 0xC6: case 0x80: case 0x38: case 0x3A: case 0x84: case 0xF6:
		return 1;
	case 0x89: case 0x8B: case 0xC7: case 0x81: case 0x83: case 0x39: case 0x3B: case 0x85: case 0xF7:
	case 0x01: case 0x03: case 0x09: case 0x0B: case 0x21: case 0x23: case 0x29: case 0x2B: case 0x31: case 0x33:
		return word;
	case 0x0F:
		switch (ip[1]) {
		case 0xB6: case 0xBE:
			return 1;
		case 0xB7: case 0xBF:
			return 2;
		case 0x10: case 0x11:
			return rep ? 4 : repne ? 8 : 16;
		case 0x28: case 0x29:
			return 16;
		case 0x6F: case 0x7F:
			return (opsize16 || rep) ? 16 : 8;
		case 0x6E:
			return rexw ? 8 : 4;
		case 0x7E:
			return rep ? 8 : rexw ? 8 : 4;
		case 0xD6:
			return 8;
		}
		return 0;
	}
	return 0;
}

/* One device access of `width` bytes at a BAR offset, as the bus delivers it to the model: 1, 2 and
 * 4 bytes as one access, wider ones as ascending 32-bit accesses. */
static void fill_from_device(u32 type, int dev, int bar, u64 off, int width, u8 *dst)
{
	if (width < 4) {
		u32 v = (u32)request(type, dev, bar, width, off, (u64)width);
		memcpy(dst, &v, (size_t)width);
		return;
	}
	for (int i = 0; i < width; i += 4) {
		u32 v = (u32)request(type, dev, bar, 4, off + (u64)i, (u64)width);
		memcpy(dst + i, &v, 4);
	}
}

static void on_segv(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	int dev, bar;
	u64 off;
	(void)sig;
	if (trap.active || locate(si->si_addr, &dev, &bar, &off) < 0) {
		signal(SIGSEGV, SIG_DFL); /* a real crash: let it happen */
		return;
	}
	const u8 *ip = (const u8 *)uc->uc_mcontext.gregs[REG_RIP];
	int width = operand_width(ip);
	if (width == 0) {
		char why[96];
		snprintf(why, sizeof(why), "plain BAR access by an unknown instruction %02x %02x %02x %02x %02x",
			 ip[0], ip[1], ip[2], ip[3], ip[4]);
		fail(why);
	}
	if (off % (u64)(width < 4 ? width : 4) != 0 || off % (u64)page_size + (u64)width > (u64)page_size)
		fail("plain BAR access not naturally aligned");
	u8 *page = (u8 *)((uintptr_t)si->si_addr & ~(uintptr_t)(page_size - 1));
	if (mprotect(page, (size_t)page_size, PROT_READ | PROT_WRITE) < 0)
		fail("mprotect open");
	int write_access = (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
	/* The operand as the device holds it: a read asks the device; a store only peeks (so that a
	 * read-modify-write instruction computes from the register's value). */
	fill_from_device(write_access ? 'p' : 'r', dev, bar, off, width, (u8 *)si->si_addr);
	memcpy(trap.snapshot, page, (size_t)page_size);
	trap.active = 1;
	trap.write = write_access;
	trap.width = width;
	trap.dev = dev;
	trap.bar = bar;
	trap.offset = off;
	trap.page = page;
	uc->uc_mcontext.gregs[REG_EFL] |= EFLAGS_TF;
}

static void on_trap(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	(void)sig;
	(void)si;
	if (!trap.active) {
		signal(SIGTRAP, SIG_DFL);
		return;
	}
	uc->uc_mcontext.gregs[REG_EFL] &= ~(greg_t)EFLAGS_TF;
	size_t at = (size_t)(trap.offset % (u64)page_size);
	size_t width = (size_t)trap.width;
	for (size_t i = 0; i < (size_t)page_size; i++) {
		if ((i < at || i >= at + width) && trap.page[i] != trap.snapshot[i])
			fail("plain BAR store outside the decoded operand");
	}
	if (trap.write) {
		if (width < 4) {
			u32 v = 0;
			memcpy(&v, trap.page + at, width);
			request('w', trap.dev, trap.bar, (int)width, trap.offset, (u64)v | ((u64)width << 32));
		} else {
			for (size_t i = 0; i < width; i += 4) {
				u32 v;
				memcpy(&v, trap.page + at + i, 4);
				/* value's upper half: the width of the one store these dwords came from */
				request('w', trap.dev, trap.bar, 4, trap.offset + i, (u64)v | ((u64)width << 32));
			}
		}
	} else if (memcmp(trap.page + at, trap.snapshot + at, width) != 0) {
		fail("a faulting read changed the register");
	}
	if (mprotect(trap.page, (size_t)page_size, PROT_NONE) < 0)
		fail("mprotect close");
	trap.active = 0;
}

static struct device *device(u32 i)
{
	if (i >= MAX_DEVS)
		fail("device index out of range");
	return &devs[i];
}

static void report_vring(int dev, struct ifcvf_hw *hw, int q)
{
	emit('S', dev, q, (u64)hw->vring[q].last_avail_idx | ((u64)hw->vring[q].last_used_idx << 16));
}

/*
 * What the probe of DPDK's ifc vDPA driver (ifcvf_vdpa.c, not built here) learns from a function
 * besides ifcvf_init_hw, written for this harness from its documented behaviour: the PCI IDs, matched
 * against the IDs ifcvf.h defines (modern or transitional, net or block, the IFC subsystem), and for a
 * block function the virtio-blk config read through hw->blk_cfg with plain dereferences (the capacity
 * one byte at a time, as that driver does), so they reach the model trapped, as the compiler emitted them.
 * Reports 'I' records: 10 vendor, 11 device, 12 subsystem vendor, 13 subsystem device, 14 the type the
 * IDs match (IFCVF_NET, IFCVF_BLK, or -1), then for a block function 20 capacity, 21 size_max,
 * 22 seg_max, 23 cylinders, 24 heads, 25 sectors, 26 blk_size, 27 num_queues.
 */
static int64_t probe(int dev, struct device *d)
{
	u16 ids[2], sub[2];
	if (PCI_READ_CONFIG_RANGE(&d->pci, ids, 4, 0) < 0 || PCI_READ_CONFIG_RANGE(&d->pci, sub, 4, 0x2c) < 0)
		return -1;
	int type = -1;
	if (ids[0] == IFCVF_VENDOR_ID && sub[0] == IFCVF_SUBSYS_VENDOR_ID) {
		if ((ids[1] == IFCVF_NET_MODERN_DEVICE_ID && sub[1] == IFCVF_SUBSYS_DEVICE_ID) ||
		    (ids[1] == IFCVF_NET_TRANSITIONAL_DEVICE_ID && sub[1] == IFCVF_SUBSYS_NET_DEVICE_ID))
			type = IFCVF_NET;
		else if ((ids[1] == IFCVF_BLK_MODERN_DEVICE_ID || ids[1] == IFCVF_BLK_TRANSITIONAL_DEVICE_ID) &&
			 sub[1] == IFCVF_SUBSYS_BLK_DEVICE_ID)
			type = IFCVF_BLK;
	}
	emit('I', dev, 10, ids[0]);
	emit('I', dev, 11, ids[1]);
	emit('I', dev, 12, sub[0]);
	emit('I', dev, 13, sub[1]);
	emit('I', dev, 14, (u64)(int64_t)type);
	if (type != IFCVF_BLK)
		return type;
	struct virtio_blk_config *cfg = d->hw.blk_cfg;
	if (cfg == NULL)
		return -1;
	u64 capacity = 0;
	for (size_t i = 0; i < sizeof(cfg->capacity); i++)
		capacity |= (u64)((u8 *)&cfg->capacity)[i] << (i * 8);
	emit('I', dev, 20, capacity);
	emit('I', dev, 21, cfg->size_max);
	emit('I', dev, 22, cfg->seg_max);
	emit('I', dev, 23, cfg->geometry.cylinders);
	emit('I', dev, 24, cfg->geometry.heads);
	emit('I', dev, 25, cfg->geometry.sectors);
	emit('I', dev, 26, cfg->blk_size);
	emit('I', dev, 27, cfg->num_queues);
	return type;
}

/*
 * The block drain that DPDK's ifc vDPA driver runs before ifcvf_stop_hw (so that no request is lost):
 * per vring, read the live LM ring state (block layout: last_avail in bits 0-15, last_used in 16-31)
 * and ring the doorbell until the two are equal. Written for this harness; bounded (`tries` reads per
 * vring) where DPDK's loop is not. Returns the doorbells rung, or -1 - q when vring q did not drain.
 */
static int64_t drain(struct ifcvf_hw *hw, int tries)
{
	int64_t rung = 0;
	for (int q = 0; q < hw->nr_vring; q++) {
		int left = tries;
		for (;;) {
			u32 state = *(u32 *)(hw->lm_cfg + IFCVF_LM_RING_STATE_OFFSET + q * IFCVF_LM_CFG_SIZE);
			hw->vring[q].last_avail_idx = (u16)(state & IFCVF_16_BIT_MASK);
			hw->vring[q].last_used_idx = (u16)(state >> 16);
			if (hw->vring[q].last_avail_idx == hw->vring[q].last_used_idx)
				break;
			if (left-- == 0)
				return -1 - q;
			ifcvf_notify_queue(hw, (u16)q);
			rung++;
			harness_delay_ms(1);
		}
	}
	return rung;
}

static int64_t run(const struct cmd *c)
{
	struct device *d = device(c->dev);
	struct ifcvf_hw *hw = &d->hw;
	int dev = (int)c->dev;
	switch (c->op) {
	case OP_BAR: {
		if (c->a >= IFCVF_PCI_MAX_RESOURCE || c->b == 0 || c->b % (u64)page_size != 0)
			return -1;
		void *w = mmap(NULL, (size_t)c->b, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (w == MAP_FAILED)
			return -1;
		hw->mem_resource[c->a].addr = w;
		hw->mem_resource[c->a].len = c->b;
		hw->mem_resource[c->a].phys_addr = c->c;
		return 0;
	}
	case OP_INIT: {
		d->pci.index = dev;
		int rc = ifcvf_init_hw(hw, &d->pci);
		emit('I', dev, 1, where(hw->common_cfg));
		emit('I', dev, 2, where(hw->notify_base));
		emit('I', dev, 3, where(hw->isr));
		emit('I', dev, 4, where(hw->dev_cfg));
		emit('I', dev, 5, hw->notify_off_multiplier);
		emit('I', dev, 6, hw->notify_region);
		emit('I', dev, 7, where(hw->lm_cfg));
		emit('I', dev, 8, where(hw->mq_cfg));
		return rc;
	}
	case OP_FEATURES:
		return (int64_t)ifcvf_get_features(hw);
	case OP_CONFIG:
		if (c->b > IFCVF_MAX_QUEUES * 2)
			return -1;
		hw->req_features = c->a;
		hw->nr_vring = (u8)c->b;
		hw->device_type = (int)c->c;
		return 0;
	case OP_VRING: {
		u64 q = c->a & 0xffff;
		if (q >= IFCVF_MAX_QUEUES * 2)
			return -1;
		hw->vring[q].size = (u16)(c->a >> 16);
		hw->vring[q].last_avail_idx = (u16)(c->a >> 32);
		hw->vring[q].last_used_idx = (u16)(c->a >> 48);
		hw->vring[q].desc = c->b;
		hw->vring[q].avail = c->c;
		hw->vring[q].used = c->d;
		hw->vring[q].enable = c->e != 0;
		return 0;
	}
	case OP_START:
		return ifcvf_start_hw(hw);
	case OP_NOTIFY:
		if (c->a >= hw->nr_vring || hw->notify_addr[c->a] == NULL)
			return -1;
		ifcvf_notify_queue(hw, (u16)c->a);
		return 0;
	case OP_STOP:
		ifcvf_stop_hw(hw);
		for (int q = 0; q < hw->nr_vring; q++)
			report_vring(dev, hw, q);
		return 0;
	case OP_LOG:
		ifcvf_enable_logging(hw, c->a, c->b);
		return 0;
	case OP_UNLOG:
		ifcvf_disable_logging(hw);
		return 0;
	case OP_ENABLE_VRING:
		return ifcvf_enable_vring_hw(hw, (int)c->a);
	case OP_DISABLE_VRING:
		if (c->a >= hw->nr_vring)
			return -1;
		ifcvf_disable_vring_hw(hw, (int)c->a);
		report_vring(dev, hw, (int)c->a);
		return 0;
	case OP_NOTIFY_OFF:
		if (c->a >= hw->nr_vring || hw->notify_addr[c->a] == NULL)
			return -1;
		return (int64_t)ifcvf_get_queue_notify_off(hw, (int)c->a);
	case OP_PROBE:
		d->pci.index = dev;
		return probe(dev, d);
	case OP_DRAIN:
		if (hw->lm_cfg == NULL)
			return -1000;
		return drain(hw, (int)c->a);
	default:
		fail("unknown command");
		return -1;
	}
}

int main(void)
{
	struct sigaction sa;
	page_size = sysconf(_SC_PAGESIZE);
	if (page_size <= 0 || page_size > (long)sizeof(trap.snapshot))
		fail("page size");
	memset(&sa, 0, sizeof(sa));
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	sa.sa_sigaction = on_segv;
	sigaction(SIGSEGV, &sa, NULL);
	sa.sa_sigaction = on_trap;
	sigaction(SIGTRAP, &sa, NULL);
	for (;;) {
		struct cmd c;
		if (get(&c, sizeof(c)) < 0)
			return 0; /* the test closed its end */
		if (c.op == OP_EXIT)
			return 0;
		int64_t rc = run(&c);
		emit('D', (int)c.dev, 0, (u64)rc);
	}
}
