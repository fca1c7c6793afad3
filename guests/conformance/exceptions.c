/*
 * Interrupts and exceptions at CPL 0: INT n, INT3, INTO, BOUND, divide
 * errors, invalid opcodes, #NM from CR0.TS/EM, #GP and #NP from segment
 * loads and IDT gates, nested faults, IRET faults, single-step traps. Each
 * check prints the vector and error code the handler saw, where the pushed
 * EIP pointed (relative to the instruction) and whether the handler could
 * resume where it chose.
 *
 * TRY() sites prove the pushed EIP: the library finds the fault in its table
 * by the pushed EIP (the instruction for faults, the next instruction for
 * TRY_TRAP() traps) and reports anything else as an unexpected trap.
 */
#include "lib.h"

/* What the registered handlers saw. */
static volatile struct {
	u32 count, vector, error, eip, cs, eflags, eflags_inside, eax, ebx, ecx, edx;
} seen;
static volatile u32 resume_at;

static void seen_reset(void)
{
	memset((void *)&seen, 0, sizeof(seen));
	seen.vector = seen.error = 0xffffffff;
}

static void record(struct trap_frame *f)
{
	seen.count++;
	seen.vector = f->vector;
	seen.error = f->error;
	seen.eip = f->eip;
	seen.cs = f->cs & 0xffff;
	seen.eflags = f->eflags;
	seen.eflags_inside = read_eflags();
	seen.eax = f->eax;
	seen.ebx = f->ebx;
	seen.ecx = f->ecx;
	seen.edx = f->edx;
}

/* Records, then returns to the instruction after INT n (the pushed EIP). */
static void h_record(struct trap_frame *f)
{
	record(f);
	f->eax = f->eax * 3 + 1;
}

/* Records, then resumes at resume_at (for faults: skips the instruction). */
static void h_resume(struct trap_frame *f)
{
	record(f);
	f->eip = resume_at;
}

static void test_int_n(void)
{
	u32 ret_eip, eax = 5, esp_before, esp_after;

	set_trap_handler(0x40, h_record);
	seen_reset();
	asm volatile("movl %%esp, %2\n\t"
		     "movl $1f, %0\n\t"
		     "int $0x40\n"
		     "1:\n\t"
		     "movl %%esp, %3"
		     : "=&r"(ret_eip), "+a"(eax), "=m"(esp_before), "=m"(esp_after)
		     :
		     : "memory");
	check_eq("int 0x40 handler ran once", seen.count, 1);
	check_eq("int 0x40 vector", seen.vector, 0x40);
	check_eq("int 0x40 pushed eip - next instruction", seen.eip - ret_eip, 0);
	check_eq("int 0x40 pushed cs", seen.cs, SEL_KCODE);
	check_eq("int 0x40 pushed eflags (system flags)", seen.eflags & ~FL_ARITH, FL_FIXED);
	check_eq("int 0x40 handler changed eax", eax, 16);
	check_eq("int 0x40 esp balanced", esp_after - esp_before, 0);
	set_trap_handler(0x40, 0);

	set_trap_handler(0x80, h_record);
	seen_reset();
	u32 ebx = 0x11111111, ecx = 0x22222222, edx = 0x33333333;
	eax = 0x100;
	asm volatile("movl $1f, %0\n\t"
		     "int $0x80\n"
		     "1:"
		     : "=&r"(ret_eip), "+a"(eax)
		     : "b"(ebx), "c"(ecx), "d"(edx)
		     : "memory");
	check_eq("int 0x80 vector", seen.vector, 0x80);
	check_eq("int 0x80 pushed eip - next instruction", seen.eip - ret_eip, 0);
	report("int 0x80 handler saw ebx ecx edx",
	       seen.ebx == ebx && seen.ecx == ecx && seen.edx == edx);
	check_eq("int 0x80 return value in eax", eax, 0x301);
	set_trap_handler(0x80, 0);
}

/* Interrupt gates clear IF in the handler, trap gates keep it. */
static void test_gate_if(void)
{
	set_trap_handler(0x42, h_record);
	set_trap_handler(0x43, h_record);
	idt_set_default(0x43, GATE_TRAP32);
	seen_reset();
	asm volatile("sti\n\tint $0x42\n\tcli" : : "a"(0) : "memory");
	check_eq("interrupt gate: pushed eflags.if", seen.eflags & FL_IF, FL_IF);
	check_eq("interrupt gate: if inside the handler", seen.eflags_inside & FL_IF, 0);
	seen_reset();
	asm volatile("sti\n\tint $0x43\n\tcli" : : "a"(0) : "memory");
	check_eq("trap gate: pushed eflags.if", seen.eflags & FL_IF, FL_IF);
	check_eq("trap gate: if inside the handler", seen.eflags_inside & FL_IF, FL_IF);
	check_eq("if after the gate tests", read_eflags() & FL_IF, 0);
	idt_set_default(0x43, GATE_INT32);
	set_trap_handler(0x42, 0);
	set_trap_handler(0x43, 0);
}

static void test_int3_into_bound(void)
{
	u32 start, next;

	set_trap_handler(3, h_record);
	seen_reset();
	asm volatile("movl $1f, %0\n\t"
		     "movl $2f, %1\n"
		     "1:\n\t"
		     "int3\n"
		     "2:"
		     : "=&r"(start), "=&r"(next)
		     : "a"(0)
		     : "memory");
	check_eq("int3 vector", seen.vector, 3);
	check_eq("int3 is one byte", next - start, 1);
	check_eq("int3 pushed eip - next instruction", seen.eip - next, 0);
	seen_reset();
	asm volatile("movl $1f, %0\n\t"
		     "movl $2f, %1\n"
		     "1:\n\t"
		     ".byte 0xcd, 0x03\n" /* int $3, two bytes */
		     "2:"
		     : "=&r"(start), "=&r"(next)
		     : "a"(0)
		     : "memory");
	check_eq("int $3 vector", seen.vector, 3);
	check_eq("int $3 is two bytes", next - start, 2);
	check_eq("int $3 pushed eip - next instruction", seen.eip - next, 0);
	set_trap_handler(3, 0);

	fault_reset();
	asm volatile("movl $0x7fffffff, %%eax\n\t"
		     "addl $1, %%eax\n\t" TRY_TRAP("into")
		     :
		     :
		     : "eax", "cc");
	check_fault("into with of set", 4, 0);
	fault_reset();
	asm volatile("movl $1, %%eax\n\t"
		     "addl $1, %%eax\n\t" TRY_TRAP("into")
		     :
		     :
		     : "eax", "cc");
	check_no_fault("into with of clear");

	static const s32 bounds[2] = {10, 20};
	fault_reset();
	asm volatile(TRY("bound %0, %1") : : "r"(30), "m"(bounds));
	check_fault("bound above the upper bound", 5, 0);
	fault_reset();
	asm volatile(TRY("bound %0, %1") : : "r"(9), "m"(bounds));
	check_fault("bound below the lower bound", 5, 0);
	fault_reset();
	asm volatile(TRY("bound %0, %1") : : "r"(20), "m"(bounds));
	check_no_fault("bound inside");
}

static void test_divide(void)
{
	u32 a, d, start;

	a = 1234;
	d = 0;
	fault_reset();
	asm volatile(TRY("divl %2") : "+a"(a), "+d"(d) : "r"(0) : "cc");
	check_fault("div by zero", 0, 0);
	report("div by zero leaves eax edx", a == 1234 && d == 0);
	a = 0;
	d = 1;
	fault_reset();
	asm volatile(TRY("divl %2") : "+a"(a), "+d"(d) : "r"(1) : "cc");
	check_fault("div quotient overflow", 0, 0);
	a = 0x80000000;
	d = 0xffffffff;
	fault_reset();
	asm volatile(TRY("idivl %2") : "+a"(a), "+d"(d) : "r"(-1) : "cc");
	check_fault("idiv int_min / -1", 0, 0);
	a = 0x1000;
	fault_reset();
	asm volatile(TRY("divb %b1") : "+a"(a) : "q"(0x10) : "cc");
	check_fault("divb quotient overflow", 0, 0);
	a = 100;
	d = 0;
	fault_reset();
	asm volatile(TRY("divl %2") : "+a"(a), "+d"(d) : "r"(7) : "cc");
	check_no_fault("div 100 / 7");
	report("div 100 / 7 = 14 rem 2", a == 14 && d == 2);

	/* A handler that skips the faulting DIV by choosing where to resume. */
	set_trap_handler(0, h_resume);
	seen_reset();
	a = 77;
	d = 0;
	asm volatile("movl $1f, %2\n\t"
		     "movl $2f, %3\n"
		     "1:\n\t"
		     "divl %4\n"
		     "2:"
		     : "+a"(a), "+d"(d), "=&r"(start), "=m"(resume_at)
		     : "r"(0)
		     : "cc", "memory");
	check_eq("#de handler: pushed eip - the div", seen.eip - start, 0);
	check_eq("#de handler: resumed with eax intact", a, 77);
	set_trap_handler(0, 0);
}

static void test_invalid_opcode(void)
{
	u32 start;

	set_trap_handler(6, h_resume);
	seen_reset();
	asm volatile("movl $1f, %0\n\t"
		     "movl $2f, %1\n"
		     "1:\n\t"
		     "ud2\n"
		     "2:"
		     : "=&r"(start), "=m"(resume_at)
		     :
		     : "memory");
	check_eq("ud2 vector", seen.vector, 6);
	check_eq("ud2 pushed eip - the ud2", seen.eip - start, 0);
	check_eq("ud2 resumed after it", seen.count, 1);
	set_trap_handler(6, 0);

	fault_reset();
	asm volatile(TRY(".byte 0x8e, 0xc8") : : : "memory"); /* mov %eax, %cs */
	check_fault("mov to cs", 6, 0);
	fault_reset();
	asm volatile(TRY(".byte 0xf0, 0x90")); /* lock nop */
	check_fault("lock nop", 6, 0);
	fault_reset();
	asm volatile(TRY(".byte 0xf0, 0x01, 0xc0") : : : "eax", "cc"); /* lock add %eax, %eax */
	check_fault("lock add to a register", 6, 0);
	fault_reset();
	asm volatile(TRY(".byte 0x0f, 0x0b") : :);
	check_fault("ud2 via try", 6, 0);
}

static void test_fpu_sse_availability(void)
{
	fault_reset();
	asm volatile(TRY("fninit") : :);
	check_no_fault("fninit");
	write_cr0(CR0_LIB | CR0_TS);
	fault_reset();
	asm volatile(TRY("fninit") : :);
	check_fault("fninit with cr0.ts", 7, 0);
	fault_reset();
	asm volatile(TRY("fwait") : :);
	check_fault("fwait with cr0.ts and mp", 7, 0);
	write_cr0((CR0_LIB | CR0_TS) & ~CR0_MP);
	fault_reset();
	asm volatile(TRY("fwait") : :);
	check_no_fault("fwait with cr0.ts without mp");
	write_cr0(CR0_LIB | CR0_EM);
	fault_reset();
	asm volatile(TRY("fninit") : :);
	check_fault("fninit with cr0.em", 7, 0);
	write_cr0(CR0_LIB | CR0_TS);
	asm volatile("clts");
	fault_reset();
	asm volatile(TRY("fninit") : :);
	check_no_fault("fninit after clts");

	fault_reset();
	asm volatile(TRY("xorps %%xmm0, %%xmm0") : :);
	check_fault("sse with cr4.osfxsr clear", 6, 0);
	write_cr4(0x600); /* OSFXSR | OSXMMEXCPT */
	fault_reset();
	asm volatile(TRY("xorps %%xmm0, %%xmm0") : :);
	check_no_fault("sse with cr4.osfxsr set");
	write_cr0(CR0_LIB | CR0_TS);
	fault_reset();
	asm volatile(TRY("xorps %%xmm0, %%xmm0") : :);
	check_fault("sse with cr0.ts", 7, 0);
	fault_reset();
	asm volatile(TRY("pxor %%mm0, %%mm0") : :);
	check_fault("mmx with cr0.ts", 7, 0);
	write_cr0(CR0_LIB);
	fault_reset();
	asm volatile(TRY("pxor %%mm0, %%mm0") "emms" : :);
	check_no_fault("mmx");
	write_cr4(0);
}

static void test_gp_np(void)
{
	struct dtr saved, small;

	/* Segment loads. */
	fault_reset();
	asm volatile(TRY("mov %0, %%ds") "mov %1, %%ds" : : "r"(0x80), "r"(SEL_KDATA));
	check_fault("mov ds beyond the gdt limit", 13, 0x80);
	fault_reset();
	asm volatile(TRY("ljmp $0x10, $0") : :);
	check_fault("ljmp to a data segment", 13, 0x10);
	fault_reset();
	asm volatile(TRY("lcall $0x28, $0") : :);
	check_fault("lcall to a busy tss", 13, 0x28);

	/* IRET to a selector beyond the GDT: #GP with the IRET's EIP. */
	fault_reset();
	asm volatile("movl %%esp, %%ecx\n\t"
		     "pushfl\n\t"
		     "pushl $0x80\n\t"
		     "pushl $0\n\t" TRY("iret") "movl %%ecx, %%esp"
		     :
		     :
		     : "ecx", "memory");
	check_fault("iret to cs beyond the gdt limit", 13, 0x80);

	/* IDT gates: not present, beyond the limit, bad type, bad selector. */
	fault_reset();
	asm volatile(TRY("int $0x50") : :);
	check_fault("int 0x50 zero descriptor (no gate type)", 13, 0x50 * 8 + 2);
	idt_set_default(0x50, GATE_INT32 & ~0x80);
	fault_reset();
	asm volatile(TRY("int $0x50") : :);
	check_fault("int 0x50 not-present interrupt gate", 11, 0x50 * 8 + 2);
	idt[0x50] = 0;
	sidt(&saved);
	small = saved;
	small.limit = 0x90 * 8 - 1;
	lidt(&small);
	fault_reset();
	asm volatile(TRY("int $0x90") : :);
	check_fault("int 0x90 just beyond the idt limit", 13, 0x90 * 8 + 2);
	fault_reset();
	asm volatile(TRY("int $0x8f") : :);
	check_fault("int 0x8f just inside the idt limit", 13, 0x8f * 8 + 2);
	lidt(&saved);
	idt[0x44] = idt[0x44] & ~(0x1fULL << 40); /* type 0, present, DPL 0 */
	idt[0x44] |= 0x81ULL << 40;
	fault_reset();
	asm volatile(TRY("int $0x44") : :);
	check_fault("int 0x44 gate of type 1", 13, 0x44 * 8 + 2);
	idt_set_gate(0x44, 0x1234, 0x80, GATE_INT32);
	fault_reset();
	asm volatile(TRY("int $0x44") : :);
	check_fault("int 0x44 gate with selector 0x80", 13, 0x80);
	idt_set_gate(0x44, 0x1234, SEL_KDATA, GATE_INT32);
	fault_reset();
	asm volatile(TRY("int $0x44") : :);
	check_fault("int 0x44 gate with a data selector", 13, SEL_KDATA);
	idt_set_default(0x44, GATE_INT32);

	/* #DE with a not-present #DE gate: two contributory faults, #DF(0).
	 * The EIP a #DF pushes is undefined: the handler resumes by choice. */
	u32 a = 1, d = 0;
	idt[0] &= ~(1ULL << 47);
	set_trap_handler(8, h_resume);
	seen_reset();
	asm volatile("movl $2f, %2\n\t"
		     "divl %3\n"
		     "2:"
		     : "+a"(a), "+d"(d), "=m"(resume_at)
		     : "r"(0)
		     : "cc", "memory");
	printf("# div with a not-present #de gate: vector %u error 0x%x\n", seen.vector, seen.error);
	report("div with a not-present #de gate", seen.count == 1 && seen.vector == 8 && seen.error == 0);
	set_trap_handler(8, 0);
	idt_set_default(0, GATE_INT32);
}

/* A fault inside a handler: the nested trap runs and returns to it. */
static volatile u32 nested_vector, nested_count;

static void h_nested(struct trap_frame *f)
{
	(void)f;
	fault_reset();
	asm volatile(TRY("ud2") : :);
	nested_vector = last_fault.vector;
	nested_count = last_fault.count;
}

static void test_nested(void)
{
	set_trap_handler(0x45, h_nested);
	nested_vector = nested_count = 0;
	asm volatile("int $0x45" : : : "memory");
	check_eq("ud2 inside an int 0x45 handler: faults", nested_count, 1);
	check_eq("ud2 inside an int 0x45 handler: vector", nested_vector, 6);
	set_trap_handler(0x45, 0);
}

/* Single step: record every #DB until TF is cleared. */
static volatile u32 steps[24];
static volatile u32 nsteps, step_dr6;

static void h_step(struct trap_frame *f)
{
	if (nsteps < 24)
		steps[nsteps] = f->eip;
	nsteps++;
	step_dr6 = read_dr6();
	write_dr6(0);
	if (nsteps >= 24)
		f->eflags &= ~FL_TF;
}

static void test_single_step(void)
{
	u32 base, pushed;
	/* Offsets of the #DB EIPs from label 1 (see the listing below). */
	static const u32 want[] = {1, 3, 6, 7, 8, 9, 0xa, 0x11, 0x12};
	const u32 n = sizeof(want) / sizeof(want[0]);

	set_trap_handler(1, h_step);
	nsteps = 0;
	write_dr6(0);
	asm volatile("movl $1f, %0\n\t"
		     "pushfl\n\t"
		     "orl $0x100, (%%esp)\n\t"
		     "popfl\n"		     /* TF = 1: traps after the next instruction */
		     "1:\n\t"		     /* +0x00 */
		     "nop\n\t"		     /* +0x00, #DB at +0x01 */
		     "mov %%ss, %%eax\n\t"   /* +0x01, #DB at +0x03 */
		     "mov %%eax, %%ss\n\t"   /* +0x03, no #DB: MOV SS holds it */
		     "nop\n\t"		     /* +0x05, #DB at +0x06 */
		     "nop\n\t"		     /* +0x06, #DB at +0x07 */
		     "pushfl\n\t"	     /* +0x07, #DB at +0x08 */
		     "popl %1\n\t"	     /* +0x08, #DB at +0x09 */
		     "pushfl\n\t"	     /* +0x09, #DB at +0x0a */
		     "andl $0xfffffeff, (%%esp)\n\t" /* +0x0a, #DB at +0x11 */
		     "popfl\n\t"	     /* +0x11, TF = 0, still #DB at +0x12 */
		     "nop"		     /* +0x12, no #DB */
		     : "=&r"(base), "=r"(pushed)
		     :
		     : "eax", "memory", "cc");
	check_eq("single-step trap count", nsteps, n);
	u32 same = nsteps == n;
	for (u32 i = 0; i < n && i < nsteps; i++) {
		printf("# single step %u at +0x%x\n", i, steps[i] - base);
		same &= steps[i] - base == want[i];
	}
	report("single-step eips", same);
	check_eq("dr6 after a single step", step_dr6, 0xffff4ff0);
	check_eq("pushf while single-stepping shows tf", pushed & FL_TF, FL_TF);
	check_eq("tf clear afterwards", read_eflags() & FL_TF, 0);
	set_trap_handler(1, 0);
	write_dr6(0);
}

void kmain(void)
{
	test_int_n();
	test_gate_if();
	test_int3_into_bound();
	test_divide();
	test_invalid_opcode();
	test_fpu_sse_availability();
	test_gp_np();
	test_nested();
	test_single_step();
	finish();
}
