/*
 * An attacker who owns the world process (DESIGN.md section 2, threat
 * model), for crates/host-loader/tests/attacker.rs. Not a conformance
 * kernel: no CPU does this, so there is nothing to compare with QEMU.
 *
 * CPL 3 code far-jumps to the host's 64-bit code segment (0x33) and, in
 * 64-bit code that never traps, calls a `syscall; ret` of the world's own
 * code above 4 GiB: the instruction pointer of those system calls lies
 * above 4 GiB, so the filter's guest prefix lets them through to the
 * monitor's allow-list. Breaking ASLR is assumed: btvmm's test-only
 * option --test-leak-syscall-gadget ADDR writes the gadget's address to
 * guest-physical ADDR, given to this kernel as "gadget_at=ADDR" (decimal).
 *
 * "attack=N victim=PID" picks the system calls (x86-64 numbers):
 *   1 kill(victim, SIGKILL)           6 mprotect(gadget page, rwx)
 *   2 tgkill(victim, victim, SIGKILL) 7 mmap(anonymous, rwx)
 *   3 openat(creat) of a host file    8 execve("/bin/sh")
 *   4 socket(AF_INET, SOCK_STREAM)    9 write(2, ...) then kill(victim)
 *   5 ptrace(PTRACE_ATTACH, victim)  10 setuid(0) then kill(victim)
 * Each result lands in the block below; after the last call the 64-bit
 * code executes UD2, which btvmm sees as the guest leaving the VM.
 */
#include "lib.h"

#define PROBE_PATH "/tmp/btvmm-attack-probe"
#define MESSAGE "btvmm-attack: write(2) from the guest's 64-bit code\n"

/* nr, six arguments, result; nr ~0 ends the list. */
struct call {
	u64 nr, arg[6], result;
};

struct call calls[4] __attribute__((aligned(16)));
u64 gadget;

/*
 * 64-bit code, entered by a far jump from CPL 3:
 *   rbx = calls; for each call: load the registers, call *gadget, store rax.
 */
asm(".pushsection .text\n"
    ".globl attack64\n"
    "attack64:\n"
    ".code64\n"
    "	movl $calls, %ebx\n"
    "1:	movq (%rbx), %rax\n"
    "	cmpq $-1, %rax\n"
    "	je 2f\n"
    "	movq 8(%rbx), %rdi\n"
    "	movq 16(%rbx), %rsi\n"
    "	movq 24(%rbx), %rdx\n"
    "	movq 32(%rbx), %r10\n"
    "	movq 40(%rbx), %r8\n"
    "	movq 48(%rbx), %r9\n"
    "	movl $gadget, %r11d\n"
    "	call *(%r11)\n"
    "	movq %rax, 56(%rbx)\n"
    "	addq $64, %rbx\n"
    "	jmp 1b\n"
    "2:	ud2\n"
    ".code32\n"
    ".popsection\n");
void attack64(void);

static void set(int i, u64 nr, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
	calls[i].nr = nr;
	calls[i].arg[0] = a0;
	calls[i].arg[1] = a1;
	calls[i].arg[2] = a2;
	calls[i].arg[3] = a3;
	calls[i].arg[4] = a4;
	calls[i].arg[5] = a5;
	calls[i].result = 0x5a5a5a5a;
	calls[i + 1].nr = ~0ull;
}

static u32 user_attack(void)
{
	static struct {
		u32 offset;
		u16 sel;
	} __attribute__((packed)) target = {0, 0x33};

	target.offset = (u32)attack64;
	asm volatile("ljmp *%0" : : "m"(target) : "memory");
	return 0x600d;
}

void kmain(void)
{
	static const char path[] = PROBE_PATH;
	static const char shell[] = "/bin/sh";
	static const char message[] = MESSAGE;
	static u32 argv[2];
	u32 attack = cmdline_option("attack", 0);
	u64 victim = cmdline_option("victim", 0);
	u32 gadget_at = cmdline_option("gadget_at", 0);

	if (!gadget_at || !victim)
		fail_exit("needs gadget_at= and victim=");
	gadget = *(volatile u64 *)gadget_at;
	argv[0] = (u32)shell;
	switch (attack) {
	case 1: set(0, 62, victim, 9, 0, 0, 0, 0); break;
	case 2: set(0, 234, victim, victim, 9, 0, 0, 0); break;
	case 3: set(0, 257, (u64)-100, (u32)path, 0x41, 0644, 0, 0); break;
	case 4: set(0, 41, 2, 1, 0, 0, 0, 0); break;
	case 5: set(0, 101, 16, victim, 0, 0, 0, 0); break;
	case 6: set(0, 10, gadget & ~0xfffull, 4096, 7, 0, 0, 0); break;
	case 7: set(0, 9, 0, 4096, 7, 0x22, (u64)-1, 0); break;
	case 8: set(0, 59, (u32)shell, (u32)argv, 0, 0, 0, 0); break;
	case 9:
		set(0, 1, 2, (u32)message, sizeof(message) - 1, 0, 0, 0);
		set(1, 62, victim, 9, 0, 0, 0, 0);
		break;
	case 10:
		set(0, 105, 0, 0, 0, 0, 0, 0);
		set(1, 62, victim, 9, 0, 0, 0, 0);
		break;
	default: fail_exit("attack=1..10");
	}
	printf("# attack %u: far jump to 64-bit code, system calls through %x:%x\n", attack,
	       (u32)(gadget >> 32), (u32)gadget);
	run_user(user_attack, FL_FIXED | FL_IF);
	printf("# the 64-bit code came back\n");
	finish();
}
