/*
 * Exit benchmark: the kernel reads and writes COM1's scratch register
 * (port 0x3ff), a device of the btvmm process, N times each ("n=N",
 * 100000 unless said), so every access is a round trip from the world to
 * the host and back: what the host's side of an exit costs, its seccomp
 * filter included. Checks every value read back and exits through port
 * 0xf4. `time btvmm run --kernel exits.elf --cmdline "n=200000"`.
 */
#include "pc.h"

#define COM1_SCRATCH 0x3ff

void kmain(void)
{
	u32 n = cmdline_option("n", 100000);
	u32 wrong = 0;

	pc_setup();
	for (u32 i = 0; i < n; i++) {
		outb(COM1_SCRATCH, (u8)i);
		if (inb(COM1_SCRATCH) != (u8)i)
			wrong++;
	}
	printf("# exits: %u scratch-register round trips\n", n);
	check_eq("values read back wrong", wrong, 0);
	finish();
}
