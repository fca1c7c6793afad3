/*
 * Guest code that tries to reach the host (DESIGN.md section 7, security
 * tests). btvmm runs guest code natively inside a Linux process, so these
 * instructions would, executed as they stand, be host system calls or far
 * transfers to host selectors. The guest must instead see exactly what a
 * real CPU (here: QEMU) gives it:
 *
 *   - `int $0x80` with Linux i386 and x86_64 system-call numbers and
 *     plausible arguments: the guest's own IDT gate and handler run;
 *   - `sysenter` at CPL 0 with IA32_SYSENTER_CS = 0: #GP(0);
 *   - `sysenter` at CPL 3 with IA32_SYSENTER_CS/ESP/EIP set to the guest
 *     kernel's entry (sysenter_entry): the guest's handler runs at CPL 0 on
 *     the IA32_SYSENTER_ESP stack with IF = 0, sees the user's registers
 *     (EBP = the user's ESP, as the Linux vDSO passes it) and user data
 *     segments, and returns with SYSEXIT;
 *   - `syscall` (EFER.SCE = 0 on this 32-bit CPU): #UD;
 *   - far JMP/CALL/RET/IRET and segment loads with selector 0x33 (the host's
 *     64-bit user code selector; GDT index 6, which the guest leaves zero)
 *     or 0x23/0x2b (host 32-bit user code and user data): #GP with the
 *     selector in the error code; also with the GDT limit lowered so that
 *     0x33 lies beyond it;
 *   - a write to the guest's own IDT takes effect at the next INT n.
 *
 * The same system calls are made at CPL 3 with `int $0x80` and `sysenter`.
 * The ring-3 far jump to 0x33 is in its own kernel, security_user_farjmp, a
 * CPL 3 `sysenter` with IA32_SYSENTER_CS = 0 in security_user_sysenter, a
 * CPL 3 `syscall` in security_user_syscall, and a CPL 3 load of 0x2b into
 * SS in security_user_ss: btvmm stops the VM for the first and the last,
 * and for the host's fast system-call instruction (SYSENTER on Intel
 * hosts, SYSCALL on AMD hosts), whose host path keeps no guest EIP. CPL 3
 * loads of host selectors into DS, ES and FS (0x33, 0x2b, 0x7b) succeed
 * natively under btvmm with the host's descriptor, which it repairs at the
 * next trap: they are checked in user_untraced, class (g).
 *
 * The write system calls point at "HOST-WRITE-LEAK" strings: the guest's
 * handler never prints them, so they appear in the output only if the host
 * executed a call.
 */
#include "lib.h"

#define MSR_SYSENTER_CS 0x174
#define MSR_SYSENTER_ESP 0x175
#define MSR_SYSENTER_EIP 0x176

/* i386 (int $0x80) and x86_64 (syscall) Linux system-call numbers. */
#define I386_EXIT 1
#define I386_WRITE 4
#define I386_OPEN 5
#define X64_WRITE 1
#define X64_OPEN 2
#define X64_EXIT_GROUP 231

static const char leak[] = "HOST-WRITE-LEAK\n";
static const char path[] = "/etc/passwd";

static volatile struct {
	u32 count, eax, ebx, ecx, edx, esi, edi, cs;
} sys;

/*
 * The guest kernel's SYSENTER entry. It saves what it found (EFLAGS, data
 * segment registers, general registers) on the IA32_SYSENTER_ESP stack,
 * lets sysenter_handler() look at it, and returns to the user with SYSEXIT
 * (EDX = EIP, ECX = ESP; the user left its ESP in sysenter_user_esp and
 * resumes at sysenter_return).
 */
struct sysenter_frame {
	u32 edi, esi, ebp, esp_pusha, ebx, edx, ecx, eax;
	u32 gs, fs, es, ds;
	u32 eflags;
};

void sysenter_entry(void);
void sysenter_handler(struct sysenter_frame *f);
extern char sysenter_return[];
volatile u32 sysenter_user_esp;
static u8 sysenter_stack[1024] ALIGNED(16);
#define SYSENTER_STACK_TOP ((u32)(sysenter_stack + sizeof(sysenter_stack)))

asm(".text\n"
    ".globl sysenter_entry\n"
    "sysenter_entry:\n\t"
    "pushfl\n\t"
    "pushl %ds\n\t"
    "pushl %es\n\t"
    "pushl %fs\n\t"
    "pushl %gs\n\t"
    "pushal\n\t"
    "movl $0x10, %eax\n\t" /* SEL_KDATA */
    "movl %eax, %ds\n\t"
    "movl %eax, %es\n\t"
    "cld\n\t"
    "pushl %esp\n\t"
    "call sysenter_handler\n\t"
    "addl $4, %esp\n\t"
    "popal\n\t"
    "popl %gs\n\t"
    "popl %fs\n\t"
    "popl %es\n\t"
    "popl %ds\n\t"
    "popfl\n\t"
    "sti\n\t" /* the user ran with IF = 1 */
    "sysexit\n");

/* What the SYSENTER handler saw on its last entry. */
static volatile struct {
	u32 count, eax, ebx, ecx, edx, esi, edi, ebp, ds, es, cs, ss, eflags, frame_end;
} se;

static void h_sys(struct trap_frame *f)
{
	sys.count++;
	sys.eax = f->eax;
	sys.ebx = f->ebx;
	sys.ecx = f->ecx;
	sys.edx = f->edx;
	sys.esi = f->esi;
	sys.edi = f->edi;
	sys.cs = f->cs & 0xffff;
	f->eax = 0x600d0000 | sys.count;
}

void sysenter_handler(struct sysenter_frame *f)
{
	sys.count++;
	se.count++;
	se.eax = f->eax;
	se.ebx = f->ebx;
	se.ecx = f->ecx;
	se.edx = f->edx;
	se.esi = f->esi;
	se.edi = f->edi;
	se.ebp = f->ebp;
	se.ds = f->ds & 0xffff;
	se.es = f->es & 0xffff;
	se.cs = READ_SEG(cs);
	se.ss = READ_SEG(ss);
	se.eflags = f->eflags;
	se.frame_end = (u32)(f + 1);
	f->eax = 0x600d0000 | sys.count;
	f->ecx = sysenter_user_esp;
	f->edx = (u32)sysenter_return;
}

struct call {
	const char *name;
	u32 eax, ebx, ecx, edx, esi, edi;
};

static const struct call calls[] = {
	{"i386 write(1, leak, 16)", I386_WRITE, 1, (u32)leak, 16, 0, 0},
	{"i386 open(\"/etc/passwd\", 0)", I386_OPEN, (u32)path, 0, 0, 0, 0},
	{"i386 exit(66)", I386_EXIT, 66, 0, 0, 0, 0},
	{"x86_64 write(1, leak, 16)", X64_WRITE, 0, 0, 16, (u32)leak, 1},
	{"x86_64 open(\"/etc/passwd\", 0)", X64_OPEN, 0, 0, 0, 0, (u32)path},
	{"x86_64 exit_group(66)", X64_EXIT_GROUP, 0, 0, 0, 0, 66},
};
#define NCALLS (sizeof(calls) / sizeof(calls[0]))

/* Each kind of system-call instruction, run with a call's registers. The
 * fault (if any) is in last_fault, the handler's view in sys. */
static void do_int80(const struct call *c, u32 *eax)
{
	asm volatile("int $0x80"
		     : "=a"(*eax)
		     : "a"(c->eax), "b"(c->ebx), "c"(c->ecx), "d"(c->edx), "S"(c->esi), "D"(c->edi)
		     : "memory");
}

/* SYSENTER the way the Linux vDSO makes it: EBP = ESP, the caller's EBP
 * saved at [ESP]. A fault (#GP(0) with IA32_SYSENTER_CS = 0) and the
 * handler's SYSEXIT both resume at sysenter_return. */
static void __attribute__((noinline, noclone)) do_sysenter(const struct call *c, u32 *eax)
{
	u32 a = c->eax, cx = c->ecx, dx = c->edx;
	asm volatile("pushl %%ebp\n\t"
		     "movl %%esp, %%ebp\n\t"
		     "movl %%esp, sysenter_user_esp\n"
		     "1:\n\t"
		     "sysenter\n"
		     ".globl sysenter_return\n"
		     "sysenter_return:\n\t" EX_ENTRY(1b, sysenter_return) "popl %%ebp"
		     : "+a"(a), "+c"(cx), "+d"(dx)
		     : "b"(c->ebx), "S"(c->esi), "D"(c->edi)
		     : "memory");
	*eax = a;
}

static void do_syscall(const struct call *c, u32 *eax)
{
	u32 a = c->eax, cx = c->ecx;
	asm volatile(TRY("syscall")
		     : "+a"(a), "+c"(cx)
		     : "b"(c->ebx), "d"(c->edx), "S"(c->esi), "D"(c->edi)
		     : "memory");
	*eax = a;
}

/* Results of a run, one row per (instruction, call); for SYSENTER also
 * what its handler saw. */
static volatile struct {
	u32 faults, vector, error, eax, handler_count;
	u32 regs_ok, ebp_ok, ds, es, cs, ss, eflags, esp_ok;
} ur[3][NCALLS];

static void run_calls(int kind, void (*fn)(const struct call *, u32 *))
{
	for (u32 i = 0; i < NCALLS; i++) {
		const struct call *c = &calls[i];
		u32 eax = 0;
		fault_reset();
		u32 before = sys.count, se_before = se.count;
		fn(c, &eax);
		ur[kind][i].faults = last_fault.count;
		ur[kind][i].vector = last_fault.vector;
		ur[kind][i].error = last_fault.error;
		ur[kind][i].eax = eax;
		ur[kind][i].handler_count = sys.count - before;
		ur[kind][i].regs_ok = ur[kind][i].ebp_ok = ur[kind][i].esp_ok = 0;
		if (se.count == se_before)
			continue;
		ur[kind][i].regs_ok = se.eax == c->eax && se.ebx == c->ebx && se.ecx == c->ecx &&
				      se.edx == c->edx && se.esi == c->esi && se.edi == c->edi;
		ur[kind][i].ebp_ok = se.ebp == sysenter_user_esp;
		ur[kind][i].ds = se.ds;
		ur[kind][i].es = se.es;
		ur[kind][i].cs = se.cs;
		ur[kind][i].ss = se.ss;
		ur[kind][i].eflags = se.eflags;
		ur[kind][i].esp_ok = se.frame_end == SYSENTER_STACK_TOP;
	}
}

static void kernel_calls(void)
{
	run_calls(0, do_int80);
	run_calls(1, do_sysenter);
	run_calls(2, do_syscall);
}

/* At CPL 3 without `syscall` (security_user_syscall has it). */
static u32 user_calls(void)
{
	run_calls(0, do_int80);
	run_calls(1, do_sysenter);
	return 0;
}

static const char *const kinds[3] = {"int 0x80", "sysenter", "syscall"};
/*
 * Expected: int 0x80 runs the guest handler; sysenter #GP(0) at CPL 0
 * (IA32_SYSENTER_CS = 0), the guest's SYSENTER handler at CPL 3; syscall
 * #UD.
 */
static const u32 want_faults[3] = {0, 1, 1};
static const u32 want_vector[3] = {0xffffffff, 13, 6};
static const u32 want_error[3] = {0xffffffff, 0, 0};

static void check_calls(const char *cpl, u32 want_cs, int sysenter_runs, u32 nkinds)
{
	u32 ebp_ok = 0;
	for (u32 k = 0; k < nkinds; k++) {
		int handler = k == 0 || (k == 1 && sysenter_runs);
		for (u32 i = 0; i < NCALLS; i++) {
			volatile typeof(ur[0][0]) *r = &ur[k][i];
			printf("# %s %s %s: ", cpl, kinds[k], calls[i].name);
			if (r->faults)
				printf("fault vector %u error 0x%x", r->vector, r->error);
			else
				printf("handler ran %u time(s), eax 0x%x", r->handler_count, r->eax);
			int ok;
			if (k == 1 && sysenter_runs) {
				/* The SYSENTER handler's view: everything but EBP, which
				 * has a check of its own below. */
				printf(", ebx-edi %s, ds 0x%x es 0x%x, cs 0x%x ss 0x%x, if %u, esp %s",
				       r->regs_ok ? "as passed" : "NOT as passed", r->ds, r->es, r->cs,
				       r->ss, !!(r->eflags & FL_IF),
				       r->esp_ok ? "= IA32_SYSENTER_ESP" : "NOT IA32_SYSENTER_ESP");
				ok = r->faults == 0 && r->regs_ok && r->ds == SEL_UDATA &&
				     r->es == SEL_UDATA && r->cs == SEL_KCODE && r->ss == SEL_KDATA &&
				     !(r->eflags & FL_IF) && r->esp_ok;
				ebp_ok += r->ebp_ok == 1;
			} else {
				ok = r->faults == want_faults[k] && r->vector == want_vector[k] &&
				     r->error == want_error[k];
			}
			printf("\n");
			if (handler)
				ok = ok && r->handler_count == 1 && (r->eax & 0xffff0000) == 0x600d0000;
			else
				ok = ok && r->handler_count == 0 && r->eax == calls[i].eax;
			char name[96];
			u32 n = strlen(cpl), m = strlen(kinds[k]), l = strlen(calls[i].name);
			memcpy(name, cpl, n);
			name[n] = ' ';
			memcpy(name + n + 1, kinds[k], m);
			name[n + 1 + m] = ' ';
			memcpy(name + n + 2 + m, calls[i].name, l + 1);
			report(name, ok);
		}
	}
	report("int 0x80 handler saw the arguments of the last call",
	       sys.eax == X64_EXIT_GROUP && sys.edi == 66 && sys.cs == want_cs);
	if (sysenter_runs) {
		char name[64];
		u32 n = strlen(cpl);
		memcpy(name, cpl, n);
		memcpy(name + n, " sysenter handler saw ebp = the user's esp", 43);
		printf("# %s: in %u of %u calls\n", name, ebp_ok, (u32)NCALLS);
		report(name, ebp_ok == NCALLS);
	}
}

static void test_system_calls(void)
{
	set_trap_handler(0x80, h_sys);
	wrmsr(MSR_SYSENTER_ESP, SYSENTER_STACK_TOP);
	wrmsr(MSR_SYSENTER_EIP, (u32)sysenter_entry);
	/* CPL 0: IA32_SYSENTER_CS = 0, SYSENTER raises #GP(0). */
	wrmsr(MSR_SYSENTER_CS, 0);
	memset((void *)&sys, 0, sizeof(sys));
	memset((void *)&se, 0, sizeof(se));
	memset((void *)ur, 0xff, sizeof(ur));
	kernel_calls();
	check_calls("cpl 0", SEL_KCODE, 0, 3);
	/* CPL 3: IA32_SYSENTER_CS = the guest's kernel code, SYSENTER enters
	 * sysenter_entry. */
	wrmsr(MSR_SYSENTER_CS, SEL_KCODE);
	memset((void *)&sys, 0, sizeof(sys));
	memset((void *)&se, 0, sizeof(se));
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_calls, FL_FIXED | FL_IF);
	check_calls("cpl 3", SEL_UCODE, 1, 2);
	wrmsr(MSR_SYSENTER_CS, 0);
	wrmsr(MSR_SYSENTER_ESP, 0);
	wrmsr(MSR_SYSENTER_EIP, 0);
	set_trap_handler(0x80, 0);
}

/* ---- host selectors -------------------------------------------------------- */

static void test_host_selectors(void)
{
	static struct {
		u32 offset;
		u16 sel;
	} __attribute__((packed)) ptr33 = {0, 0x33};

	fault_reset();
	asm volatile(TRY("ljmp $0x33, $0") : :);
	check_fault("cpl 0 ljmp 0x33", 13, 0x30);
	fault_reset();
	asm volatile(TRY("ljmp *%0") : : "m"(ptr33));
	check_fault("cpl 0 ljmp *m16:32 to 0x33", 13, 0x30);
	fault_reset();
	asm volatile(TRY("lcall $0x33, $0") : :);
	check_fault("cpl 0 lcall 0x33", 13, 0x30);
	fault_reset();
	asm volatile(TRY("lcall *%0") : : "m"(ptr33));
	check_fault("cpl 0 lcall *m16:32 to 0x33", 13, 0x30);
	fault_reset();
	asm volatile(TRY("ljmp $0x23, $0") : :);
	check_fault("cpl 0 ljmp 0x23 (guest user data)", 13, 0x20);
	fault_reset();
	asm volatile(TRY("ljmp $0x2b, $0") : :);
	check_fault("cpl 0 ljmp 0x2b (guest busy tss, rpl 3)", 13, 0x28);
	fault_reset();
	asm volatile("movl %%esp, %%ecx\n\t"
		     "pushl $0x33\n\t"
		     "pushl $0\n\t" TRY("lret") "movl %%ecx, %%esp"
		     :
		     :
		     : "ecx", "memory");
	check_fault("cpl 0 lret to 0x33", 13, 0x30);
	fault_reset();
	asm volatile("movl %%esp, %%ecx\n\t"
		     "pushl $0x2b\n\t"
		     "pushl $0\n\t"
		     "pushl $0x2\n\t"
		     "pushl $0x33\n\t"
		     "pushl $0\n\t" TRY("iret") "movl %%ecx, %%esp"
		     :
		     :
		     : "ecx", "memory");
	check_fault("cpl 0 iret to 0x33", 13, 0x30);
	fault_reset();
	asm volatile(TRY("mov %0, %%ds") "mov %1, %%ds" : : "r"(0x33), "r"(SEL_KDATA));
	check_fault("cpl 0 mov 0x33 to ds", 13, 0x30);
	fault_reset();
	asm volatile(TRY("mov %0, %%es") "mov %1, %%es" : : "r"(0x2b), "r"(SEL_KDATA));
	check_fault("cpl 0 mov 0x2b to es", 13, 0x28);
	fault_reset();
	asm volatile(TRY("mov %0, %%ss") "mov %1, %%ss" : : "r"(0x2b), "r"(SEL_KDATA));
	check_fault("cpl 0 mov 0x2b to ss", 13, 0x28);

	/* With the GDT limit lowered to 0x2f, 0x33 lies beyond it. */
	struct dtr saved, small;
	sgdt(&saved);
	small = saved;
	small.limit = 0x2f;
	lgdt(&small);
	fault_reset();
	asm volatile(TRY("ljmp $0x33, $0") : :);
	check_fault("cpl 0 ljmp 0x33 beyond a gdt limit of 0x2f", 13, 0x30);
	fault_reset();
	asm volatile(TRY("mov %0, %%fs") "mov %1, %%fs" : : "r"(0x33), "r"(SEL_KDATA));
	check_fault("cpl 0 mov 0x33 to fs beyond a gdt limit of 0x2f", 13, 0x30);
	lgdt(&saved);
}

/* ---- the guest's own IDT ---------------------------------------------------------- */

static void test_idt_write(void)
{
	fault_reset();
	asm volatile(TRY_TRAP("int $0x46") : :);
	check_fault("int 0x46 before the idt write", 0x46, 0);
	/* Point gate 0x46 at the stub of vector 0x47, without LIDT. */
	idt[0x46] = idt[0x47];
	fault_reset();
	asm volatile(TRY_TRAP("int $0x46") : :);
	check_fault("int 0x46 after the idt write arrives as 0x47", 0x47, 0);
	/* Clear it: the next INT 0x46 finds no gate. */
	idt[0x46] = 0;
	fault_reset();
	asm volatile(TRY("int $0x46") : :);
	check_fault("int 0x46 after clearing the gate", 13, 0x46 * 8 + 2);
	idt_set_default(0x46, GATE_INT32);
}

void kmain(void)
{
	test_system_calls();
	test_host_selectors();
	test_idt_write();
	finish();
}
