/*
 * A kernel for the gdb stub's test (host-loader/tests/gdb.rs): a function
 * called a few times, a sensitive instruction behind a global label, a
 * watched variable and a user-mode function, each something gdb stops at.
 * On its own (QEMU, btvmm without a debugger) it just runs them and checks
 * their results; the gdb test checks what the debugger sees on the way.
 */
#include "lib.h"

volatile u32 counter;
volatile u32 watched;
volatile u32 user_done;

/* gdb breaks here by name: called three times. */
__attribute__((noinline)) void tick(u32 step)
{
	counter += step;
}

/* The instruction at read_cr0 is sensitive: a step over it shows the
 * emulated result (the guest's CR0) in EAX. */
__attribute__((noinline)) u32 cr0_value(void)
{
	u32 value;
	asm volatile(".globl read_cr0\nread_cr0:\n\tmov %%cr0, %%eax" : "=a"(value));
	return value;
}

/* User mode (CPL 3) code a breakpoint stops in too (a hardware
 * breakpoint of the world: user code runs untraced). */
__attribute__((noinline)) u32 user_code(void)
{
	user_done = 1;
	return 7;
}

void kmain(void)
{
	for (u32 step = 1; step <= 3; step++)
		tick(step);
	check_eq("counter after three ticks", counter, 6);
	u32 cr0 = cr0_value();
	report("CR0.PE as the guest set it", (cr0 & CR0_PE) != 0);
	watched = 0x5a5a;
	check_eq("the watched word", watched, 0x5a5a);
	check_eq("user code's value", run_user(user_code, FL_FIXED | FL_IF), 7);
	check_eq("user code ran", user_done, 1);
	finish();
}
