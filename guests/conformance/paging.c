/*
 * Paging at CPL 0 and CPL 3: 4 KiB and 4 MiB pages, the Accessed and
 * Dirty bits the CPU writes, #PF error codes and CR2 for not-present,
 * protection (WP) and reserved-bit faults and for user accesses, a
 * copy-on-write fault handler, remapping with INVLPG and with a CR3 reload,
 * a second page directory, self-modifying code (directly and through a
 * second virtual alias of the code page), user pages above 3 GiB, and
 * host-colliding selectors 0x33 and 0x7b loaded by user code.
 *
 * The first 16 MiB are identity-mapped with 4 KiB user pages (the library's
 * user code and stacks live in the kernel image); test pages are mapped at
 * ALIAS and above, with the rights each check needs.
 *
 * Only architecturally defined behaviour is checked: a changed entry is
 * used only after INVLPG or a CR3 load, and A/D are looked at only after a
 * flush made the CPU walk the tables again. Reserved-bit faults are not
 * checked: QEMU 7.2 reports them without the P bit (guests/README.md);
 * shadow-mmu's unit tests check them against the SDM.
 *
 * Every access through a test mapping is volatile: the compiler cannot
 * know that two addresses alias one page.
 */
#include "lib.h"

#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_U 0x004
#define PTE_A 0x020
#define PTE_D 0x040
#define PDE_PS 0x080
#define CR4_PSE 0x10

#define ALIAS 0x40000000u /* supervisor/user test pages, one 4 KiB PTE each */
#define UNMAPPED 0x50000000u /* PDE not present */
#define LARGE 0x80000000u /* a 4 MiB page onto physical 0 */
#define HIGH 0xd0000000u /* user pages above 3 GiB */

static u32 pd[1024] ALIGNED(4096);
static u32 pd2[1024] ALIGNED(4096);
static u32 pd3[1024] ALIGNED(4096);
static u32 alias_pt3[1024] ALIGNED(4096);
static u32 ident[4][1024] ALIGNED(4096);
static u32 alias_pt[1024] ALIGNED(4096);
static u32 alias_pt2[1024] ALIGNED(4096);
static u32 high_pt[1024] ALIGNED(4096);
static u8 page[10][4096] ALIGNED(4096);
static u8 code_page[4096] ALIGNED(4096);
static u32 tls_a[4], tls_b[4];

static volatile struct {
	u32 count, error, cr2, eip;
} pf;
static volatile u32 pf_resume;
/* Copy-on-write: the page whose write fault the handler resolves. */
static volatile u32 cow_page;

static inline void invlpg(u32 linear)
{
	asm volatile("invlpg (%0)" : : "r"(linear) : "memory");
}

static volatile u32 *word_at(u32 linear)
{
	return (volatile u32 *)linear;
}

/* Word `index` of a test page or paging structure, read as memory (the
 * CPU writes A and D behind the compiler's back). */
static u32 word(const void *at, int index)
{
	return ((const volatile u32 *)at)[index];
}

static void h_pf(struct trap_frame *f)
{
	pf.count++;
	pf.error = f->error;
	pf.cr2 = read_cr2();
	pf.eip = f->eip;
	if (cow_page && (pf.cr2 & ~0xfffu) == cow_page && (f->error & 3) == 3) {
		/* Copy, remap writable, flush, retry the write. */
		u32 index = (cow_page - ALIAS) >> 12;
		memcpy(page[7], page[6], 4096);
		alias_pt[index] = (u32)page[7] | PTE_P | PTE_W | PTE_U;
		invlpg(cow_page);
		return;
	}
	f->eip = pf_resume;
}

/* Reads a word; 0xdeadbeef if it faulted (pf says how). */
static u32 probe_read(u32 linear)
{
	u32 v = 0xdeadbeef;

	pf.count = 0;
	asm volatile("movl $1f, %1\n\t"
		     "movl (%2), %0\n"
		     "1:"
		     : "+r"(v), "=m"(pf_resume)
		     : "r"(linear)
		     : "memory");
	return v;
}

static void probe_write(u32 linear, u32 v)
{
	pf.count = 0;
	asm volatile("movl $1f, %0\n\t"
		     "movl %2, (%1)\n"
		     "1:"
		     : "=m"(pf_resume)
		     : "r"(linear), "r"(v)
		     : "memory");
}

static void probe_jump(u32 linear)
{
	pf.count = 0;
	asm volatile("movl $1f, %0\n\t"
		     "jmp *%1\n"
		     "1:"
		     : "=m"(pf_resume)
		     : "r"(linear)
		     : "memory");
}

static void check_pf(const char *name, u32 error, u32 cr2)
{
	printf("# %s: %u fault(s), error %x, cr2 %x\n", name, pf.count, pf.error, pf.cr2);
	report(name, pf.count == 1 && pf.error == error && pf.cr2 == cr2);
}

static void check_no_pf(const char *name)
{
	if (pf.count)
		printf("# %s: #PF error %x cr2 %x\n", name, pf.error, pf.cr2);
	report(name, pf.count == 0);
}

static void map_alias(u32 index, void *target, u32 flags)
{
	alias_pt[index] = (u32)target | flags;
	invlpg(ALIAS + (index << 12));
}

static void set_words(void)
{
	for (int i = 0; i < 10; i++)
		((u32 *)page[i])[0] = 0x1000 * (i + 1) + 0xa5;
}

static void test_enable(void)
{
	for (u32 i = 0; i < 4096; i++)
		ident[i / 1024][i % 1024] = (i << 12) | PTE_P | PTE_W | PTE_U;
	for (u32 i = 0; i < 4; i++)
		pd[i] = (u32)ident[i] | PTE_P | PTE_W | PTE_U;
	pd[ALIAS >> 22] = (u32)alias_pt | PTE_P | PTE_W | PTE_U;
	pd[HIGH >> 22] = (u32)high_pt | PTE_P | PTE_W | PTE_U;
	set_words();
	write_cr3((u32)pd);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);
	check_eq("paging on: CR0", read_cr0() & (CR0_PG | CR0_WP), CR0_PG | CR0_WP);
	check_eq("paging on: data through the identity map", word(page[3], 0), 0x40a5);
	check_eq("paging on: PDE 0 accessed", word(pd, 0) & PTE_A, PTE_A);
}

static void test_alias_and_ad(void)
{
	map_alias(0, page[0], PTE_P | PTE_W);
	check_eq("alias read", *word_at(ALIAS), 0x10a5);
	*word_at(ALIAS + 4) = 0x2222;
	check_eq("alias write lands in the page", word(page[0], 1), 0x2222);

	map_alias(1, page[1], PTE_P | PTE_W);
	check_eq("fresh PTE: neither A nor D", word(alias_pt, 1) & (PTE_A | PTE_D), 0);
	check_eq("read through it", *word_at(ALIAS + 0x1000), 0x20a5);
	check_eq("after a read: A, no D", word(alias_pt, 1) & (PTE_A | PTE_D), PTE_A);
	*word_at(ALIAS + 0x1008) = 7;
	check_eq("after a write: A and D", word(alias_pt, 1) & (PTE_A | PTE_D), PTE_A | PTE_D);
	check_eq("PDE accessed, no D written to a PDE", word(pd, ALIAS >> 22) & (PTE_A | PTE_D), PTE_A);
	/* Clear both, flush: the next write sets both again. */
	map_alias(1, page[1], PTE_P | PTE_W);
	*word_at(ALIAS + 0x1008) = 8;
	check_eq("cleared and flushed, then a write: A and D", word(alias_pt, 1) & (PTE_A | PTE_D),
		 PTE_A | PTE_D);
	/* A faulting access sets nothing. */
	map_alias(2, page[2], PTE_P);
	probe_write(ALIAS + 0x2000, 1);
	check_pf("write to a read-only page (WP=1)", 3, ALIAS + 0x2000);
	check_eq("a faulting write sets neither A nor D", word(alias_pt, 2) & (PTE_A | PTE_D), 0);
	check_eq("read-only page unchanged", word(page[2], 0), 0x30a5);
}

static void test_large(void)
{
	write_cr4(read_cr4() | CR4_PSE);
	pd[LARGE >> 22] = PDE_PS | PTE_P | PTE_W;
	/* Not-present entries are not cached: no INVLPG, but the compiler
	 * must not move the access before the store. */
	asm volatile("" : : : "memory");
	((volatile u32 *)page[8])[1] = 0x8888;
	check_eq("4 MiB page read", *word_at(LARGE + (u32)page[8] + 4), 0x8888);
	check_eq("4 MiB PDE: A, no D", word(pd, LARGE >> 22) & (PTE_A | PTE_D), PTE_A);
	*word_at(LARGE + (u32)page[8] + 8) = 0x9999;
	check_eq("4 MiB page write lands", word(page[8], 2), 0x9999);
	check_eq("4 MiB PDE: A and D", word(pd, LARGE >> 22) & (PTE_A | PTE_D), PTE_A | PTE_D);
	*word_at(0x3ff000) = 0x3ff3ff;
	check_eq("4 MiB page maps its last 4 KiB", *word_at(LARGE + 0x3ff000), 0x3ff3ff);
}

static void test_kernel_faults(void)
{
	probe_read(UNMAPPED + 0x10);
	check_pf("read, PDE not present", 0, UNMAPPED + 0x10);
	probe_write(UNMAPPED + 0x20, 5);
	check_pf("write, PDE not present", 2, UNMAPPED + 0x20);
	map_alias(3, 0, 0);
	probe_read(ALIAS + 0x3ffc);
	check_pf("read, PTE not present", 0, ALIAS + 0x3ffc);
	probe_jump(UNMAPPED + 0x30);
	check_pf("fetch, not present (no I/D bit without NX)", 0, UNMAPPED + 0x30);
	check_eq("fetch fault: pushed EIP is the target", pf.eip, UNMAPPED + 0x30);

	write_cr0(read_cr0() & ~CR0_WP);
	probe_write(ALIAS + 0x2004, 0x2424);
	check_no_pf("WP=0: supervisor write to a read-only page");
	check_eq("WP=0 write landed", word(page[2], 1), 0x2424);
	write_cr0(read_cr0() | CR0_WP);
	probe_write(ALIAS + 0x2004, 0x2525);
	check_pf("WP=1 again: the write faults", 3, ALIAS + 0x2004);
}

static volatile u32 ur[16];


static u32 user_probes(void)
{
	ur[0] = probe_read(ALIAS);
	ur[1] = pf.count;
	ur[2] = pf.error;
	ur[3] = pf.cr2;
	ur[4] = probe_read(ALIAS + 0x4000);
	ur[5] = pf.count;
	probe_write(ALIAS + 0x4000, 1);
	ur[6] = pf.error;
	ur[7] = pf.cr2;
	probe_read(UNMAPPED + 0x44);
	ur[8] = pf.error;
	ur[9] = pf.cr2;
	*word_at(HIGH + 0x10) = 0x5555;
	ur[10] = *word_at(HIGH + 0x10) + *word_at(HIGH);
	probe_write(ALIAS + 0x7010, 0x7777);
	ur[11] = pf.count;
	ur[14] = probe_read(HIGH + 0x1000);
	ur[15] = pf.error;
	return 0x600d;
}

static void test_user(void)
{
	map_alias(0, page[0], PTE_P | PTE_W);
	map_alias(4, page[4], PTE_P | PTE_U);
	high_pt[0] = (u32)page[5] | PTE_P | PTE_W | PTE_U;
	invlpg(HIGH);
	/* Copy-on-write from user mode: a read-only user page. */
	map_alias(7, page[6], PTE_P | PTE_U);
	cow_page = ALIAS + 0x7000;
	/* Supervisor pages the kernel has just used, below and above 3 GiB:
	 * the CPU may still hold their translations when user code runs. */
	high_pt[1] = (u32)page[9] | PTE_P | PTE_W;
	invlpg(HIGH + 0x1000);
	check_eq("kernel reads its supervisor page", *word_at(ALIAS), 0x10a5);
	check_eq("kernel reads its supervisor page above 3 GiB", *word_at(HIGH + 0x1000), 0xa0a5);
	check_eq("user run", run_user(user_probes, FL_FIXED), 0x600d);
	cow_page = 0;
	check_eq("user read of a supervisor page: faults", ur[1], 1);
	check_eq("user read of a supervisor page: error", ur[2], 5);
	check_eq("user read of a supervisor page: cr2", ur[3], ALIAS);
	check_eq("user read of a supervisor page: no data", ur[0], 0xdeadbeef);
	check_eq("user read of a read-only user page", ur[4], 0x50a5);
	check_eq("user read of a read-only user page: no fault", ur[5], 0);
	check_eq("user write to a read-only user page: error", ur[6], 7);
	check_eq("user write to a read-only user page: cr2", ur[7], ALIAS + 0x4000);
	check_eq("user read, not present: error", ur[8], 4);
	check_eq("user read, not present: cr2", ur[9], UNMAPPED + 0x44);
	check_eq("user page above 3 GiB: write and read", ur[10], 0x5555 + 0x60a5);
	check_eq("user page above 3 GiB: the write landed", word(page[5], 4), 0x5555);
	check_eq("user read of a supervisor page above 3 GiB: no data", ur[14], 0xdeadbeef);
	check_eq("user read of a supervisor page above 3 GiB: error", ur[15], 5);
	check_eq("user copy-on-write: one fault", ur[11], 1);
	check_eq("user copy-on-write: the copy has the write", word(page[7], 4), 0x7777);
	check_eq("user copy-on-write: the copy has the old data", word(page[7], 0), 0x70a5);
	check_eq("user copy-on-write: the original is untouched", word(page[6], 4), 0);
}

static void test_cow_kernel(void)
{
	memset(page[7], 0, 4096);
	map_alias(7, page[6], PTE_P | PTE_U);
	cow_page = ALIAS + 0x7000;
	pf.count = 0;
	*word_at(ALIAS + 0x7020) = 0xc0c0;
	cow_page = 0;
	check_eq("kernel copy-on-write: one fault", pf.count, 1);
	check_eq("kernel copy-on-write: error", pf.error, 3);
	check_eq("kernel copy-on-write: cr2", pf.cr2, ALIAS + 0x7020);
	check_eq("kernel copy-on-write: the copy has the write", word(page[7], 8), 0xc0c0);
	check_eq("kernel copy-on-write: the original is untouched", word(page[6], 8), 0);
	check_eq("kernel copy-on-write: reads see the copy", *word_at(ALIAS + 0x7000), 0x70a5);
}

static void test_remap(void)
{
	map_alias(8, page[0], PTE_P | PTE_W);
	check_eq("before the remap", *word_at(ALIAS + 0x8000), 0x10a5);
	alias_pt[8] = (u32)page[1] | PTE_P | PTE_W;
	invlpg(ALIAS + 0x8000);
	check_eq("remapped, INVLPG: the new page", *word_at(ALIAS + 0x8000), 0x20a5);
	alias_pt[8] = (u32)page[2] | PTE_P | PTE_W;
	write_cr3(read_cr3());
	check_eq("remapped, CR3 reload: the new page", *word_at(ALIAS + 0x8000), 0x30a5);
	alias_pt[8] = 0;
	invlpg(ALIAS + 0x8000);
	probe_read(ALIAS + 0x8000);
	check_pf("unmapped, INVLPG: faults", 0, ALIAS + 0x8000);
	/* A write to a page-table page through the identity map, then to the
	 * page directory itself, each followed by a flush. */
	pd[UNMAPPED >> 22] = (u32)alias_pt2 | PTE_P | PTE_W;
	alias_pt2[5] = (u32)page[9] | PTE_P;
	write_cr3(read_cr3());
	check_eq("new page table through a new PDE", *word_at(UNMAPPED + 0x5000), 0xa0a5);
	pd[UNMAPPED >> 22] = 0;
	write_cr3(read_cr3());
}

/*
 * Reads a word with a loop that repeats, so that a VMM that interprets
 * short stretches still reads it natively, through its own mappings.
 */
static u32 read_native(u32 linear)
{
	u32 sum = 0;

	for (int round = 0; round < 50; round++)
		sum += *word_at(linear);
	return sum / 50;
}

/*
 * Three page directories sharing the kernel's mappings, each with its own
 * page at ALIAS; then a write, made in the first, to the second's page
 * table: the CR3 load into the second must show the new mapping.
 */
static void test_address_spaces(void)
{
	memcpy(pd2, pd, sizeof(pd));
	memcpy(pd3, pd, sizeof(pd));
	pd2[ALIAS >> 22] = (u32)alias_pt2 | PTE_P | PTE_W;
	alias_pt2[0] = (u32)page[3] | PTE_P | PTE_W;
	pd3[ALIAS >> 22] = (u32)alias_pt3 | PTE_P | PTE_W;
	alias_pt3[0] = (u32)page[4] | PTE_P | PTE_W;
	map_alias(0, page[0], PTE_P | PTE_W);
	u32 one = read_native(ALIAS);
	write_cr3((u32)pd2);
	u32 two = read_native(ALIAS);
	*word_at(ALIAS + 4) = 0x3434;
	write_cr3((u32)pd3);
	u32 three = read_native(ALIAS);
	write_cr3((u32)pd);
	u32 back = read_native(ALIAS);
	alias_pt2[0] = (u32)page[6] | PTE_P | PTE_W;
	write_cr3((u32)pd2);
	u32 moved = read_native(ALIAS);
	write_cr3((u32)pd);
	check_eq("first address space", one, 0x10a5);
	check_eq("second address space", two, 0x40a5);
	check_eq("third address space", three, 0x50a5);
	check_eq("first again", back, 0x10a5);
	check_eq("write in the second landed in its page", word(page[3], 1), 0x3434);
	check_eq("second's table changed from the first: the new page", moved, 0x70a5);
}

typedef u32 (*fn0)(void);

/*
 * Writes code with a loop that repeats: a VMM that interprets short
 * stretches still runs this natively, so the writes reach the code page
 * as plain stores, not through an emulator.
 */
static void copy_native(u8 *dst, const u8 *src, u32 n)
{
	for (int round = 0; round < 50; round++)
		for (u32 i = 0; i < n; i++)
			((volatile u8 *)dst)[i] = src[i];
}

static void put_mov_ret(u8 *at, u32 imm)
{
	u8 code[6];

	code[0] = 0xb8; /* mov $imm, %eax */
	memcpy(code + 1, &imm, 4);
	code[5] = 0xc3; /* ret */
	copy_native(at, code, sizeof(code));
}

static void test_self_modifying(void)
{
	fn0 f = (fn0)code_page;
	put_mov_ret(code_page, 0x1111);
	check_eq("generated code runs", f(), 0x1111);
	check_eq("and again", f(), 0x1111);
	/* PUSHF where a MOV was: natively it would show the host's flags, so
	 * the VMM must see the new code (IF is clear in this kernel). */
	static const u8 flags_code[] = { 0x9c, 0x58, 0xc3 }; /* pushf; pop %eax; ret */
	copy_native(code_page, flags_code, sizeof(flags_code));
	check_eq("rewritten in place into PUSHF: IF as the kernel set it", f() & FL_IF, 0);
	put_mov_ret(code_page, 0x2222);
	check_eq("rewritten in place: the new code runs", f(), 0x2222);
	map_alias(9, code_page, PTE_P | PTE_W);
	put_mov_ret((u8 *)(ALIAS + 0x9000), 0x3333);
	check_eq("patched through a second alias: the new code runs", f(), 0x3333);
	copy_native((u8 *)(ALIAS + 0x9000), flags_code, sizeof(flags_code));
	check_eq("PUSHF patched in through the alias: IF as the kernel set it", f() & FL_IF, 0);
	/* Generated code that itself writes the next instruction. */
	static const u8 patcher[] = {
		0xc6, 0x05, 0, 0, 0, 0, 0x44, /* movb $0x44, abs32 */
		0xb8, 0x11, 0, 0, 0, /* mov $0x11, %eax (the byte 0x11 gets patched) */
		0xc3,
	};
	memcpy(code_page + 64, patcher, sizeof(patcher));
	u32 target = (u32)code_page + 64 + 8;
	memcpy(code_page + 64 + 2, &target, 4);
	check_eq("code that patches its next instruction", ((fn0)(code_page + 64))(), 0x44);
}

/* The same before paging is on: code written natively must run as written. */
static void test_self_modifying_unpaged(void)
{
	static const u8 flags_code[] = { 0x9c, 0x58, 0xc3 }; /* pushf; pop %eax; ret */
	fn0 f = (fn0)code_page;

	put_mov_ret(code_page, 0x5151);
	check_eq("paging off: generated code runs", f(), 0x5151);
	copy_native(code_page, flags_code, sizeof(flags_code));
	check_eq("paging off: rewritten into PUSHF: IF as the kernel set it", f() & FL_IF, 0);
	put_mov_ret(code_page, 0x5252);
	check_eq("paging off: rewritten again", f(), 0x5252);
}

static u32 collide_user(void)
{
	u32 a, b;

	asm volatile("movw $0x33, %%ax\n\t"
		     "movw %%ax, %%gs\n\t"
		     "movl %%gs:4, %0\n\t"
		     "movl $0x77, %%gs:8\n\t"
		     "movw $0x7b, %%ax\n\t"
		     "movw %%ax, %%fs\n\t"
		     "movl %%fs:12, %1\n\t"
		     "movw $0x23, %%ax\n\t"
		     "movw %%ax, %%gs\n\t"
		     "movw %%ax, %%fs"
		     : "=&r"(a), "=&r"(b)
		     :
		     : "eax", "memory");
	ur[12] = a;
	ur[13] = b;
	return 0x600d;
}

static void test_collisions(void)
{
	tls_a[1] = 0xaaaa;
	tls_b[3] = 0xbbbb;
	gdt_set(6, (u32)tls_a, 0xfff, ACC_P | ACC_DPL(3) | ACC_DATA_RW, FLG_DB);
	gdt_set(15, (u32)tls_b, 0xfff, ACC_P | ACC_DPL(3) | ACC_DATA_RW, FLG_DB);
	check_eq("user run with selectors 0x33 and 0x7b", run_user(collide_user, FL_FIXED), 0x600d);
	check_eq("%gs = 0x33 reads the guest's GDT entry 6", ur[12], 0xaaaa);
	check_eq("%gs = 0x33 writes it", tls_a[2], 0x77);
	check_eq("%fs = 0x7b reads the guest's GDT entry 15", ur[13], 0xbbbb);
}

void kmain(void)
{
	set_trap_handler(14, h_pf);
	test_self_modifying_unpaged();
	test_enable();
	test_alias_and_ad();
	test_large();
	test_kernel_faults();
	test_user();
	test_cow_kernel();
	test_remap();
	test_address_spaces();
	test_self_modifying();
	test_collisions();
	finish();
}
