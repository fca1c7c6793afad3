/*
 * CPL 3 code executes SYSENTER while IA32_SYSENTER_CS = 0 (IA32_SYSENTER_ESP
 * and _EIP hold a valid stack and entry point, which must not be used).
 *
 * A CPU gives the guest #GP(0) at the SYSENTER: that is what QEMU does, and
 * this kernel passes under QEMU. The register values are those of Linux
 * i386 and x86_64 system calls, as in security.c (which checks SYSENTER at
 * CPL 0 with IA32_SYSENTER_CS = 0, and at CPL 3 with a valid
 * IA32_SYSENTER_CS).
 *
 * Under btvmm, guest CPL 3 code runs natively in a Linux process. On an
 * AMD host SYSENTER raises #UD there, and btvmm emulates it: the guest gets
 * its #GP(0) as from QEMU. On an Intel host SYSENTER goes through the host
 * kernel's SYSENTER path instead, which keeps neither EIP nor ESP. With
 * IA32_SYSENTER_CS != 0 btvmm needs neither (it emulates SYSENTER, which
 * replaces both); with IA32_SYSENTER_CS = 0 the guest must get #GP(0) at an
 * EIP btvmm does not know, so btvmm stops the VM (exit status 2, "btvmm:
 * the VM stopped: the guest used something btvmm does not support:
 * SYSENTER in guest user code with IA32_SYSENTER_CS = 0 ..."). Its expected
 * output on Intel hosts is conformance/security_user_sysenter.btvmm-expected:
 * the lines printed before the kernel enters CPL 3.
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

/* The entry IA32_SYSENTER_EIP points at: reaching it is a failure. */
void sysenter_entry(void);
void sysenter_reached(void);
static u8 sysenter_stack[1024] ALIGNED(16);

asm(".text\n"
    ".globl sysenter_entry\n"
    "sysenter_entry:\n\t"
    "movl $0x10, %eax\n\t" /* SEL_KDATA */
    "movl %eax, %ds\n\t"
    "movl %eax, %es\n\t"
    "cld\n\t"
    "call sysenter_reached\n");

void NORETURN sysenter_reached(void)
{
	fail_exit("sysenter entered IA32_SYSENTER_EIP with IA32_SYSENTER_CS = 0");
}

static volatile struct {
	u32 faults, vector, error, eax;
} ur[NCALLS];

/* SYSENTER the way the Linux vDSO makes it (EBP = ESP); the #GP(0)
 * resumes after it. */
static u32 user_sysenter(void)
{
	for (u32 i = 0; i < NCALLS; i++) {
		const struct call *c = &calls[i];
		u32 a = c->eax, cx = c->ecx, dx = c->edx;
		fault_reset();
		asm volatile("pushl %%ebp\n\t"
			     "movl %%esp, %%ebp\n\t" TRY("sysenter") "popl %%ebp"
			     : "+a"(a), "+c"(cx), "+d"(dx)
			     : "b"(c->ebx), "S"(c->esi), "D"(c->edi)
			     : "memory");
		ur[i].faults = last_fault.count;
		ur[i].vector = last_fault.vector;
		ur[i].error = last_fault.error;
		ur[i].eax = a;
	}
	return 0x600d;
}

void kmain(void)
{
	wrmsr(MSR_SYSENTER_CS, 0);
	wrmsr(MSR_SYSENTER_ESP, (u32)(sysenter_stack + sizeof(sysenter_stack)));
	wrmsr(MSR_SYSENTER_EIP, (u32)sysenter_entry);
	printf("# IA32_SYSENTER_CS = 0x%x, IA32_SYSENTER_ESP and _EIP set: sysenter at cpl 3\n",
	       (u32)rdmsr(MSR_SYSENTER_CS));
	memset((void *)ur, 0xff, sizeof(ur));
	u32 r = run_user(user_sysenter, FL_FIXED | FL_IF);
	for (u32 i = 0; i < NCALLS; i++) {
		char name[96];
		u32 n = strlen(calls[i].name);
		memcpy(name, "cpl 3 sysenter ", 15);
		memcpy(name + 15, calls[i].name, n + 1);
		printf("# %s: %u fault(s), vector %u error 0x%x\n", name, ur[i].faults, ur[i].vector,
		       ur[i].error);
		report(name, ur[i].faults == 1 && ur[i].vector == 13 && ur[i].error == 0 &&
				     ur[i].eax == calls[i].eax);
	}
	check_eq("user code returned normally", r, 0x600d);
	finish();
}
