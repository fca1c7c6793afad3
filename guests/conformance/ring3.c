/*
 * A CPL 3 task entered with IRET (DPL 3 code, data and stack segments, TSS
 * SS0:ESP0 for the way back): system calls through an `int $0x80` gate of
 * DPL 3, the kernel's view of the user frame (CS, EIP, EFLAGS, SS, ESP),
 * privileged instructions at CPL 3 (#GP(0) each), INT n through DPL 0
 * gates, user exceptions, POPF at CPL 3, IOPL 3, CR4.TSD, data segment
 * registers nulled by an IRET to CPL 3, a moved ESP0, and the exit system
 * call.
 *
 * CPL 3 code cannot print: it leaves results in memory (ur[]) or hands them
 * to the kernel through system calls, and the kernel prints and checks.
 * The kernel sees the user's EFLAGS and segment registers only in the frame
 * of a system call (SYS_GETFLAGS, and the DS/ES/FS/GS the trap stub saves):
 * user code never reads them itself. Native reads at CPL 3 (PUSHF, MOV from
 * a segment register) are checked in user_untraced.c, because btvmm runs
 * guest user mode natively, where they show the host's values.
 *
 * User code runs with IF = 1 (as under any real OS) except where a check
 * needs IF = 0.
 */
#include "lib.h"

enum {
	SYS_EXIT = 0,
	SYS_WRITE = 1,
	SYS_ADD = 2,
	SYS_FRAME = 3,
	SYS_LOAD_KDATA = 4,
	SYS_GETFLAGS = 5, /* returns the caller's EFLAGS, from the frame */
};

static volatile u32 ur[64];

/* The last frame seen by the system-call handler. */
static volatile struct {
	u32 count, eip, cs, eflags, user_esp, user_ss, ds, es, fs, gs, frame_end, ss_inside;
} sys;

static void h_syscall(struct trap_frame *f)
{
	u32 nr = f->eax;

	sys.count++;
	sys.eip = f->eip;
	sys.cs = f->cs & 0xffff;
	sys.eflags = f->eflags;
	sys.user_esp = f->user_esp;
	sys.user_ss = f->user_ss & 0xffff;
	sys.ds = f->ds & 0xffff;
	sys.es = f->es & 0xffff;
	sys.fs = f->fs & 0xffff;
	sys.gs = f->gs & 0xffff;
	sys.frame_end = (u32)f + sizeof(*f);
	sys.ss_inside = READ_SEG(ss);

	switch (nr) {
	case SYS_EXIT:
		printf("# sys_exit(0x%x)\n", f->ebx);
		user_return(f->ebx);
	case SYS_WRITE: {
		const char *s = (const char *)f->ebx;
		printf("# sys_write(len %u): ", f->ecx);
		for (u32 i = 0; i < f->ecx; i++)
			putc(s[i]);
		putc('\n');
		f->eax = f->ecx;
		break;
	}
	case SYS_ADD:
		printf("# sys_add(0x%x, 0x%x) = 0x%x\n", f->ebx, f->ecx, f->ebx + f->ecx);
		f->eax = f->ebx + f->ecx;
		break;
	case SYS_FRAME:
		printf("# sys_frame: cs 0x%x ss 0x%x ds 0x%x es 0x%x eflags 0x%x\n", sys.cs, sys.user_ss,
		       sys.ds, sys.es, sys.eflags);
		f->eax = 0;
		break;
	case SYS_LOAD_KDATA:
		/* DPL 0 data selectors in DS and FS: the IRET back to CPL 3
		 * must null them. */
		f->ds = SEL_KDATA;
		f->fs = SEL_KDATA;
		f->eax = 0;
		break;
	case SYS_GETFLAGS:
		f->eax = f->eflags;
		break;
	default:
		printf("# sys_unknown(0x%x)\n", nr);
		f->eax = 0xffffffda; /* -ENOSYS */
		break;
	}
}

static inline u32 syscall2(u32 nr, u32 a, u32 b)
{
	u32 r;
	asm volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b) : "memory");
	return r;
}

/* ---- the main user program ---------------------------------------------- */

static const char greeting[] = "hello from ring 3";

/* Privileged instructions tried at CPL 3; each must raise #GP(0). */
static void priv_record(u32 i)
{
	ur[16 + 2 * i] = last_fault.count;
	ur[17 + 2 * i] = last_fault.vector << 16 | last_fault.error;
}

static const char *const priv_names[] = {
	"cli", "sti", "hlt", "in from 0x3ff", "out to 0x3ff", "insb", "outsb", "mov from cr0",
	"mov to cr3", "mov from dr7", "lgdt", "lidt", "lldt", "ltr", "rdmsr", "wrmsr", "invd",
	"wbinvd", "invlpg", "clts", "lmsw", "rdpmc with cr4.pce clear", "sysexit",
};
#define NPRIV (sizeof(priv_names) / sizeof(priv_names[0]))

static u32 user_main(void)
{
	static struct dtr d;

	ur[0] = syscall2(SYS_WRITE, (u32)greeting, sizeof(greeting) - 1);
	ur[1] = syscall2(SYS_ADD, 40, 2);
	ur[2] = syscall2(99, 1, 2);

	fault_reset();
	asm volatile(TRY("cli") : : : "memory");
	priv_record(0);
	fault_reset();
	asm volatile(TRY("sti") : : : "memory");
	priv_record(1);
	fault_reset();
	asm volatile(TRY("hlt") : : : "memory");
	priv_record(2);
	fault_reset();
	asm volatile(TRY("inb %%dx, %%al") : : "d"(0x3ff) : "eax", "memory");
	priv_record(3);
	fault_reset();
	asm volatile(TRY("outb %%al, %%dx") : : "d"(0x3ff), "a"(0) : "memory");
	priv_record(4);
	fault_reset();
	asm volatile(TRY("insb") : : "D"(&ur[60]), "d"(0x3ff) : "memory");
	priv_record(5);
	fault_reset();
	asm volatile(TRY("outsb") : : "S"(&ur[60]), "d"(0x3ff) : "memory");
	priv_record(6);
	fault_reset();
	asm volatile(TRY("movl %%cr0, %%eax") : : : "eax", "memory");
	priv_record(7);
	fault_reset();
	asm volatile(TRY("movl %%eax, %%cr3") : : "a"(0) : "memory");
	priv_record(8);
	fault_reset();
	asm volatile(TRY("movl %%db7, %%eax") : : : "eax", "memory");
	priv_record(9);
	fault_reset();
	asm volatile(TRY("lgdt %0") : : "m"(d) : "memory");
	priv_record(10);
	fault_reset();
	asm volatile(TRY("lidt %0") : : "m"(d) : "memory");
	priv_record(11);
	fault_reset();
	asm volatile(TRY("lldt %%ax") : : "a"(0) : "memory");
	priv_record(12);
	fault_reset();
	asm volatile(TRY("ltr %%ax") : : "a"(SEL_TSS) : "memory");
	priv_record(13);
	fault_reset();
	asm volatile(TRY("rdmsr") : : "c"(0x174) : "eax", "edx", "memory");
	priv_record(14);
	fault_reset();
	asm volatile(TRY("wrmsr") : : "c"(0x174), "a"(0), "d"(0) : "memory");
	priv_record(15);
	fault_reset();
	asm volatile(TRY("invd") : : : "memory");
	priv_record(16);
	fault_reset();
	asm volatile(TRY("wbinvd") : : : "memory");
	priv_record(17);
	fault_reset();
	asm volatile(TRY("invlpg (%%eax)") : : "a"(0) : "memory");
	priv_record(18);
	fault_reset();
	asm volatile(TRY("clts") : : : "memory");
	priv_record(19);
	fault_reset();
	asm volatile(TRY("lmsw %%ax") : : "a"(0) : "memory");
	priv_record(20);
	fault_reset();
	asm volatile(TRY("rdpmc") : : "c"(0) : "eax", "edx", "memory");
	priv_record(21);
	fault_reset();
	asm volatile(TRY("sysexit") : : : "memory");
	priv_record(22);

	/* INT n through DPL 0 gates: #GP(n * 8 + 2). */
	fault_reset();
	asm volatile(TRY("int $0x40") : : : "memory");
	ur[4] = last_fault.count;
	ur[5] = last_fault.vector << 16 | last_fault.error;
	fault_reset();
	asm volatile(TRY("int3") : : : "memory");
	ur[6] = last_fault.count;
	ur[7] = last_fault.vector << 16 | last_fault.error;
	fault_reset();
	asm volatile("movl $0x7fffffff, %%eax\n\taddl $1, %%eax\n\t" TRY("into") : : : "eax", "cc");
	ur[8] = last_fault.count;
	ur[9] = last_fault.vector << 16 | last_fault.error;

	/* A user exception: the frame records CPL 3. */
	fault_reset();
	asm volatile(TRY("ud2") : : : "memory");
	ur[10] = last_fault.count;
	ur[11] = last_fault.vector << 16 | last_fault.error;
	ur[12] = last_fault.cs;

	/* POPF at CPL 3 with IOPL 0: IF and IOPL silently unchanged (IF is 0
	 * here: run_user() entered with IF = 0). The kernel reports the EFLAGS
	 * the next system call saw. */
	u32 fl;
	asm volatile("pushl $0x3202\n\t"
		     "popfl\n\t"
		     "int $0x80"
		     : "=a"(fl)
		     : "a"(SYS_GETFLAGS)
		     : "cc", "memory");
	ur[13] = fl;

	syscall2(SYS_EXIT, 0x77, 0);
	return 0xdead; /* not reached */
}

/* One SYS_FRAME call with known flags; the kernel then checks the frame
 * its handler saw against the ESP and EIP the user code recorded. */
static u32 user_frame(void)
{
	u32 r, esp_at_int, eip_after;
	asm volatile("pushl $0x8c3\n\t" /* OF SF ZF CF */
		     "popfl\n\t"
		     "movl $1f, %2\n\t"
		     "movl %%esp, %%ebx\n\t"
		     "movl %%ebx, %1\n\t"
		     "int $0x80\n"
		     "1:"
		     : "=a"(r), "=m"(esp_at_int), "=m"(eip_after)
		     : "a"(SYS_FRAME)
		     : "ebx", "memory", "cc");
	ur[0] = esp_at_int;
	ur[1] = eip_after;
	return r;
}

static void test_frame(void)
{
	memset((void *)&sys, 0, sizeof(sys));
	run_user(user_frame, FL_FIXED | FL_IF);
	check_eq("frame: one system call", sys.count, 1);
	check_eq("frame: user cs", sys.cs, SEL_UCODE);
	check_eq("frame: user ss", sys.user_ss, SEL_UDATA);
	check_eq("frame: user esp - esp at the int", sys.user_esp - ur[0], 0);
	check_eq("frame: user eip - after the int", sys.eip - ur[1], 0);
	check_eq("frame: user eflags", sys.eflags, 0x8c3 | FL_IF);
	check_eq("frame: user ds", sys.ds, SEL_UDATA);
	check_eq("frame: user es", sys.es, SEL_UDATA);
	check_eq("frame: ss in the handler (tss.ss0)", sys.ss_inside, SEL_KDATA);
	check_eq("frame: ends at tss.esp0", sys.frame_end - (u32)trap_stack_top, 0);

	/* ESP0 is read from the TSS on every entry. */
	static u8 other_stack[2048] ALIGNED(16);
	tss.esp0 = (u32)(other_stack + sizeof(other_stack));
	memset((void *)&sys, 0, sizeof(sys));
	run_user(user_frame, FL_FIXED | FL_IF);
	check_eq("frame: ends at a moved tss.esp0",
		 sys.frame_end - (u32)(other_stack + sizeof(other_stack)), 0);
	tss.esp0 = (u32)trap_stack_top;
}

static void test_program_results(void)
{
	memset((void *)ur, 0xff, sizeof(ur));
	/* IF = 0: the POPF check needs it. */
	u32 code = run_user(user_main, FL_FIXED);
	check_eq("exit code from sys_exit", code, 0x77);
	check_eq("sys_write returned the length", ur[0], sizeof(greeting) - 1);
	check_eq("sys_add(40, 2)", ur[1], 42);
	check_eq("unknown system call returns -enosys", ur[2], 0xffffffda);

	char name[64];
	for (u32 i = 0; i < NPRIV; i++) {
		u32 n = strlen(priv_names[i]);
		memcpy(name, "cpl 3 ", 6);
		memcpy(name + 6, priv_names[i], n + 1);
		printf("# %s: %u fault(s), vector %u error 0x%x\n", name, ur[16 + 2 * i],
		       ur[17 + 2 * i] >> 16, ur[17 + 2 * i] & 0xffff);
		report(name, ur[16 + 2 * i] == 1 && ur[17 + 2 * i] == (13u << 16 | 0));
	}
	printf("# cpl 3 int 0x40 (dpl 0 gate): vector %u error 0x%x\n", ur[5] >> 16, ur[5] & 0xffff);
	report("cpl 3 int 0x40 (dpl 0 gate)", ur[4] == 1 && ur[5] == (13u << 16 | (0x40 * 8 + 2)));
	printf("# cpl 3 int3 (dpl 0 gate): vector %u error 0x%x\n", ur[7] >> 16, ur[7] & 0xffff);
	report("cpl 3 int3 (dpl 0 gate)", ur[6] == 1 && ur[7] == (13u << 16 | (3 * 8 + 2)));
	printf("# cpl 3 into (dpl 0 gate): vector %u error 0x%x\n", ur[9] >> 16, ur[9] & 0xffff);
	report("cpl 3 into (dpl 0 gate)", ur[8] == 1 && ur[9] == (13u << 16 | (4 * 8 + 2)));
	printf("# cpl 3 ud2: vector %u error 0x%x cs 0x%x\n", ur[11] >> 16, ur[11] & 0xffff, ur[12]);
	report("cpl 3 ud2", ur[10] == 1 && ur[11] == (6u << 16) && ur[12] == SEL_UCODE);
	check_eq("cpl 3 popf 0x3202 with iopl 0, eflags at the next int 0x80", ur[13], FL_FIXED);
}

/* ---- INT3 through a DPL 3 gate --------------------------------------------- */

static volatile struct {
	u32 count, vector, eip, cs, ss, esp;
} bp;

static void h_bp(struct trap_frame *f)
{
	bp.count++;
	bp.vector = f->vector;
	bp.eip = f->eip;
	bp.cs = f->cs & 0xffff;
	bp.ss = f->user_ss & 0xffff;
	bp.esp = f->user_esp;
}

static u32 user_int3(void)
{
	u32 next, esp;
	asm volatile("movl $1f, %0\n\t"
		     "movl %%esp, %1\n\t"
		     "int3\n"
		     "1:"
		     : "=&r"(next), "=&r"(esp)
		     :
		     : "memory");
	ur[0] = next;
	ur[1] = esp;
	return 0;
}

static void test_int3_dpl3(void)
{
	idt_set_default(3, GATE_INT32 | GATE_DPL(3));
	set_trap_handler(3, h_bp);
	memset((void *)&bp, 0, sizeof(bp));
	run_user(user_int3, FL_FIXED | FL_IF);
	check_eq("cpl 3 int3 (dpl 3 gate): traps", bp.count, 1);
	check_eq("cpl 3 int3 (dpl 3 gate): vector", bp.vector, 3);
	check_eq("cpl 3 int3 (dpl 3 gate): eip - next instruction", bp.eip - ur[0], 0);
	check_eq("cpl 3 int3 (dpl 3 gate): cs", bp.cs, SEL_UCODE);
	check_eq("cpl 3 int3 (dpl 3 gate): ss", bp.ss, SEL_UDATA);
	check_eq("cpl 3 int3 (dpl 3 gate): esp - esp at the int3", bp.esp - ur[1], 0);
	set_trap_handler(3, 0);
	idt_set_default(3, GATE_INT32);
}

/* ---- IOPL 3 ----------------------------------------------------------------- */

/* CLI and STI at CPL 3 with IOPL 3; the EFLAGS after each come from the
 * frame of a SYS_GETFLAGS call. */
static u32 user_iopl3(void)
{
	u32 a, b;
	fault_reset();
	asm volatile("movb $0x3c, %%al\n\t"
		     "movw $0x3ff, %%dx\n\t" TRY("outb %%al, %%dx") "movb $0, %%al\n\t" TRY(
			     "inb %%dx, %%al") "movzbl %%al, %0"
		     : "=a"(a)
		     :
		     : "edx", "memory");
	ur[0] = a;
	asm volatile(TRY("cli")
		     "movl %2, %%eax\n\t"
		     "int $0x80\n\t"
		     "movl %%eax, %0\n\t"
		     TRY("sti")
		     "movl %2, %%eax\n\t"
		     "int $0x80\n\t"
		     "movl %%eax, %1\n\t"
		     TRY("cli")
		     : "=&r"(a), "=&r"(b)
		     : "i"(SYS_GETFLAGS)
		     : "eax", "memory");
	ur[1] = a;
	ur[2] = b;
	ur[3] = last_fault.count;
	return 0;
}

static void test_iopl3(void)
{
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_iopl3, FL_FIXED | FL_IF | FL_IOPL(3));
	check_eq("iopl 3: out/in the scratch register", ur[0], 0x3c);
	check_eq("iopl 3: eflags at the next int 0x80 after cli", ur[1] & (FL_IF | FL_IOPL_MASK),
		 FL_IOPL(3));
	check_eq("iopl 3: eflags at the next int 0x80 after sti", ur[2] & (FL_IF | FL_IOPL_MASK),
		 FL_IF | FL_IOPL(3));
	check_eq("iopl 3: no faults", ur[3], 0);
}

/* ---- CR4.TSD ---------------------------------------------------------------- */

static u32 user_rdtsc(void)
{
	fault_reset();
	asm volatile(TRY("rdtsc") : : : "eax", "edx");
	ur[0] = last_fault.count;
	ur[1] = last_fault.vector << 16 | last_fault.error;
	return 0;
}

static void test_tsd(void)
{
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_rdtsc, FL_FIXED | FL_IF);
	check_eq("cpl 3 rdtsc with cr4.tsd clear: faults", ur[0], 0);
	write_cr4(0x4);
	run_user(user_rdtsc, FL_FIXED | FL_IF);
	write_cr4(0);
	check_eq("cpl 3 rdtsc with cr4.tsd set: faults", ur[0], 1);
	check_eq("cpl 3 rdtsc with cr4.tsd set: #gp(0)", ur[1], 13u << 16);
}

/* ---- IRET to CPL 3 nulls DPL 0 data segment registers ------------------------ */

/* SYS_LOAD_KDATA puts DPL 0 data selectors in the frame's DS and FS; the
 * next system call shows what the IRET back to CPL 3 left in DS, ES and FS
 * (the trap stub saves them). */
static u32 user_nulled(void)
{
	u32 nr = SYS_LOAD_KDATA;
	asm volatile("int $0x80\n\t"
		     "movl %1, %%eax\n\t"
		     "int $0x80\n\t"
		     "movl %2, %%eax\n\t"
		     "movl %%eax, %%ds\n\t"
		     "movl %%eax, %%fs"
		     : "+a"(nr)
		     : "i"(SYS_GETFLAGS), "i"(SEL_UDATA)
		     : "memory");
	return 0;
}

static void test_nulled_segments(void)
{
	memset((void *)&sys, 0xff, sizeof(sys));
	sys.count = 0;
	run_user(user_nulled, FL_FIXED | FL_IF);
	check_eq("iret to cpl 3 nulls ds holding dpl 0 data (next int 0x80 frame)", sys.ds, 0);
	check_eq("iret to cpl 3 nulls fs holding dpl 0 data (next int 0x80 frame)", sys.fs, 0);
	check_eq("iret to cpl 3 keeps es holding dpl 3 data (next int 0x80 frame)", sys.es, SEL_UDATA);
	check_eq("iret to cpl 3 keeps gs holding dpl 3 data (next int 0x80 frame)", sys.gs, SEL_UDATA);
}

void kmain(void)
{
	set_trap_handler(0x80, h_syscall);
	test_frame();
	test_program_results();
	test_int3_dpl3();
	test_iopl3();
	test_tsd();
	test_nulled_segments();
	check_eq("back at cpl 0: cs", READ_SEG(cs), SEL_KCODE);
	check_eq("back at cpl 0: eflags (system flags)", read_eflags() & ~FL_ARITH, FL_FIXED);
	finish();
}
