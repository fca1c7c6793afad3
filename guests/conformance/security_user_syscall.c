/*
 * CPL 3 code executes SYSCALL, which this 32-bit CPU does not enable
 * (EFER.SCE = 0): the guest gets #UD at the SYSCALL, as from QEMU, where
 * this kernel passes. The register values are those of Linux i386 and
 * x86_64 system calls, as in security.c (which checks SYSCALL at CPL 0).
 *
 * Under btvmm, guest CPL 3 code runs natively in a Linux process. On an
 * Intel host SYSCALL raises #UD there too, and btvmm gives it to the guest.
 * On an AMD host it goes through the host kernel's 32-bit SYSCALL path,
 * which keeps no EIP (it reports the vDSO's landing pad instead): the #UD
 * cannot be placed, so btvmm stops the VM (exit status 2, "btvmm: the VM
 * stopped: the guest used something btvmm does not support: SYSCALL in
 * guest user code ..."), and seccomp made sure the host did nothing. Its
 * expected output on AMD hosts is
 * conformance/security_user_syscall.btvmm-expected: the lines printed
 * before the kernel enters CPL 3.
 */
#include "lib.h"

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

static volatile struct {
	u32 faults, vector, error, eax;
} ur[NCALLS];

/* SYSCALL with a call's registers; the #UD resumes after it. */
static u32 user_syscall(void)
{
	for (u32 i = 0; i < NCALLS; i++) {
		const struct call *c = &calls[i];
		u32 a = c->eax, cx = c->ecx;
		fault_reset();
		asm volatile(TRY("syscall")
			     : "+a"(a), "+c"(cx)
			     : "b"(c->ebx), "d"(c->edx), "S"(c->esi), "D"(c->edi)
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
	printf("# syscall at cpl 3 (EFER.SCE = 0 on this 32-bit CPU)\n");
	memset((void *)ur, 0xff, sizeof(ur));
	u32 r = run_user(user_syscall, FL_FIXED | FL_IF);
	for (u32 i = 0; i < NCALLS; i++) {
		char name[96];
		u32 n = strlen(calls[i].name);
		memcpy(name, "cpl 3 syscall ", 14);
		memcpy(name + 14, calls[i].name, n + 1);
		printf("# %s: %u fault(s), vector %u error 0x%x\n", name, ur[i].faults, ur[i].vector,
		       ur[i].error);
		report(name, ur[i].faults == 1 && ur[i].vector == 6 && ur[i].error == 0 &&
				     ur[i].eax == calls[i].eax);
	}
	check_eq("user code returned normally", r, 0x600d);
	finish();
}
