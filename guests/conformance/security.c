/*
 * Guest code that tries to reach the host (DESIGN.md section 7, security
 * tests). btvmm runs guest code natively inside a Linux process, so these
 * instructions would, executed as they stand, be host system calls or far
 * transfers to host selectors. The guest must instead see exactly what a
 * real CPU (here: QEMU) gives it:
 *
 *   - `int $0x80` with Linux i386 and x86_64 system-call numbers and
 *     plausible arguments: the guest's own IDT gate and handler run;
 *   - `sysenter` with IA32_SYSENTER_CS = 0: #GP(0);
 *   - `syscall` (EFER.SCE = 0 on this 32-bit CPU): #UD;
 *   - far JMP/CALL/RET/IRET and segment loads with selector 0x33 (the host's
 *     64-bit user code selector; GDT index 6, which the guest leaves zero)
 *     or 0x23/0x2b (host 32-bit user code and user data): #GP with the
 *     selector in the error code; also with the GDT limit lowered so that
 *     0x33 lies beyond it;
 *   - a write to the guest's own IDT takes effect at the next INT n.
 *
 * The same system calls are made at CPL 3. The ring-3 far jump to 0x33 is
 * in its own kernel, security_user_farjmp.
 *
 * The write system calls point at "HOST-WRITE-LEAK" strings: the guest's
 * handler never prints them, so they appear in the output only if the host
 * executed a call.
 */
#include "lib.h"

#define MSR_SYSENTER_CS 0x174

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

static void do_sysenter(const struct call *c, u32 *eax)
{
	u32 a = c->eax;
	asm volatile(TRY("sysenter")
		     : "+a"(a)
		     : "b"(c->ebx), "c"(c->ecx), "d"(c->edx), "S"(c->esi), "D"(c->edi)
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

/* Results of the CPL 3 run, one row per (instruction, call). */
static volatile struct {
	u32 faults, vector, error, eax, handler_count;
} ur[3][NCALLS];

static void run_calls(int cpl3_index, void (*fn)(const struct call *, u32 *))
{
	for (u32 i = 0; i < NCALLS; i++) {
		u32 eax = 0;
		fault_reset();
		u32 before = sys.count;
		fn(&calls[i], &eax);
		ur[cpl3_index][i].faults = last_fault.count;
		ur[cpl3_index][i].vector = last_fault.vector;
		ur[cpl3_index][i].error = last_fault.error;
		ur[cpl3_index][i].eax = eax;
		ur[cpl3_index][i].handler_count = sys.count - before;
	}
}

static u32 user_calls(void)
{
	run_calls(0, do_int80);
	run_calls(1, do_sysenter);
	run_calls(2, do_syscall);
	return 0;
}

static const char *const kinds[3] = {"int 0x80", "sysenter", "syscall"};
/* Expected: int 0x80 runs the guest handler; sysenter #GP(0); syscall #UD. */
static const u32 want_faults[3] = {0, 1, 1};
static const u32 want_vector[3] = {0xffffffff, 13, 6};
static const u32 want_error[3] = {0xffffffff, 0, 0};

static void check_calls(const char *cpl, u32 want_cs)
{
	for (u32 k = 0; k < 3; k++) {
		for (u32 i = 0; i < NCALLS; i++) {
			volatile typeof(ur[0][0]) *r = &ur[k][i];
			printf("# %s %s %s: ", cpl, kinds[k], calls[i].name);
			if (r->faults)
				printf("fault vector %u error 0x%x", r->vector, r->error);
			else
				printf("handler ran %u time(s), eax 0x%x", r->handler_count, r->eax);
			printf("\n");
			int ok = r->faults == want_faults[k] && r->vector == want_vector[k] &&
				 r->error == want_error[k];
			if (k == 0)
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
}

static void test_system_calls(void)
{
	set_trap_handler(0x80, h_sys);
	wrmsr(MSR_SYSENTER_CS, 0);
	memset((void *)&sys, 0, sizeof(sys));
	user_calls(); /* at CPL 0 */
	check_calls("cpl 0", SEL_KCODE);
	memset((void *)&sys, 0, sizeof(sys));
	memset((void *)ur, 0xff, sizeof(ur));
	run_user(user_calls, FL_FIXED);
	check_calls("cpl 3", SEL_UCODE);
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

static volatile u32 ur_seg[4];

static u32 user_seg_loads(void)
{
	fault_reset();
	asm volatile(TRY("mov %0, %%ds") : : "r"(0x33) : "memory");
	ur_seg[0] = last_fault.count;
	ur_seg[1] = last_fault.vector << 16 | last_fault.error;
	fault_reset();
	asm volatile(TRY("mov %0, %%ss") : : "r"(0x2b) : "memory");
	ur_seg[2] = last_fault.count;
	ur_seg[3] = last_fault.vector << 16 | last_fault.error;
	return 0;
}

static void test_host_selectors_cpl3(void)
{
	memset((void *)ur_seg, 0xff, sizeof(ur_seg));
	run_user(user_seg_loads, FL_FIXED);
	printf("# cpl 3 mov 0x33 to ds: %u fault(s), vector %u error 0x%x\n", ur_seg[0], ur_seg[1] >> 16,
	       ur_seg[1] & 0xffff);
	report("cpl 3 mov 0x33 to ds", ur_seg[0] == 1 && ur_seg[1] == (13u << 16 | 0x30));
	printf("# cpl 3 mov 0x2b to ss: %u fault(s), vector %u error 0x%x\n", ur_seg[2], ur_seg[3] >> 16,
	       ur_seg[3] & 0xffff);
	report("cpl 3 mov 0x2b to ss", ur_seg[2] == 1 && ur_seg[3] == (13u << 16 | 0x28));
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
	test_host_selectors_cpl3();
	test_idt_write();
	finish();
}
