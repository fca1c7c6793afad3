/*
 * Silent sensitive instructions: they do not trap at CPL 3, yet executed
 * natively in btvmm they would read or change the host's state instead of
 * the guest's (PUSHF/POPF, SGDT/SIDT/SLDT/STR/SMSW, segment register reads
 * and loads, LAR/LSL/VERR/VERW, CPUID). Checked at CPL 0 and, through
 * run_user(), at CPL 3.
 *
 * btvmm traces guest kernel mode but runs guest user mode natively, so at
 * CPL 3 this kernel checks what reaches the guest kernel: the EFLAGS and
 * segment registers in the frame of an `int $0x80` (observe()), fault
 * frames, and values user code leaves in memory. Native reads at CPL 3 whose
 * result under btvmm is the host's (PUSHF with the guest's IF = 0 or
 * IOPL 3, MOV/PUSH from a segment register, SGDT/SIDT/SLDT/STR/SMSW,
 * LAR/LSL/VERR/VERW) are in user_untraced.c; the ones whose result is the
 * guest's either way stay here (PUSHF with IF = 1 and IOPL 0, what MOV and
 * PUSH Sreg leave around the selector). So is the EFLAGS the guest kernel
 * sees after a CPL 3 POPF that changes IF under the guest's IOPL 3: btvmm
 * runs that POPF natively under the host's IOPL 0, which keeps IF.
 *
 * User code runs with IF = 1 (as under any real OS) except where a check
 * needs IF = 0.
 */
#include "lib.h"

/* Values CPL 3 code leaves for the kernel to check (it cannot print). */
static volatile u32 ur[64];
static volatile u32 user_arg;

/*
 * `int $0x80` from CPL 3 ("observe"): the kernel records the user's EFLAGS
 * and data segment registers from the trap frame and returns with nothing
 * changed. seen[i] is the i-th call since observe_reset().
 */
#define OBSERVE "int $0x80\n\t"
#define NSEEN 8

static volatile struct {
	u32 eflags, ds, es, fs, gs;
} seen[NSEEN];
static volatile u32 nseen;

static void h_observe(struct trap_frame *f)
{
	if (nseen < NSEEN) {
		seen[nseen].eflags = f->eflags;
		seen[nseen].ds = f->ds & 0xffff;
		seen[nseen].es = f->es & 0xffff;
		seen[nseen].fs = f->fs & 0xffff;
		seen[nseen].gs = f->gs & 0xffff;
	}
	nseen++;
}

static void observe_reset(void)
{
	memset((void *)seen, 0xff, sizeof(seen));
	nseen = 0;
}

/* ---- PUSHF / POPF ------------------------------------------------------ */

static u32 popf_get(u32 value)
{
	u32 r;
	asm volatile("pushfl\n\t"
		     "pushl %1\n\t"
		     "popfl\n\t"
		     "pushfl\n\t"
		     "popl %0\n\t"
		     "popfl"
		     : "=&r"(r)
		     : "r"(value)
		     : "cc", "memory");
	return r;
}

static void test_popf_cpl0(void)
{
	check_eq("pushf at kmain (system flags)", read_eflags() & ~FL_ARITH, FL_FIXED);
	/* Every flag POPF can change at CPL 0, except TF. */
	check_eq("popf 0xfffffeff at cpl 0", popf_get(0xfffffeff), 0x00247ed7);
	check_eq("popf 0 at cpl 0", popf_get(0), FL_FIXED);
	check_eq("popf iopl 3", popf_get(FL_FIXED | FL_IOPL(3)), FL_FIXED | FL_IOPL(3));
	check_eq("popf if", popf_get(FL_FIXED | FL_IF), FL_FIXED | FL_IF);
	check_eq("popf ac id", popf_get(FL_FIXED | FL_AC | FL_ID), FL_FIXED | FL_AC | FL_ID);
	/* VM, VIF and VIP are left alone, RF is cleared. */
	check_eq("popf vm rf vif vip", popf_get(FL_FIXED | FL_VM | FL_RF | 0x180000), FL_FIXED);
	u32 r;
	asm volatile("pushfl\n\t"
		     "pushl $0xffff3a02\n\t"
		     "popfl\n\t"
		     "pushw $0x0003\n\t"
		     "popfw\n\t"
		     "pushfl\n\t"
		     "popl %0\n\t"
		     "popfl"
		     : "=r"(r)
		     :
		     : "cc", "memory");
	check_eq("popfw changes only the low half", r, 0x00240003);
	u16 w;
	asm volatile("pushfl\n\t"
		     "pushl $0x3202\n\t"
		     "popfl\n\t"
		     "pushfw\n\t"
		     "popw %0\n\t"
		     "popfl"
		     : "=r"(w)
		     :
		     : "cc", "memory");
	check_eq("pushfw", w, 0x3202);
	check_eq("eflags after the popf tests (system flags)", read_eflags() & ~FL_ARITH, FL_FIXED);
}

/*
 * POPF at CPL 3: the kernel sees the EFLAGS before and after it in the
 * frames of two observe() calls. PUSHF before and after is also recorded,
 * and checked only where the guest runs with IF = 1 and IOPL 0 before and
 * after: PUSHF at CPL 3 runs natively under btvmm and shows the host's IF
 * (1) and IOPL (0), which are then also the guest's. The other PUSHF
 * checks are in user_untraced.c, and so is the EFLAGS after a POPF that
 * changes IF with the guest's IOPL 3 (btvmm's native POPF runs under the
 * host's IOPL 0 and keeps IF): here only the EFLAGS before it is checked.
 */
static u32 user_popf(void)
{
	u32 before, after;
	asm volatile("pushfl\n\t"
		     "popl %0\n\t"
		     OBSERVE
		     "pushl %2\n\t"
		     "popfl\n\t"
		     OBSERVE
		     "pushfl\n\t"
		     "popl %1"
		     : "=&r"(before), "=&r"(after)
		     : "r"(user_arg)
		     : "cc", "memory");
	ur[0] = before;
	ur[1] = after;
	return 0;
}

#define CHECK_AFTER 1 /* the EFLAGS after the POPF, seen by the kernel */
#define CHECK_PUSHF 2 /* PUSHF before and after */

static void popf_user_case(const char *name, u32 start, u32 value, u32 want, int what)
{
	char buf[96];
	u32 n = strlen(name);
	user_arg = value;
	ur[0] = ur[1] = 0xdeadbeef;
	observe_reset();
	run_user(user_popf, start);
	printf("# %s: eflags 0x%x, popf 0x%x\n", name, start, value);
	memcpy(buf, name, n);
	memcpy(buf + n, ": eflags before", 16);
	check_eq(buf, nseen == 2 ? seen[0].eflags : 0xdeadbeef, start);
	if (what & CHECK_AFTER) {
		memcpy(buf + n, ": eflags after", 15);
		check_eq(buf, nseen == 2 ? seen[1].eflags : 0xdeadbeef, want);
	}
	if (!(what & CHECK_PUSHF))
		return;
	memcpy(buf + n, ": pushf before", 15);
	check_eq(buf, ur[0], start);
	memcpy(buf + n, ": pushf after", 14);
	check_eq(buf, ur[1], want);
}

static void test_popf_cpl3(void)
{
	/* IF and IOPL silently keep their values at CPL 3 with IOPL 0. */
	popf_user_case("cpl 3 iopl 0 set if iopl", FL_FIXED,
		       FL_FIXED | FL_IF | FL_IOPL(3) | FL_CF | FL_ZF, FL_FIXED | FL_CF | FL_ZF,
		       CHECK_AFTER);
	popf_user_case("cpl 3 iopl 0 clear if", FL_FIXED | FL_IF, FL_FIXED | FL_DF,
		       FL_FIXED | FL_IF | FL_DF, CHECK_AFTER | CHECK_PUSHF);
	/* With IOPL 3, CPL 3 may change IF but still not IOPL. The EFLAGS
	 * after these two POPFs is checked in user_untraced.c. */
	popf_user_case("cpl 3 iopl 3 set if", FL_FIXED | FL_IOPL(3), FL_FIXED | FL_IF,
		       FL_FIXED | FL_IF | FL_IOPL(3), 0);
	popf_user_case("cpl 3 iopl 3 clear if", FL_FIXED | FL_IF | FL_IOPL(3), FL_FIXED | FL_AC,
		       FL_FIXED | FL_AC | FL_IOPL(3), 0);
	check_eq("eflags back at cpl 0 (system flags)", read_eflags() & ~FL_ARITH, FL_FIXED);
}

/* ---- descriptor-table registers ---------------------------------------- */

static u64 ldt[2] ALIGNED(8);
#define LDT_SEL SEL(GDT_SPARE_FIRST, 0)

static void test_tables(void)
{
	struct dtr g, i;
	u32 v;

	gdt_set(GDT_SPARE_FIRST, (u32)ldt, sizeof(ldt) - 1, ACC_P | ACC_LDT, 0);
	lldt(LDT_SEL);
	sgdt(&g);
	sidt(&i);
	check_eq("sgdt limit", g.limit, GDT_LIMIT);
	report("sgdt base", g.base == (u32)gdt);
	check_eq("sidt limit", i.limit, 0x7ff);
	report("sidt base", i.base == (u32)idt);
	check_eq("sldt", sldt(), LDT_SEL);
	v = 0xffffffff;
	asm volatile("sldt %0" : "+r"(v));
	check_eq("sldt r32 zero-extends", v, LDT_SEL);
	check_eq("str", str(), SEL_TSS);
	v = 0xffffffff;
	asm volatile("str %0" : "+r"(v));
	check_eq("str r32 zero-extends", v, SEL_TSS);
	v = 0xffffffff;
	asm volatile("smsw %0" : "+r"(v));
	check_eq("smsw r32", v, CR0_LIB);
	/* The same at CPL 3: user_untraced.c. */
	lldt(0);
	gdt_clear_spares();
}

/* ---- segment register reads ------------------------------------------- */

#define MOV_FROM(seg) \
	({ \
		u32 v__ = 0xffffffff; \
		asm volatile("mov %%" #seg ", %0" : "+r"(v__)); \
		v__; \
	})
#define MOVW_FROM(seg) \
	({ \
		u32 v__ = 0xffffffff; \
		asm volatile("movw %%" #seg ", %w0" : "+r"(v__)); \
		v__; \
	})
#define MOV_TO_MEM(seg) \
	({ \
		u32 m__ = 0xdeadbeef; \
		asm volatile("movw %%" #seg ", %0" : "+m"(m__)); \
		m__; \
	})
/* PUSH Sreg with 32-bit operand size over a slot holding 0xdeadbeef. */
#define PUSHL_SLOT(seg) \
	({ \
		u32 s__, d__; \
		asm volatile("movl $0xdeadbeef, -4(%%esp)\n\t" \
			     "movl %%esp, %1\n\t" \
			     "pushl %%" #seg "\n\t" \
			     "subl %%esp, %1\n\t" \
			     "popl %0" \
			     : "=r"(s__), "=&r"(d__) \
			     : \
			     : "memory"); \
		((u64)d__ << 32) | s__; \
	})
/* PUSH Sreg with 16-bit operand size over a slot holding 0xdeadbeef:
 * returns the dword at the new ESP - 2 (0xbeef below the pushed word). */
#define PUSHW_SLOT(seg) \
	({ \
		u32 s__, d__; \
		asm volatile("movl $0xdeadbeef, -4(%%esp)\n\t" \
			     "movl %%esp, %1\n\t" \
			     "pushw %%" #seg "\n\t" \
			     "subl %%esp, %1\n\t" \
			     "movl -2(%%esp), %0\n\t" \
			     "addl $2, %%esp" \
			     : "=r"(s__), "=&r"(d__) \
			     : \
			     : "memory"); \
		((u64)d__ << 32) | s__; \
	})

/*
 * Segment register reads at CPL 3, checked through their architectural
 * effect: the selector read is loaded into ES, FS or GS, and the kernel
 * finds it there in the frame of the next observe(). (The values read are
 * checked directly in user_untraced.c: natively under btvmm they are the
 * host's selectors, which name the same segments.) Also checked: what MOV
 * and PUSH leave around the selector (upper halves, ESP), which does not
 * depend on the selector's value.
 */
static u32 user_seg_reads(void)
{
	u32 v, d, m = 0xdeadbeef;
	/* MOV Sreg to r32: CS to ES, SS to FS, DS to GS. */
	asm volatile("movl %%cs, %%eax\n\t"
		     "movl %%eax, %%es\n\t"
		     "movl %%ss, %%eax\n\t"
		     "movl %%eax, %%fs\n\t"
		     "movl %%ds, %%eax\n\t"
		     "movl %%eax, %%gs\n\t" OBSERVE
		     :
		     :
		     : "eax", "memory");
	/* MOV CS to r16 (upper half kept), then to ES. */
	asm volatile("movl $0xffffffff, %0\n\t"
		     "movw %%cs, %w0\n\t"
		     "movw %w0, %%es\n\t" OBSERVE
		     : "=&r"(v)
		     :
		     : "memory");
	ur[0] = v >> 16;
	/* MOV SS to m16 (two bytes written), then from memory to FS. */
	asm volatile("movw %%ss, %0\n\t"
		     "movw %0, %%fs\n\t" OBSERVE
		     : "+m"(m)
		     :
		     : "memory");
	ur[1] = m >> 16;
	/* PUSH CS with 32-bit operand size, POP ES. */
	asm volatile("movl %%esp, %0\n\t"
		     "pushl %%cs\n\t"
		     "subl %%esp, %0\n\t"
		     "popl %%es\n\t" OBSERVE
		     : "=&r"(d)
		     :
		     : "memory");
	ur[2] = d;
	/* PUSH SS with 16-bit operand size, POP FS with 16-bit operand size. */
	asm volatile("movl %%esp, %0\n\t"
		     "pushw %%ss\n\t"
		     "subl %%esp, %0\n\t"
		     "popw %%fs\n\t" OBSERVE
		     : "=&r"(d)
		     :
		     : "memory");
	ur[3] = d;
	asm volatile("movl %0, %%es\n\t"
		     "movl %0, %%fs\n\t"
		     "movl %0, %%gs"
		     :
		     : "r"((u32)SEL_UDATA)
		     : "memory");
	return 0;
}

static void test_seg_reads(void)
{
	u64 p;
	check_eq("mov cs to r32", MOV_FROM(cs), SEL_KCODE);
	check_eq("mov ss to r32", MOV_FROM(ss), SEL_KDATA);
	check_eq("mov ds to r32", MOV_FROM(ds), SEL_KDATA);
	check_eq("mov es to r32", MOV_FROM(es), SEL_KDATA);
	check_eq("mov fs to r32", MOV_FROM(fs), SEL_KDATA);
	check_eq("mov gs to r32", MOV_FROM(gs), SEL_KDATA);
	check_eq("mov cs to r16 keeps the upper half", MOVW_FROM(cs), 0xffff0000 | SEL_KCODE);
	check_eq("mov ds to r16 keeps the upper half", MOVW_FROM(ds), 0xffff0000 | SEL_KDATA);
	check_eq("mov cs to m16 writes two bytes", MOV_TO_MEM(cs), 0xdead0000 | SEL_KCODE);
	check_eq("mov gs to m16 writes two bytes", MOV_TO_MEM(gs), 0xdead0000 | SEL_KDATA);
	p = PUSHL_SLOT(cs);
	check_eq("push cs (32-bit) slot", (u32)p, SEL_KCODE);
	check_eq("push cs (32-bit) esp delta", (u32)(p >> 32), 4);
	p = PUSHL_SLOT(ds);
	check_eq("push ds (32-bit) slot", (u32)p, SEL_KDATA);
	p = PUSHL_SLOT(ss);
	check_eq("push ss (32-bit) slot", (u32)p, SEL_KDATA);
	p = PUSHL_SLOT(es);
	check_eq("push es (32-bit) slot", (u32)p, SEL_KDATA);
	p = PUSHL_SLOT(fs);
	check_eq("push fs (32-bit) slot", (u32)p, SEL_KDATA);
	p = PUSHL_SLOT(gs);
	check_eq("push gs (32-bit) slot", (u32)p, SEL_KDATA);
	p = PUSHW_SLOT(cs);
	check_eq("push cs (16-bit) slot", (u32)p, SEL_KCODE << 16 | 0xbeef);
	check_eq("push cs (16-bit) esp delta", (u32)(p >> 32), 2);
	p = PUSHW_SLOT(ds);
	check_eq("push ds (16-bit) slot", (u32)p, SEL_KDATA << 16 | 0xbeef);

	memset((void *)ur, 0xff, sizeof(ur));
	observe_reset();
	run_user(user_seg_reads, FL_FIXED | FL_IF);
	check_eq("cpl 3 system calls seen", nseen, 5);
	check_eq("cpl 3 mov cs to r32, then to es", seen[0].es, SEL_UCODE);
	check_eq("cpl 3 mov ss to r32, then to fs", seen[0].fs, SEL_UDATA);
	check_eq("cpl 3 mov ds to r32, then to gs", seen[0].gs, SEL_UDATA);
	check_eq("cpl 3 mov cs to r16 keeps the upper half", ur[0], 0xffff);
	check_eq("cpl 3 mov cs to r16, then to es", seen[1].es, SEL_UCODE);
	check_eq("cpl 3 mov ss to m16 writes two bytes", ur[1], 0xdead);
	check_eq("cpl 3 mov ss to m16, then to fs", seen[2].fs, SEL_UDATA);
	check_eq("cpl 3 push cs (32-bit), then pop es", seen[3].es, SEL_UCODE);
	check_eq("cpl 3 push cs (32-bit) esp delta", ur[2], 4);
	check_eq("cpl 3 push ss (16-bit), then pop fs (16-bit)", seen[4].fs, SEL_UDATA);
	check_eq("cpl 3 push ss (16-bit) esp delta", ur[3], 2);
}

/* ---- segment loads ------------------------------------------------------ */

#define SPARE_DATA SEL(GDT_SPARE_FIRST + 0, 0) /* data based at seg_buf_a */
#define SPARE_NP SEL(GDT_SPARE_FIRST + 1, 0) /* not present */
#define SPARE_RO SEL(GDT_SPARE_FIRST + 2, 0) /* read-only data */
#define SPARE_XO SEL(GDT_SPARE_FIRST + 3, 0) /* execute-only code */
#define SPARE_RX SEL(GDT_SPARE_FIRST + 4, 0) /* readable code based at seg_buf_b */
#define SPARE_FRESH SEL(GDT_SPARE_FIRST + 5, 0) /* data, accessed bit clear */
#define SPARE_STACK SEL(GDT_SPARE_FIRST + 6, 0) /* stack based at alt_stack */
#define SPARE_LDT SEL(GDT_SPARE_FIRST + 7, 0)

static u32 seg_buf_a[4] = {0xaaaa0000, 0xaaaa0001, 0xaaaa0002, 0xaaaa0003};
static u32 seg_buf_b[4] = {0xbbbb0000, 0xbbbb0001, 0xbbbb0002, 0xbbbb0003};
static u32 alt_stack[64];

struct farptr {
	u32 offset;
	u16 sel;
} __attribute__((packed));

static void spare_segments(void)
{
	gdt_set(GDT_SPARE_FIRST + 0, (u32)seg_buf_a, 0xfff, ACC_P | ACC_DATA_RW | ACC_ACCESSED, FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 1, 0, 0xfffff, ACC_DATA_RW | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 2, 0, 0xfffff, ACC_P | ACC_DATA_RO | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 3, 0, 0xfffff, ACC_P | ACC_CODE_XO | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 4, (u32)seg_buf_b, 0xfff, ACC_P | ACC_CODE_RX | ACC_ACCESSED, FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 5, 0, 0xfffff, ACC_P | ACC_DATA_RW, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 6, (u32)alt_stack, sizeof(alt_stack) - 1,
		ACC_P | ACC_DATA_RW | ACC_ACCESSED, FLG_DB);
}

/* Load a selector that must fault into a segment register; the register
 * is set back to the kernel data selector right after. */
#define LOAD_FAULT(seg, sel) \
	asm volatile(TRY("mov %0, %%" #seg) "mov %1, %%" #seg \
		     : \
		     : "r"((u32)(sel)), "r"((u32)SEL_KDATA) \
		     : "memory")

static void test_seg_loads(void)
{
	u32 v, w, x;

	spare_segments();

	/* MOV Sreg and reads through the new base. */
	asm volatile("mov %2, %%es\n\t"
		     "movl %%es:4, %0\n\t"
		     "mov %%es, %1\n\t"
		     "mov %3, %%es"
		     : "=&r"(v), "=&r"(w)
		     : "r"(SPARE_DATA), "r"(SEL_KDATA));
	check_eq("mov es then read es:4", v, 0xaaaa0001);
	check_eq("mov es read back", w, SPARE_DATA);
	/* A readable code segment can be loaded into a data segment register. */
	asm volatile("mov %1, %%fs\n\t"
		     "movl %%fs:8, %0\n\t"
		     "mov %2, %%fs"
		     : "=&r"(v)
		     : "r"(SPARE_RX), "r"(SEL_KDATA));
	check_eq("fs = readable code segment, read fs:8", v, 0xbbbb0002);
	/* A DPL 3 data segment is fine at CPL 0. */
	asm volatile("mov %1, %%gs\n\t"
		     "mov %%gs, %0\n\t"
		     "mov %2, %%gs"
		     : "=&r"(v)
		     : "r"(SEL_UDATA), "r"(SEL_KDATA));
	check_eq("gs = dpl 3 data at cpl 0", v, SEL_UDATA);

	/* POP Sreg: 32-bit pops 4 bytes and ignores the upper half. */
	asm volatile("movl %%esp, %1\n\t"
		     "pushl $0xabcd0000 + %c3\n\t"
		     "popl %%es\n\t"
		     "subl %%esp, %1\n\t"
		     "mov %%es, %0\n\t"
		     "mov %2, %%es"
		     : "=&r"(v), "=&r"(w)
		     : "r"(SEL_KDATA), "i"(SPARE_DATA));
	check_eq("pop es (32-bit) selector", v, SPARE_DATA);
	check_eq("pop es (32-bit) esp delta", w, 0);
	asm volatile("movl %%esp, %1\n\t"
		     "pushw %3\n\t"
		     "popw %%fs\n\t"
		     "subl %%esp, %1\n\t"
		     "mov %%fs, %0\n\t"
		     "mov %2, %%fs"
		     : "=&r"(v), "=&r"(w)
		     : "r"(SEL_KDATA), "i"(SPARE_DATA));
	check_eq("pop fs (16-bit) selector", v, SPARE_DATA);
	check_eq("pop fs (16-bit) esp delta", w, 0);

	/* LDS / LES / LFS / LGS / LSS. */
	static struct farptr fp = {0x12345678, SPARE_DATA};
	asm volatile("lds %3, %0\n\t"
		     "movl %%ds:12, %1\n\t"
		     "mov %%ds, %2\n\t"
		     "mov %4, %%ds"
		     : "=&r"(v), "=&r"(w), "=&r"(x)
		     : "m"(fp), "r"(SEL_KDATA));
	check_eq("lds offset", v, 0x12345678);
	check_eq("lds read ds:12", w, 0xaaaa0003);
	check_eq("lds selector", x, SPARE_DATA);
	asm volatile("les %2, %0\n\t"
		     "movl %%es:0, %1\n\t"
		     "mov %3, %%es"
		     : "=&r"(v), "=&r"(w)
		     : "m"(fp), "r"(SEL_KDATA));
	check_eq("les offset and read", v == 0x12345678 && w == 0xaaaa0000, 1);
	asm volatile("lfs %2, %0\n\t"
		     "movl %%fs:4, %1\n\t"
		     "mov %3, %%fs"
		     : "=&r"(v), "=&r"(w)
		     : "m"(fp), "r"(SEL_KDATA));
	check_eq("lfs offset and read", v == 0x12345678 && w == 0xaaaa0001, 1);
	asm volatile("lgs %2, %0\n\t"
		     "movl %%gs:8, %1\n\t"
		     "mov %3, %%gs"
		     : "=&r"(v), "=&r"(w)
		     : "m"(fp), "r"(SEL_KDATA));
	check_eq("lgs offset and read", v == 0x12345678 && w == 0xaaaa0002, 1);
	static struct farptr new_stack = {sizeof(alt_stack), SPARE_STACK};
	static struct farptr old_stack;
	old_stack.sel = SEL_KDATA;
	alt_stack[63] = 0;
	asm volatile("movl %%esp, %3\n\t"
		     "lss %2, %%esp\n\t"
		     "pushl $0x5555aaaa\n\t"
		     "movl %%esp, %0\n\t"
		     "mov %%ss, %1\n\t"
		     "lss %3, %%esp"
		     : "=&r"(v), "=&r"(w)
		     : "m"(new_stack), "m"(old_stack)
		     : "memory");
	check_eq("lss esp after a push", v, sizeof(alt_stack) - 4);
	check_eq("lss selector", w, SPARE_STACK);
	check_eq("push through the new ss base", alt_stack[63], 0x5555aaaa);
	check_eq("ss restored", READ_SEG(ss), SEL_KDATA);
	/* A faulting LDS leaves its destination register alone. */
	static struct farptr bad = {0x12345678, 0x80};
	v = 0x0badf00d;
	fault_reset();
	asm volatile(TRY("lds %1, %0") "mov %2, %%ds" : "+r"(v) : "m"(bad), "r"(SEL_KDATA));
	check_fault("lds beyond the gdt limit", 13, 0x80);
	check_eq("lds fault leaves the register", v, 0x0badf00d);

	/* Faulting loads. */
	fault_reset();
	LOAD_FAULT(ds, 0x80);
	check_fault("mov ds beyond the gdt limit", 13, 0x80);
	fault_reset();
	LOAD_FAULT(es, 0x83);
	check_fault("mov es beyond the gdt limit, rpl 3", 13, 0x80);
	fault_reset();
	LOAD_FAULT(fs, SPARE_NP);
	check_fault("mov fs not present", 11, SPARE_NP);
	fault_reset();
	LOAD_FAULT(gs, SEL_TSS);
	check_fault("mov gs tss", 13, SEL_TSS);
	fault_reset();
	LOAD_FAULT(ds, SPARE_XO);
	check_fault("mov ds execute-only code", 13, SPARE_XO);
	fault_reset();
	LOAD_FAULT(es, SEL_KDATA | 3);
	check_fault("mov es rpl 3 to dpl 0 data", 13, SEL_KDATA);
	fault_reset();
	LOAD_FAULT(fs, SEL(GDT_UNDEFINED, 0));
	check_fault("mov fs undefined (zero) descriptor", 13, SEL(GDT_UNDEFINED, 0));
	fault_reset();
	LOAD_FAULT(ss, 0);
	check_fault("mov ss null", 13, 0);
	fault_reset();
	LOAD_FAULT(ss, SPARE_RO);
	check_fault("mov ss read-only data", 13, SPARE_RO);
	fault_reset();
	LOAD_FAULT(ss, SEL_UDATA);
	check_fault("mov ss dpl 3 at cpl 0", 13, SEL_UDATA & ~3);
	fault_reset();
	LOAD_FAULT(ss, SEL_KDATA | 3);
	check_fault("mov ss rpl 3 at cpl 0", 13, SEL_KDATA);
	fault_reset();
	LOAD_FAULT(ss, SEL_KCODE);
	check_fault("mov ss code", 13, SEL_KCODE);
	gdt[GDT_SPARE_FIRST + 1] = make_desc(0, 0xfffff, ACC_DATA_RW | ACC_ACCESSED, FLG_G | FLG_DB);
	fault_reset();
	LOAD_FAULT(ss, SPARE_NP);
	check_fault("mov ss not present", 12, SPARE_NP);
	fault_reset();
	asm volatile("movl %%esp, %%eax\n\t"
		     "pushl %0\n\t" TRY("popl %%ss") "movl %%eax, %%esp"
		     :
		     : "i"(SPARE_NP)
		     : "eax", "memory");
	check_fault("pop ss not present", 12, SPARE_NP);
	check_eq("ss after the faulting loads", READ_SEG(ss), SEL_KDATA);

	/*
	 * Null selectors load into DS-GS at CPL 0. Not checked: that a memory
	 * access through a null segment, beyond a segment limit or writing a
	 * read-only segment raises #GP. QEMU (TCG) checks none of these on data
	 * accesses; only the loads are checked.
	 */
	fault_reset();
	asm volatile("mov %1, %%fs\n\t"
		     "mov %%fs, %0\n\t"
		     "mov %2, %%fs"
		     : "=&r"(v)
		     : "r"(3), "r"(SEL_KDATA));
	check_no_fault("load null selector with rpl 3 into fs");
	check_eq("fs holds the null selector with its rpl", v, 3);
	/* The accessed bit is set by a load, not by LAR. */
	u32 lar = 0;
	asm volatile("lar %1, %0" : "=r"(lar) : "r"(SPARE_FRESH));
	check_eq("lar before the first load", lar, 0x00c09200);
	check_eq("access byte before the first load", desc_access(gdt[GDT_SPARE_FIRST + 5]), 0x92);
	asm volatile("mov %0, %%es\n\tmov %1, %%es" : : "r"(SPARE_FRESH), "r"(SEL_KDATA));
	check_eq("access byte after the first load", desc_access(gdt[GDT_SPARE_FIRST + 5]), 0x93);

	/* Segment registers keep the descriptor they were loaded with. */
	asm volatile("mov %0, %%es" : : "r"(SPARE_DATA));
	gdt_set(GDT_SPARE_FIRST + 0, (u32)seg_buf_b, 0xfff, ACC_P | ACC_DATA_RW | ACC_ACCESSED, FLG_DB);
	asm volatile("movl %%es:0, %0\n\t"
		     "mov %2, %%es\n\t"
		     "movl %%es:0, %1\n\t"
		     "mov %3, %%es"
		     : "=&r"(v), "=&r"(w)
		     : "r"(SPARE_DATA), "r"(SEL_KDATA));
	check_eq("es reads through the cached base after a gdt write", v, 0xaaaa0000);
	check_eq("es reads through the new base after reloading", w, 0xbbbb0000);
	gdt_clear_spares();
}

static u32 user_seg_loads(void)
{
	fault_reset();
	asm volatile(TRY("mov %0, %%ds") : : "r"((u32)SEL_KDATA) : "memory");
	ur[0] = last_fault.count;
	ur[1] = last_fault.vector;
	ur[2] = last_fault.error;
	fault_reset();
	asm volatile(TRY("mov %0, %%ss") : : "r"((u32)SEL_KDATA | 3) : "memory");
	ur[3] = last_fault.count;
	ur[4] = last_fault.vector;
	ur[5] = last_fault.error;
	fault_reset();
	asm volatile(TRY("mov %0, %%es") : : "r"((u32)SEL_KCODE | 3) : "memory");
	ur[6] = last_fault.count;
	ur[7] = last_fault.vector;
	ur[8] = last_fault.error;
	/* A readable DPL 3 code segment is fine in a data segment register:
	 * the kernel finds it in ES at the next observe(). */
	fault_reset();
	asm volatile(TRY("mov %0, %%es") OBSERVE "mov %1, %%es"
		     :
		     : "r"((u32)SEL_UCODE), "r"((u32)SEL_UDATA)
		     : "memory");
	ur[9] = last_fault.count;
	return 0;
}

static void test_seg_loads_cpl3(void)
{
	memset((void *)ur, 0xff, sizeof(ur));
	observe_reset();
	run_user(user_seg_loads, FL_FIXED | FL_IF);
	printf("# cpl 3 mov ds dpl 0 data: %u fault(s), vector %u error 0x%x\n", ur[0], ur[1], ur[2]);
	report("cpl 3 mov ds dpl 0 data", ur[0] == 1 && ur[1] == 13 && ur[2] == SEL_KDATA);
	printf("# cpl 3 mov ss dpl 0 data rpl 3: %u fault(s), vector %u error 0x%x\n", ur[3], ur[4],
	       ur[5]);
	report("cpl 3 mov ss dpl 0 data rpl 3", ur[3] == 1 && ur[4] == 13 && ur[5] == SEL_KDATA);
	printf("# cpl 3 mov es dpl 0 code: %u fault(s), vector %u error 0x%x\n", ur[6], ur[7], ur[8]);
	report("cpl 3 mov es dpl 0 code", ur[6] == 1 && ur[7] == 13 && ur[8] == SEL_KCODE);
	printf("# cpl 3 mov es dpl 3 code: %u fault(s), es 0x%x at the next int 0x80\n", ur[9],
	       seen[0].es);
	report("cpl 3 mov es dpl 3 code (es at the next int 0x80)",
	       ur[9] == 0 && nseen == 1 && seen[0].es == SEL_UCODE);
}

/* ---- LAR / LSL / VERR / VERW --------------------------------------------- */

struct probe {
	u32 lar_zf, lar, lsl_zf, lsl, verr, verw;
};

static void probe_sel(u32 sel, struct probe *p)
{
	u32 v = 0xdeadbeef, l = 0xdeadbeef;
	u8 z1, z2, z3, z4;
	asm volatile("lar %2, %0\n\tsetz %1" : "+r"(v), "=q"(z1) : "r"(sel) : "cc");
	asm volatile("lsl %2, %0\n\tsetz %1" : "+r"(l), "=q"(z2) : "r"(sel) : "cc");
	asm volatile("verr %w1\n\tsetz %0" : "=q"(z3) : "r"(sel) : "cc");
	asm volatile("verw %w1\n\tsetz %0" : "=q"(z4) : "r"(sel) : "cc");
	p->lar_zf = z1;
	p->lar = v;
	p->lsl_zf = z2;
	p->lsl = l;
	p->verr = z3;
	p->verw = z4;
}

static void check_probe(const char *name, const struct probe *p, const struct probe *want)
{
	printf("# %s: lar zf=%u 0x%x, lsl zf=%u 0x%x, verr zf=%u, verw zf=%u\n", name, p->lar_zf,
	       p->lar, p->lsl_zf, p->lsl, p->verr, p->verw);
	report(name, memcmp(p, want, sizeof(*p)) == 0);
}

#define FAILED 0, 0xdeadbeef

static const struct {
	const char *name;
	u32 sel;
	struct probe want;
} probes[] = {
	{"kernel code 0x08", 0x08, {1, 0x00c09b00, 1, 0xffffffff, 1, 0}},
	{"kernel data 0x10", 0x10, {1, 0x00c09300, 1, 0xffffffff, 1, 1}},
	{"user code 0x1b", 0x1b, {1, 0x00c0fb00, 1, 0xffffffff, 1, 0}},
	{"user data 0x23", 0x23, {1, 0x00c0f300, 1, 0xffffffff, 1, 1}},
	{"busy tss 0x28", 0x28, {1, 0x00008b00, 1, 0x67, 0, 0}},
	{"null 0x00", 0x00, {FAILED, FAILED, 0, 0}},
	{"undefined 0x30", 0x30, {FAILED, FAILED, 0, 0}},
	{"beyond the limit 0x80", 0x80, {FAILED, FAILED, 0, 0}},
	{"dpl 0 data with rpl 3 0x13", 0x13, {FAILED, FAILED, 0, 0}},
	{"user data with rpl 0 0x20", 0x20, {1, 0x00c0f300, 1, 0xffffffff, 1, 1}},
	{"ldt descriptor", SEL(GDT_SPARE_FIRST + 0, 0), {1, 0x00008200, 1, 0x0f, 0, 0}},
	{"execute-only code", SEL(GDT_SPARE_FIRST + 1, 0), {1, 0x00c09900, 1, 0xffffffff, 0, 0}},
	{"conforming code dpl 0 with rpl 3", SEL(GDT_SPARE_FIRST + 2, 3),
	 {1, 0x00c09f00, 1, 0xffffffff, 1, 0}},
	{"not-present data", SEL(GDT_SPARE_FIRST + 3, 0), {1, 0x00401300, 1, 0x1234, 1, 1}},
	{"read-only data, 4k granular limit 0x12", SEL(GDT_SPARE_FIRST + 4, 0),
	 {1, 0x00c09100, 1, 0x12fff, 1, 0}},
	{"32-bit call gate", SEL(GDT_SPARE_FIRST + 5, 0), {1, 0x0000ec00, FAILED, 0, 0}},
	{"32-bit interrupt gate", SEL(GDT_SPARE_FIRST + 6, 0), {FAILED, FAILED, 0, 0}},
	{"available 32-bit tss", SEL(GDT_SPARE_FIRST + 7, 0), {1, 0x00008900, 1, 0x67, 0, 0}},
};

static void test_lar_lsl(void)
{
	struct probe p;
	char name[80];

	gdt_set(GDT_SPARE_FIRST + 0, 0x1000, 0xf, ACC_P | ACC_LDT, 0);
	gdt_set(GDT_SPARE_FIRST + 1, 0, 0xfffff, ACC_P | ACC_CODE_XO | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 2, 0, 0xfffff, ACC_P | ACC_CODE_CONF | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 3, 0, 0x1234, ACC_DATA_RW | ACC_ACCESSED, FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 4, 0, 0x12, ACC_P | ACC_DATA_RO | ACC_ACCESSED, FLG_G | FLG_DB);
	/* Gates: selector 0x08, offset 0x1234 (LAR would show offset bits
	 * 20-23). */
	gdt[GDT_SPARE_FIRST + 5] = 0x1234 | (u64)SEL_KCODE << 16 | (u64)(0x8c | ACC_DPL(3)) << 40;
	gdt[GDT_SPARE_FIRST + 6] = 0x1234 | (u64)SEL_KCODE << 16 | (u64)0x8e << 40;
	gdt_set(GDT_SPARE_FIRST + 7, 0x2000, 0x67, ACC_P | ACC_TSS32, 0);

	for (unsigned i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
		probe_sel(probes[i].sel, &p);
		memcpy(name, "lar lsl verr verw ", 18);
		memcpy(name + 18, probes[i].name, strlen(probes[i].name) + 1);
		check_probe(name, &p, &probes[i].want);
	}

	/* 16-bit operand size: LAR writes only the low half. */
	u32 v = 0xffffffff;
	asm volatile("larw %w1, %w0" : "+r"(v) : "r"(SEL_KDATA));
	check_eq("larw keeps the upper half", v, 0xffff9300);
	v = 0xffffffff;
	asm volatile("lslw %w1, %w0" : "+r"(v) : "r"(SEL_TSS));
	check_eq("lslw keeps the upper half", v, 0xffff0067);
	/* The same at CPL 3: user_untraced.c. */
	gdt_clear_spares();
}

/* ---- CPUID ---------------------------------------------------------------- */

#define CPUID_1_EDX 0x07808139 /* FPU PSE TSC MSR CX8 CMOV MMX FXSR SSE SSE2 */
#define CPUID_1_ECX 0x80000000 /* hypervisor */

static void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
	asm volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static u32 user_cpuid(void)
{
	u32 a, b, c, d;
	cpuid(0, &a, &b, &c, &d);
	ur[0] = a >= 1;
	cpuid(1, &a, &b, &c, &d);
	ur[1] = d;
	ur[2] = c;
	return 0;
}

static void test_cpuid(void)
{
	u32 a, b, c, d;
	cpuid(0, &a, &b, &c, &d);
	check_eq("cpuid leaf 0 max >= 1", a >= 1, 1);
	cpuid(1, &a, &b, &c, &d);
	check_eq("cpuid leaf 1 edx", d, CPUID_1_EDX);
	check_eq("cpuid leaf 1 ecx", c, CPUID_1_ECX);
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_cpuid, FL_FIXED | FL_IF);
	check_eq("cpl 3 cpuid leaf 0 max >= 1", ur[0], 1);
	check_eq("cpl 3 cpuid leaf 1 edx", ur[1], CPUID_1_EDX);
	check_eq("cpl 3 cpuid leaf 1 ecx", ur[2], CPUID_1_ECX);
}

void kmain(void)
{
	set_trap_handler(0x80, h_observe);
	test_popf_cpl0();
	test_popf_cpl3();
	test_tables();
	test_seg_reads();
	test_seg_loads();
	test_seg_loads_cpl3();
	test_lar_lsl();
	test_cpuid();
	finish();
}
