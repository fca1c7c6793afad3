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

void kmain(void)
{
	u32 hz = cmdline_option("hz", 100);
	u32 seconds = cmdline_option("seconds", 5);
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
