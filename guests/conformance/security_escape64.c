/*
 * CPL 3 code far-jumps to selector 0x33 at 64-bit code that asks the host
 * kernel to create a file and write to standard output (x86-64 creat and
 * write system calls), then to exit.
 *
 * In the guest, 0x33 is an undefined GDT entry: a CPU gives the guest
 * #GP(0x30) at the jump, which is what QEMU does, and this kernel passes
 * under QEMU.
 *
 * Under btvmm the jump succeeds natively (0x33 is the host's 64-bit user
 * code segment, see security_user_farjmp.c) and the 64-bit code runs; its
 * first system call comes from an instruction below 4 GiB, which the world
 * process's seccomp filter turns into a signal: the host never creates the
 * file (/tmp/btvmm-escape-probe, which the test harness checks) nor writes
 * anything, and btvmm stops the VM (exit status 2, "guest code switched to
 * the host's 64-bit code segment"). The output under btvmm is the line
 * printed before the kernel enters CPL 3
 * (conformance/security_escape64.btvmm-expected).
 */
#include "lib.h"

/*
 * 64-bit code:
 *   mov  eax, 85                ; creat
 *   lea  rdi, [rip + path]
 *   mov  esi, 0644
 *   syscall
 *   mov  eax, 1                 ; write(1, path, 23)
 *   mov  edi, 1
 *   lea  rsi, [rip + path]
 *   mov  edx, 23
 *   syscall
 *   mov  eax, 231               ; exit_group(0)
 *   xor  edi, edi
 *   syscall
 *   jmp  $
 * path: "/tmp/btvmm-escape-probe"
 */
static const unsigned char code64[] __attribute__((aligned(16))) = {
	0xb8, 0x55, 0x00, 0x00, 0x00,		  /* 0: mov eax, 85 */
	0x48, 0x8d, 0x3d, 0x2e, 0x00, 0x00, 0x00, /* 5: lea rdi, [rip+0x2e] -> 0x3a */
	0xbe, 0xa4, 0x01, 0x00, 0x00,		  /* 12: mov esi, 0644 */
	0x0f, 0x05,				  /* 17: syscall */
	0xb8, 0x01, 0x00, 0x00, 0x00,		  /* 19: mov eax, 1 */
	0xbf, 0x01, 0x00, 0x00, 0x00,		  /* 24: mov edi, 1 */
	0x48, 0x8d, 0x35, 0x16, 0x00, 0x00, 0x00, /* 29: lea rsi, [rip+0x16] -> 0x3a */
	0xba, 0x17, 0x00, 0x00, 0x00,		  /* 36: mov edx, 23 */
	0x0f, 0x05,				  /* 41: syscall */
	0xb8, 0xe7, 0x00, 0x00, 0x00,		  /* 43: mov eax, 231 */
	0x31, 0xff,				  /* 48: xor edi, edi */
	0x0f, 0x05,				  /* 50: syscall */
	0xeb, 0xfe,				  /* 52: jmp $ */
	0x90, 0x90, 0x90, 0x90,			  /* 54: padding to 0x3a */
	'/', 't', 'm', 'p', '/', 'b', 't', 'v', 'm', 'm', '-', 'e',
	's', 'c', 'a', 'p', 'e', '-', 'p', 'r', 'o', 'b', 'e', 0,
};

static volatile u32 ur[2];

static u32 user_escape(void)
{
	static struct {
		u32 offset;
		u16 sel;
	} __attribute__((packed)) target = {0, 0x33};

	target.offset = (u32)code64;
	fault_reset();
	asm volatile(TRY("ljmp *%0") : : "m"(target) : "memory");
	ur[0] = last_fault.count;
	ur[1] = last_fault.vector << 16 | last_fault.error;
	return 0x600d;
}

void kmain(void)
{
	memset((void *)ur, 0xff, sizeof(ur));
	printf("# cpl 3 far jmp to 0x33: 64-bit code calling the host's creat, write, exit_group\n");
	u32 r = run_user(user_escape, FL_FIXED | FL_IF);
	printf("# cpl 3 ljmp to 64-bit host code: %u fault(s), vector %u error 0x%x\n", ur[0],
	       ur[1] >> 16, ur[1] & 0xffff);
	report("cpl 3 ljmp to 64-bit host code", ur[0] == 1 && ur[1] == (13u << 16 | 0x30));
	check_eq("user code returned normally", r, 0x600d);
	finish();
}
