/*
 * Native reads and native state changes at CPL 3 that btvmm, by design,
 * does not virtualize.
 *
 * btvmm traces guest kernel mode (CPL 0) and runs guest user mode natively
 * on the host CPU, inside a Linux process (DESIGN.md sections 2 and 3).
 * There a few instructions read the host's state instead of the guest's,
 * and nothing traps:
 *
 *   (a) PUSHF (any native read of EFLAGS) shows the host's IF = 1 and
 *       IOPL = 0, not the guest's virtual IF and IOPL;
 *   (b) MOV from a segment register, PUSH Sreg and MOV Sreg to memory give
 *       btvmm's host selector, not the guest's selector: for a guest GDT
 *       selector the host LDT entry of the same index (0x1b reads 0x1f),
 *       otherwise an LDT slot such as 0xffcf; PUSH Sreg with 32-bit operand
 *       size also writes only two bytes on Intel CPUs, where QEMU writes
 *       four;
 *   (c) LAR, LSL, VERR and VERW judge the host's descriptors (the host GDT
 *       for selectors with TI = 0);
 *   (d) SGDT, SIDT and SMSW (and SLDT, STR) are UMIP-protected: the host
 *       kernel may answer them with its dummy values; where it does not,
 *       the #GP reaches btvmm, which emulates them with the guest's values.
 *
 * Two more classes differ even in what the guest kernel sees, because
 * native instructions change the host's state instead of the guest's:
 *
 *   (e') POPF at CPL 3 with the guest's IOPL = 3 may change IF, but it runs
 *       natively under the host's IOPL 0, which silently keeps IF; btvmm's
 *       virtual IF does not change, and the guest kernel sees the old IF in
 *       the EFLAGS of the next int 0x80 frame (the other flags, AC
 *       included, are as the POPF left them);
 *   (g) a segment load of a selector that the host's GDT also defines for
 *       user mode (0x23, 0x2b, 0x33 and 0x7b on x86-64 Linux: a selector
 *       collision, DESIGN.md section 2) succeeds natively with the host's
 *       descriptor where the guest's own GDT gives #GP (which leaves the
 *       register unchanged); btvmm repairs the register at the next trap,
 *       where the guest kernel finds the null selector in the frame, or
 *       stops the VM where it cannot, as for SS (security_user_ss.c).
 *
 * Each check names the one of (a)-(d), (e') and (g) that makes btvmm
 * differ. Apart from (e') and (g), what the guest kernel sees of user mode
 * (system-call and fault frames, values user code stores in memory) is the
 * guest's under btvmm too: ring3.c and silent.c check the same behaviour
 * that way.
 *
 * Under QEMU every check passes (exit status 1). Under btvmm the kernel
 * prints conformance/user_untraced.btvmm-expected and exits with status 3;
 * on hosts whose kernel answers (d) itself (UMIP emulation for
 * compatibility-mode code, as Linux 6.18 does), the (d) checks fail too and
 * it prints conformance/user_untraced.btvmm-expected.host-umip.
 * So that the output does not depend on the host, (b), (c) and (d) print
 * only whether a value is the one the guest's own state gives, never the
 * value read; (a) prints EFLAGS, whose host part at CPL 3 (IF = 1, IOPL = 0)
 * is the same on every Linux host; (e') prints the EFLAGS of the int 0x80
 * frame, which btvmm builds from its virtual IF and IOPL; (g) prints the
 * number of faults (and the fault, if one) and whether the register in the
 * next int 0x80 frame is the selector loaded or the one from before.
 */
#include "lib.h"

/* Values CPL 3 code leaves for the kernel to check (it cannot print). */
static volatile u32 ur[64];
static volatile u32 user_arg;

/*
 * `int $0x80` from CPL 3 ("observe", for (e') and (g)): the kernel records
 * the user's EFLAGS and data segment registers from the trap frame and
 * returns with nothing changed. seen[i] is the i-th call since
 * observe_reset().
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

/* "# name: the guest's 0x...? yes", then report. */
static void check_guest(const char *name, u32 got, u32 want)
{
	printf("# %s: the guest's 0x%x? %s\n", name, want, got == want ? "yes" : "no");
	report(name, got == want);
}

/* The same for a value that depends on the kernel's layout (an address):
 * "# name: the guest's <what>? yes". */
static void check_guest_addr(const char *name, u32 got, u32 want, const char *what)
{
	printf("# %s: the guest's %s? %s\n", name, what, got == want ? "yes" : "no");
	report(name, got == want);
}

/* ---- (a) PUSHF ------------------------------------------------------------ */

static u32 user_popf(void)
{
	u32 before, after;
	asm volatile("pushfl\n\t"
		     "popl %0\n\t"
		     "pushl %2\n\t"
		     "popfl\n\t"
		     "pushfl\n\t"
		     "popl %1"
		     : "=&r"(before), "=&r"(after)
		     : "r"(user_arg)
		     : "cc");
	ur[0] = before;
	ur[1] = after;
	return 0;
}

/* (a): PUSHF before and after a POPF at CPL 3. ring3.c and silent.c check
 * the same POPFs through the EFLAGS of an int 0x80 frame. */
static void popf_case(const char *name, u32 start, u32 value, u32 want)
{
	char buf[96];
	u32 n = strlen(name);
	user_arg = value;
	ur[0] = ur[1] = 0xdeadbeef;
	run_user(user_popf, start);
	printf("# %s: eflags 0x%x, popf 0x%x\n", name, start, value);
	memcpy(buf, name, n);
	memcpy(buf + n, ": pushf before", 15);
	check_eq(buf, ur[0], start);
	memcpy(buf + n, ": pushf after", 14);
	check_eq(buf, ur[1], want);
}

static u32 user_iopl3(void)
{
	u32 a, b;
	fault_reset();
	asm volatile(TRY("cli") "pushfl\n\tpopl %0\n\t" TRY("sti") "pushfl\n\tpopl %1\n\t" TRY("cli")
		     : "=r"(a), "=r"(b)
		     :
		     : "memory");
	ur[0] = a;
	ur[1] = b;
	ur[2] = last_fault.count;
	return 0;
}

static void test_pushf(void)
{
	/* (a) IF = 0 at CPL 3; POPF cannot set IF or IOPL with IOPL 0. */
	user_arg = 0x3202;
	ur[1] = 0xdeadbeef;
	run_user(user_popf, FL_FIXED);
	check_eq("cpl 3 popf 0x3202 with iopl 0", ur[1], FL_FIXED);

	/* (a) The guest's IF = 0 before, and with IOPL 0 still after. */
	popf_case("cpl 3 iopl 0 set if iopl", FL_FIXED, FL_FIXED | FL_IF | FL_IOPL(3) | FL_CF | FL_ZF,
		  FL_FIXED | FL_CF | FL_ZF);
	/* (a) The guest's IOPL = 3; with it CPL 3 may change IF but not IOPL. */
	popf_case("cpl 3 iopl 3 set if", FL_FIXED | FL_IOPL(3), FL_FIXED | FL_IF,
		  FL_FIXED | FL_IF | FL_IOPL(3));
	popf_case("cpl 3 iopl 3 clear if", FL_FIXED | FL_IF | FL_IOPL(3), FL_FIXED | FL_AC,
		  FL_FIXED | FL_AC | FL_IOPL(3));

	/* (a) IOPL 3: CLI and STI at CPL 3, then PUSHF. */
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_iopl3, FL_FIXED | FL_IOPL(3));
	check_eq("iopl 3: eflags after cli", ur[0] & (FL_IF | FL_IOPL_MASK), FL_IOPL(3));
	check_eq("iopl 3: eflags after sti", ur[1] & (FL_IF | FL_IOPL_MASK), FL_IF | FL_IOPL(3));
	check_eq("iopl 3: no faults", ur[2], 0);
	check_eq("eflags back at cpl 0 (system flags)", read_eflags() & ~FL_ARITH, FL_FIXED);
}

/* ---- (b) segment register reads ------------------------------------------- */

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
		u32 s__; \
		asm volatile("movl $0xdeadbeef, -4(%%esp)\n\t" \
			     "pushl %%" #seg "\n\t" \
			     "popl %0" \
			     : "=r"(s__) \
			     : \
			     : "memory"); \
		s__; \
	})
/* PUSH Sreg with 16-bit operand size over a slot holding 0xdeadbeef:
 * returns the dword at the new ESP - 2 (0xbeef below the pushed word). */
#define PUSHW_SLOT(seg) \
	({ \
		u32 s__; \
		asm volatile("movl $0xdeadbeef, -4(%%esp)\n\t" \
			     "pushw %%" #seg "\n\t" \
			     "movl -2(%%esp), %0\n\t" \
			     "addl $2, %%esp" \
			     : "=r"(s__) \
			     : \
			     : "memory"); \
		s__; \
	})

static u32 user_seg_reads(void)
{
	ur[0] = MOV_FROM(cs);
	ur[1] = MOV_FROM(ss);
	ur[2] = MOV_FROM(ds);
	ur[3] = MOVW_FROM(cs);
	ur[4] = MOV_TO_MEM(ss);
	ur[5] = PUSHL_SLOT(cs);
	ur[6] = PUSHW_SLOT(ss);
	/* ES loaded with the DPL 3 code selector, then read back. */
	u32 v = 0xffffffff;
	asm volatile("mov %1, %%es\n\t"
		     "mov %%es, %0\n\t"
		     "mov %2, %%es"
		     : "+r"(v)
		     : "r"((u32)SEL_UCODE), "r"((u32)SEL_UDATA)
		     : "memory");
	ur[7] = v;
	return 0;
}

/* SYS_LOAD_KDATA (int 0x80): DPL 0 data selectors in the frame's DS and FS,
 * which the IRET back to CPL 3 must null. */
static void h_load_kdata(struct trap_frame *f)
{
	f->ds = SEL_KDATA;
	f->fs = SEL_KDATA;
}

static u32 user_nulled(void)
{
	u32 ds, fs, es;
	asm volatile("int $0x80\n\t"
		     "movl %%ds, %0\n\t"
		     "movl %%fs, %1\n\t"
		     "movl %%es, %2\n\t"
		     "movl %3, %%eax\n\t"
		     "movl %%eax, %%ds\n\t"
		     "movl %%eax, %%fs"
		     : "=&r"(ds), "=&r"(fs), "=&r"(es)
		     : "i"(SEL_UDATA)
		     : "eax", "memory");
	ur[0] = ds;
	ur[1] = fs;
	ur[2] = es;
	return 0;
}

static void test_seg_reads(void)
{
	/* (b) silent.c checks the same reads by loading the value read into
	 * a segment register and finding it in an int 0x80 frame. */
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_seg_reads, FL_FIXED | FL_IF);
	check_guest("cpl 3 mov cs to r32", ur[0], SEL_UCODE);
	check_guest("cpl 3 mov ss to r32", ur[1], SEL_UDATA);
	check_guest("cpl 3 mov ds to r32", ur[2], SEL_UDATA);
	check_guest("cpl 3 mov cs to r16", ur[3], 0xffff0000 | SEL_UCODE);
	check_guest("cpl 3 mov ss to m16", ur[4], 0xdead0000 | SEL_UDATA);
	/* (b), and the slot's upper half: zero under QEMU, 0xdead (two bytes
	 * written) natively on Intel CPUs. */
	check_guest("cpl 3 push cs (32-bit) slot", ur[5], SEL_UCODE);
	check_guest("cpl 3 push ss (16-bit) slot", ur[6], SEL_UDATA << 16 | 0xbeef);
	check_guest("cpl 3 mov es dpl 3 code, then mov from es", ur[7], SEL_UCODE);

	/* (b) ring3.c checks the same IRET through the next int 0x80 frame. */
	set_trap_handler(0x80, h_load_kdata);
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_nulled, FL_FIXED | FL_IF);
	set_trap_handler(0x80, 0);
	check_guest("iret to cpl 3 nulls ds holding dpl 0 data", ur[0], 0);
	check_guest("iret to cpl 3 nulls fs holding dpl 0 data", ur[1], 0);
	check_guest("iret to cpl 3 keeps es holding dpl 3 data", ur[2], SEL_UDATA);
}

/* ---- (c) LAR / LSL / VERR / VERW ------------------------------------------- */

struct probe {
	u32 lar_zf, lar, lsl_zf, lsl, verr, verw;
};

static void probe_sel(u32 sel, volatile struct probe *p)
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

#define FAILED 0, 0xdeadbeef
#define NPROBES 5

static const u32 probe_sels[NPROBES] = {0x08, 0x1b, 0x23, 0x28, 0x10 | 3};

/* What the guest's GDT gives at CPL 3 (as QEMU computes it). */
static const struct {
	const char *name;
	struct probe want;
} user_probes[NPROBES] = {
	{"cpl 3 lar lsl verr verw kernel code 0x08", {FAILED, FAILED, 0, 0}},
	{"cpl 3 lar lsl verr verw user code 0x1b", {1, 0x00c0fb00, 1, 0xffffffff, 1, 0}},
	{"cpl 3 lar lsl verr verw user data 0x23", {1, 0x00c0f300, 1, 0xffffffff, 1, 1}},
	{"cpl 3 lar lsl verr verw tss 0x28", {FAILED, FAILED, 0, 0}},
	{"cpl 3 lar lsl verr verw kernel data 0x13", {FAILED, FAILED, 0, 0}},
};

static u32 user_lar(void)
{
	for (unsigned i = 0; i < NPROBES; i++)
		probe_sel(probe_sels[i], (volatile struct probe *)&ur[i * 6]);
	return 0;
}

static const char *yes_no(int b)
{
	return b ? "yes" : "no";
}

static void test_lar_lsl(void)
{
	/* (c) for each selector: the host GDT decides. */
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_lar, FL_FIXED | FL_IF);
	for (unsigned i = 0; i < NPROBES; i++) {
		const volatile struct probe *p = (const volatile struct probe *)&ur[i * 6];
		const struct probe *w = &user_probes[i].want;
		int lar = p->lar_zf == w->lar_zf && p->lar == w->lar;
		int lsl = p->lsl_zf == w->lsl_zf && p->lsl == w->lsl;
		int verr = p->verr == w->verr, verw = p->verw == w->verw;
		printf("# %s: as the guest's gdt says? lar %s, lsl %s, verr %s, verw %s\n",
		       user_probes[i].name, yes_no(lar), yes_no(lsl), yes_no(verr), yes_no(verw));
		report(user_probes[i].name, lar && lsl && verr && verw);
	}
}

/* ---- (d) SGDT / SIDT / SLDT / STR / SMSW ------------------------------------- */

static u64 ldt[2] ALIGNED(8);
#define LDT_SEL SEL(GDT_SPARE_FIRST, 0)

static u32 user_tables(void)
{
	struct dtr g, i;
	u32 m = 0xffffffff;
	u16 l = 0xffff, t = 0xffff;
	sgdt(&g);
	sidt(&i);
	asm volatile("sldt %0" : "=m"(l));
	asm volatile("str %0" : "=m"(t));
	asm volatile("smsw %0" : "+r"(m));
	ur[0] = g.limit;
	ur[1] = g.base;
	ur[2] = i.limit;
	ur[3] = i.base;
	ur[4] = l;
	ur[5] = t;
	ur[6] = m;
	return 0;
}

static void test_tables(void)
{
	/* (d) for each: the host kernel's UMIP emulation may answer. */
	gdt_set(GDT_SPARE_FIRST, (u32)ldt, sizeof(ldt) - 1, ACC_P | ACC_LDT, 0);
	lldt(LDT_SEL);
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_tables, FL_FIXED | FL_IF);
	lldt(0);
	gdt_clear_spares();
	check_guest("cpl 3 sgdt limit", ur[0], GDT_LIMIT);
	check_guest_addr("cpl 3 sgdt base", ur[1], (u32)gdt, "gdt address");
	check_guest("cpl 3 sidt limit", ur[2], 0x7ff);
	check_guest_addr("cpl 3 sidt base", ur[3], (u32)idt, "idt address");
	check_guest("cpl 3 sldt", ur[4], LDT_SEL);
	check_guest("cpl 3 str", ur[5], SEL_TSS);
	check_guest("cpl 3 smsw r32", ur[6], CR0_LIB);
}

/* ---- (e') POPF changing IF with the guest's IOPL 3 ------------------------- */

static u32 user_popf_observe(void)
{
	asm volatile("pushl %0\n\t"
		     "popfl\n\t" OBSERVE
		     :
		     : "r"(user_arg)
		     : "cc", "memory");
	return 0;
}

/* (e'): the EFLAGS the kernel sees in the int 0x80 frame right after a
 * POPF at CPL 3. silent.c checks the EFLAGS before it, which matches. */
static void popf_observe_case(const char *name, u32 start, u32 value, u32 want)
{
	user_arg = value;
	observe_reset();
	run_user(user_popf_observe, start);
	printf("# %s: eflags 0x%x, popf 0x%x, then int 0x80\n", name, start, value);
	check_eq(name, nseen == 1 ? seen[0].eflags : 0xdeadbeef, want);
}

static void test_popf_iopl3(void)
{
	set_trap_handler(0x80, h_observe);
	/* (e') With IOPL 3, CPL 3 may change IF but still not IOPL. */
	popf_observe_case("cpl 3 iopl 3 set if: eflags after", FL_FIXED | FL_IOPL(3),
			  FL_FIXED | FL_IF, FL_FIXED | FL_IF | FL_IOPL(3));
	popf_observe_case("cpl 3 iopl 3 clear if: eflags after", FL_FIXED | FL_IF | FL_IOPL(3),
			  FL_FIXED | FL_AC, FL_FIXED | FL_AC | FL_IOPL(3));
	set_trap_handler(0x80, 0);
	check_eq("eflags back at cpl 0 after the iopl 3 popfs (system flags)",
		 read_eflags() & ~FL_ARITH, FL_FIXED);
}

/* ---- (g) segment loads of selectors the host's GDT defines --------------- */

#define NCOLLISIONS 3

static const struct {
	const char *name, *seg;
	u32 sel;
} collisions[NCOLLISIONS] = {
	/* Guest: GDT index 6, never defined. Host: __USER_CS (64-bit code). */
	{"cpl 3 mov 0x33 to ds", "ds", 0x33},
	/* Guest: the busy TSS with RPL 3. Host: __USER_DS. */
	{"cpl 3 mov 0x2b to es", "es", 0x2b},
	/* Guest: spare GDT index 15, zero. Host: the per-CPU segment. */
	{"cpl 3 mov 0x7b to fs", "fs", 0x7b},
};

/*
 * Load collisions[i].sel into seg (it must fault: the guest's GDT has no
 * usable descriptor there), let the kernel see seg at an int 0x80, then
 * reload the user data selector. Nothing between the load and the int 0x80
 * touches memory, so that a load that wrongly succeeds with the host's
 * descriptor does no harm before the trap.
 */
#define LOAD_OBSERVE(seg, i) \
	do { \
		fault_reset(); \
		asm volatile(TRY("mov %0, %%" #seg) OBSERVE "mov %1, %%" #seg \
			     : \
			     : "r"(collisions[i].sel), "r"((u32)SEL_UDATA) \
			     : "memory"); \
		ur[3 * (i)] = last_fault.count; \
		ur[3 * (i) + 1] = last_fault.vector; \
		ur[3 * (i) + 2] = last_fault.error; \
	} while (0)

static u32 user_collisions(void)
{
	LOAD_OBSERVE(ds, 0);
	LOAD_OBSERVE(es, 1);
	LOAD_OBSERVE(fs, 2);
	return 0;
}

static void test_collisions(void)
{
	/* (g) for each: the guest gets #GP(selector) and the register keeps
	 * the user data selector; natively the load succeeds. */
	gdt_clear_spares();
	set_trap_handler(0x80, h_observe);
	memset((void *)ur, 0xff, sizeof(ur));
	observe_reset();
	run_user(user_collisions, FL_FIXED | FL_IF);
	set_trap_handler(0x80, 0);
	for (unsigned i = 0; i < NCOLLISIONS; i++) {
		u32 count = ur[3 * i], vector = ur[3 * i + 1], error = ur[3 * i + 2];
		u32 reg = 0xffffffff;
		if (nseen == NCOLLISIONS)
			reg = i == 0 ? seen[i].ds : i == 1 ? seen[i].es : seen[i].fs;
		printf("# %s: %u fault(s)", collisions[i].name, count);
		if (count == 1)
			printf(", vector %u error 0x%x", vector, error);
		printf("; %s at the next int 0x80: the 0x%x loaded? %s, the 0x%x from before? %s\n",
		       collisions[i].seg, collisions[i].sel, yes_no(reg == collisions[i].sel),
		       SEL_UDATA, yes_no(reg == SEL_UDATA));
		report(collisions[i].name, count == 1 && vector == 13 &&
						   error == (collisions[i].sel & ~3u) &&
						   nseen == NCOLLISIONS && reg == SEL_UDATA);
	}
}

void kmain(void)
{
	test_pushf();
	test_seg_reads();
	test_lar_lsl();
	test_tables();
	test_popf_iopl3();
	test_collisions();
	finish();
}
