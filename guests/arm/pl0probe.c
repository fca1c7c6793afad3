/*
 * What ARMv7 instructions do in user mode (PL0) on this Linux: runs each
 * instruction of pl0-cases.txt (given as the first argument) from a fresh
 * executable page, with r0-r3 pointing at a scratch buffer, and reports
 * whether it ran or raised a signal, against the file's "host" column.
 * The breakpoint planner counts on the instructions it classes as
 * trapping to trap; scripts/arm-route runs this under qemu-system-arm.
 *
 * Prints one line per instruction and a summary; exits 0 when every
 * instruction did what the file says, 1 otherwise, 2 on a usage error.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static sigjmp_buf escape;

static void on_signal(int signo, siginfo_t *info, void *context)
{
	(void)info;
	(void)context;
	siglongjmp(escape, signo);
}

/* Calls the code with r0-r3 = scratch; the callee-saved registers and lr
 * are saved around it in case the instruction under test writes them. A
 * signal leaves through siglongjmp, which restores sp and the rest. */
static void call_with_scratch(uintptr_t code, void *scratch)
{
	register void *r0 __asm__("r0") = scratch;
	register uintptr_t ip __asm__("r12") = code;
	__asm__ volatile("push {r4-r11, lr}\n\t"
			 "mov r1, r0\n\t"
			 "mov r2, r0\n\t"
			 "mov r3, r0\n\t"
			 "blx r12\n\t"
			 "pop {r4-r11, lr}\n\t"
			 : "+r"(r0), "+r"(ip)
			 :
			 : "r1", "r2", "r3", "memory", "cc");
}

static const char *outcome_name(int signo)
{
	switch (signo) {
	case 0:
		return "runs";
	case SIGILL:
		return "sigill";
	case SIGTRAP:
		return "sigtrap";
	case SIGSEGV:
		return "sigsegv";
	case SIGBUS:
		return "sigbus";
	default:
		return "other";
	}
}

/* Runs one instruction; returns 0 when it ran, else the signal. */
static int run_one(uint8_t *page, int thumb, uint32_t encoding, int halfwords,
		   void *scratch)
{
	size_t len = 0;
	if (thumb) {
		uint16_t code[3];
		if (halfwords == 2) {
			code[len++] = (uint16_t)(encoding >> 16);
			code[len++] = (uint16_t)encoding;
		} else {
			code[len++] = (uint16_t)encoding;
		}
		code[len++] = 0x4770; /* bx lr */
		memcpy(page, code, len * 2);
		__builtin___clear_cache((char *)page, (char *)page + len * 2);
	} else {
		uint32_t code[2] = { encoding, 0xe12fff1e /* bx lr */ };
		memcpy(page, code, sizeof(code));
		__builtin___clear_cache((char *)page, (char *)page + sizeof(code));
	}
	int signo = sigsetjmp(escape, 1);
	if (signo == 0)
		call_with_scratch((uintptr_t)page | (thumb ? 1 : 0), scratch);
	return signo;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: pl0probe pl0-cases.txt\n");
		return 2;
	}
	FILE *cases = fopen(argv[1], "r");
	if (!cases) {
		perror(argv[1]);
		return 2;
	}
	uint8_t *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	static uint32_t scratch[64];
	struct sigaction action;
	memset(&action, 0, sizeof(action));
	action.sa_sigaction = on_signal;
	action.sa_flags = SA_SIGINFO;
	sigemptyset(&action.sa_mask);
	int signals[] = { SIGILL, SIGTRAP, SIGSEGV, SIGBUS };
	for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
		sigaction(signals[i], &action, NULL);

	char line[256];
	int checked = 0, wrong = 0;
	while (fgets(line, sizeof(line), cases)) {
		char state[16], encoding[16], planner[16], host[16];
		int at = 0;
		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (sscanf(line, "%15s %15s %15s %15s %n", state, encoding,
			   planner, host, &at) != 4) {
			fprintf(stderr, "pl0probe: bad line: %s", line);
			return 2;
		}
		line[strcspn(line, "\n")] = 0;
		int thumb = strcmp(state, "thumb") == 0;
		int halfwords = strlen(encoding) == 8 ? 2 : 1;
		uint32_t word = (uint32_t)strtoul(encoding, NULL, 16);
		memset(scratch, 0, sizeof(scratch));
		const char *got =
			outcome_name(run_one(page, thumb, word, halfwords, scratch));
		int ok = strcmp(got, host) == 0;
		printf("pl0probe: %-5s %-8s %-6s host %-7s got %-7s %s  %s\n",
		       state, encoding, planner, host, got,
		       ok ? "ok" : "DIFFERS", line + at);
		checked++;
		wrong += !ok;
	}
	printf("pl0probe: %d instructions, %d as expected, %d differ\n",
	       checked, checked - wrong, wrong);
	return wrong == 0 ? 0 : 1;
}
