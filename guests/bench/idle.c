/*
 * Idle benchmark: the PIT's channel 0 ticks at HZ (100 unless the kernel
 * command line says "hz=N") and the kernel waits in HLT for SECONDS seconds
 * of ticks (5 unless "seconds=N"), handling each interrupt with an EOI, as
 * an idle OS with a periodic tick does. Prints the number of ticks handled
 * and exits through port 0xf4. Run under `time` to see what an idle guest
 * costs the host: `time btvmm run --kernel idle.elf --cmdline "hz=1000"`.
 */
#include "pc.h"

static volatile u32 ticks;

static void tick(int irq, struct trap_frame *f)
{
	ticks++;
	irq_fn_eoi(irq, f);
}

/* The value of "key=N" on the Multiboot command line, or fallback. */
static u32 option(const char *cmdline, const char *key, u32 fallback)
{
	u32 length = 0;
	while (key[length])
		length++;
	for (const char *at = cmdline; at && *at; at++) {
		u32 i = 0;
		while (i < length && at[i] == key[i])
			i++;
		if (i == length && at[i] == '=') {
			u32 value = 0;
			for (at += length + 1; *at >= '0' && *at <= '9'; at++)
				value = value * 10 + (u32)(*at - '0');
			return value ? value : fallback;
		}
	}
	return fallback;
}

void kmain(void)
{
	const char *cmdline = (mb_info && (mb_info[0] & 4)) ? (const char *)mb_info[4] : 0;
	u32 hz = option(cmdline, "hz", 100);
	u32 seconds = option(cmdline, "seconds", 5);
	u32 want = hz * seconds;

	pc_setup();
	irq_fns[0] = tick;
	ticks = 0;
	pit_program(0, 2, PIT_HZ / hz);
	pic_set_imr(PIC1, 0xfe);
	asm volatile("sti");
	while (ticks < want)
		asm volatile("hlt");
	asm volatile("cli");
	printf("# idle: %u ticks at %u Hz handled with hlt\n", ticks, hz);
	check_eq("spurious interrupts", irq_spurious, 0);
	finish();
}
