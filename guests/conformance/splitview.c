/*
 * What btvmm's split code view (DESIGN.md 3b) must keep invisible: the
 * guest kernel's code runs from alias pages with INT3 where the monitor
 * steps in, at linear addresses the guest has not mapped, while the guest
 * must go on seeing only its own memory.
 *
 *   - code that reads its own bytes (through DS and through CS) sees them,
 *     not the alias's INT3s, with paging off and on;
 *   - jumps, calls and returns into code never run before (a page of its
 *     own, reached through a register, a return address and a table);
 *   - guest kernel mappings placed where btvmm keeps its aliases (the top
 *     64 MiB stretch of free directory entries below 4 GiB, and then every
 *     4 MiB region of the kernel half): data written and read there, code
 *     run from there, and sensitive instructions still handled after;
 *   - user code probing those addresses, unmapped, supervisor-only and
 *     user-mapped: the guest's page faults and the guest's data.
 *
 * Nothing here depends on where btvmm puts its window: every check is a
 * fact of the guest's own tables, compared with QEMU byte for byte.
 */
#include "lib.h"

#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_U 0x004

#define KERNEL_HALF 0xc0000000u
/* The 4 MiB regions the checks map and probe: the top stretch of the
 * kernel half below the top hole (where a VMM looking for free directory
 * entries from the top down would go first). */
#define TOP_REGION 0xffc00000u
#define PROBE 0xfdd01000u /* inside that stretch */

static u32 pd[1024] ALIGNED(4096);
static u32 ident[4][1024] ALIGNED(4096);
static u32 probe_pt[1024] ALIGNED(4096);
static u8 data_page[4096] ALIGNED(4096);
static u8 code_page[4096] ALIGNED(4096);

static volatile struct {
	u32 count, error, cr2;
} pf;
static volatile u32 pf_resume;
static volatile u32 ur[16];

/*
 * Code with sensitive instructions (PUSHF, CLI) whose bytes the checks
 * read: 9c 58 fa c3. On a page of its own with the fresh targets below,
 * which nothing runs before the checks that jump there.
 */
extern u8 sensitive_fn[], fresh_call[], fresh_ret[], fresh_table[];
extern u32 cs_read_own(void);
asm(".pushsection .text\n"
    ".balign 4096\n"
    "sensitive_fn:\n\t"
    "pushf\n\t"
    "pop %eax\n\t"
    "cli\n\t"
    "ret\n"
    ".balign 64\n"
    "fresh_call:\n\t"
    "mov $0x1234, %eax\n\t"
    "ret\n"
    ".balign 64\n"
    "fresh_ret:\n\t"
    "mov $0x5678, %eax\n\t"
    "ret\n"
    ".balign 64\n"
    "fresh_table:\n\t"
    "mov $0x9abc, %eax\n\t"
    "ret\n"
    ".balign 64\n"
    "cs_read_own:\n\t"
    "mov %cs:sensitive_fn, %eax\n\t"
    "ret\n"
    ".balign 4096\n"
    ".popsection");

typedef u32 (*fn0)(void);

static void h_pf(struct trap_frame *f)
{
	pf.count++;
	pf.error = f->error;
	pf.cr2 = read_cr2();
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

static inline void invlpg(u32 linear)
{
	asm volatile("invlpg (%0)" : : "r"(linear) : "memory");
}

static u32 own_word(const u8 *at)
{
	return *(const volatile u32 *)at;
}

static void check_own_bytes(const char *when)
{
	u32 flags = ((fn0)sensitive_fn)() & (FL_IF | FL_FIXED);

	printf("# %s\n", when);
	check_eq("pushf in the code read: the kernel's IF", flags, FL_FIXED);
	check_eq("the code's bytes read through DS", own_word(sensitive_fn), 0xc3fa589c);
	check_eq("the code's bytes read through CS", cs_read_own(), 0xc3fa589c);
	((fn0)sensitive_fn)();
	check_eq("and again after it ran", own_word(sensitive_fn), 0xc3fa589c);
}

static u32 return_into(void *target)
{
	u32 result;

	/* A return address nothing has run from: RET lands on fresh code. */
	asm volatile("push $1f\n\t"
		     "push %1\n\t"
		     "ret\n"
		     "1:"
		     : "=a"(result)
		     : "r"(target)
		     : "memory", "ecx", "edx");
	return result;
}

static void test_fresh_code(void)
{
	static fn0 table[3];
	volatile fn0 call = (fn0)fresh_call;

	table[2] = (fn0)fresh_table;
	check_eq("indirect call into code never run", call(), 0x1234);
	check_eq("return into code never run", return_into(fresh_ret), 0x5678);
	check_eq("call through a table into code never run", table[2](), 0x9abc);
	check_eq("the first again", call(), 0x1234);
}

static void paging_on(void)
{
	for (u32 i = 0; i < 4096; i++)
		ident[i / 1024][i % 1024] = (i << 12) | PTE_P | PTE_W | PTE_U;
	for (u32 i = 0; i < 4; i++)
		pd[i] = (u32)ident[i] | PTE_P | PTE_W | PTE_U;
	write_cr3((u32)pd);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);
	check_eq("paging on", read_cr0() & CR0_PG, CR0_PG);
}

static void put_mov_ret(u8 *at, u32 imm)
{
	at[0] = 0xb8; /* mov $imm, %eax */
	memcpy(at + 1, &imm, 4);
	at[5] = 0xc3; /* ret */
}

static void test_mapping_in_the_top_stretch(void)
{
	/* One table for every region mapped below: its page 0x101 is the data
	 * page (supervisor), 0x100 the code page. */
	probe_pt[0x101] = (u32)data_page | PTE_P | PTE_W;
	probe_pt[0x100] = (u32)code_page | PTE_P | PTE_W;
	((volatile u32 *)data_page)[0] = 0xd00d;
	put_mov_ret(code_page, 0xc0de);
	pd[PROBE >> 22] = (u32)probe_pt | PTE_P | PTE_W | PTE_U;
	check_eq("kernel read through a mapping in the top stretch", probe_read(PROBE), 0xd00d);
	check_eq("no fault", pf.count, 0);
	*(volatile u32 *)(PROBE + 4) = 0xfeed;
	check_eq("kernel write there lands in the guest's page", ((volatile u32 *)data_page)[1],
		 0xfeed);
	check_eq("code run from there", ((fn0)(PROBE - 0x1000))(), 0xc0de);
	check_own_bytes("with the top stretch mapped");
	test_fresh_code();
}

static void test_every_region_mapped(void)
{
	u32 sum = 0;

	for (u32 region = KERNEL_HALF; region; region += 0x400000)
		pd[region >> 22] = (u32)probe_pt | PTE_P | PTE_W | PTE_U;
	/* PDEs newly present need no flush; the changed one at PROBE had its
	 * table before. */
	for (u32 region = KERNEL_HALF; region; region += 0x400000)
		sum += probe_read(region + 0x101000) == 0xd00d;
	check_eq("every region of the kernel half reads the guest's page", sum, 256);
	check_eq("code run from the top region", ((fn0)(TOP_REGION + 0x100000))(), 0xc0de);
	check_eq("and from the bottom one", ((fn0)(KERNEL_HALF + 0x100000))(), 0xc0de);
	check_own_bytes("with every region of the kernel half mapped");
	put_mov_ret(code_page, 0xc0d2);
	check_eq("code rewritten, run from the top region", ((fn0)(TOP_REGION + 0x100000))(),
		 0xc0d2);
}

static u32 user_probes(void)
{
	ur[0] = probe_read(PROBE);
	ur[1] = pf.count;
	ur[2] = pf.error;
	ur[3] = pf.cr2;
	ur[4] = probe_read(PROBE + 0x2000);
	ur[5] = pf.count;
	ur[6] = pf.error;
	ur[7] = pf.cr2;
	ur[8] = probe_read(TOP_REGION + 0x102000);
	ur[9] = pf.count;
	return 0x600d;
}

static void test_user_probes(void)
{
	/* PROBE: supervisor only; PROBE + 0x2000: not present; in the top
	 * region, a user page. */
	probe_pt[0x102] = (u32)data_page | PTE_P | PTE_U;
	invlpg(PROBE + 0x2000);
	invlpg(TOP_REGION + 0x102000);
	check_eq("user run", run_user(user_probes, FL_FIXED), 0x600d);
	check_eq("user read of a supervisor page up there: faults", ur[1], 1);
	check_eq("user read of a supervisor page up there: error", ur[2], 5);
	check_eq("user read of a supervisor page up there: cr2", ur[3], PROBE);
	check_eq("user read of a supervisor page up there: no data", ur[0], 0xdeadbeef);
	check_eq("user read, PTE not present up there: error", ur[6], 4);
	check_eq("user read, PTE not present up there: cr2", ur[7], PROBE + 0x2000);
	check_eq("user read of a user page up there: the guest's data", ur[8], 0xd00d);
	check_eq("user read of a user page up there: no fault", ur[9], 0);
}

static void test_unmapped_again(void)
{
	for (u32 region = KERNEL_HALF; region; region += 0x400000)
		pd[region >> 22] = 0;
	write_cr3((u32)pd);
	check_eq("kernel read after unmapping: faults", probe_read(PROBE), 0xdeadbeef);
	check_eq("kernel read after unmapping: error", pf.error, 0);
	check_eq("kernel read after unmapping: cr2", pf.cr2, PROBE);
	check_own_bytes("with the kernel half unmapped again");
	check_eq("user run", run_user(user_probes, FL_FIXED), 0x600d);
	check_eq("user read, PDE not present up there: error", ur[2], 4);
	check_eq("user read, PDE not present up there: cr2", ur[3], PROBE);
}

void kmain(void)
{
	set_trap_handler(14, h_pf);
	check_own_bytes("paging off");
	paging_on();
	check_own_bytes("paging on, nothing mapped in the kernel half");
	test_fresh_code();
	test_mapping_in_the_top_stretch();
	test_every_region_mapped();
	test_user_probes();
	test_unmapped_again();
	finish();
}
