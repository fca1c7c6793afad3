/*
 * PC interrupt hardware for the interrupt kernels (pic.c, pit.c,
 * irqwindow.c, irqring3.c): the 8259A pair, the 8254 PIT and port 0x61, the
 * COM1 transmitter interrupt as a second interrupt source, and the common
 * setup that gives every such kernel the same quiet starting point.
 *
 * Sources btvmm has: the PIT (IRQ 0) and the 16550 UART on COM1 (IRQ 4 when
 * IER and MCR.OUT2 enable it). Nothing drives the slave 8259A.
 *
 * Determinism rules the kernels follow:
 *   - a request is made pending with IF = 0 (or masked) and waited for by
 *     polling the IRR through OCW3, never by timing: under QEMU the PIT's
 *     interrupt comes from a host timer, so the PIT status may already show
 *     OUT high while the IRQ 0 edge has not reached the 8259A yet;
 *   - it is delivered in an architecturally defined window (STI plus one
 *     instruction, POPF, IRET, STI; HLT), so where it lands is fixed;
 *   - a PIT one-shot (mode 0) leaves OUT high and makes no further edge, so
 *     after its interrupt is taken the timer is quiet; pit0_quiesce() stops a
 *     periodic channel 0 the same way (a control word alone does not stop
 *     QEMU's channel 0, which then raises one more edge at a host-timed
 *     moment);
 *   - an edge-triggered request is only ever taken away from the 8259A by
 *     its INTA cycle: the kernels never lower a pending line (a real 8259A
 *     would then give the spurious IR7 vector, QEMU keeps the IRR bit).
 */
#ifndef GUEST_PC_H
#define GUEST_PC_H

#include "lib.h"

#define PIC1 0x20 /* master command port; data (IMR) at PIC1 + 1 */
#define PIC2 0xa0 /* slave */
#define PIC1_VECTOR 0x20
#define PIC2_VECTOR 0x28
#define IRQ_VECTOR(irq) ((irq) < 8 ? PIC1_VECTOR + (irq) : PIC2_VECTOR + (irq) - 8)

#define OCW3_READ_IRR 0x0a
#define OCW3_READ_ISR 0x0b
#define OCW2_EOI 0x20
#define OCW2_SEOI(irq) (0x60 | (irq))

#define PIT_CH(n) (0x40 + (n))
#define PIT_CMD 0x43
#define PIT_HZ 1193182
#define PORT_B 0x61
#define PORT_B_GATE2 0x01
#define PORT_B_SPKR 0x02
#define PORT_B_OUT2 0x20

#define COM1_BASE 0x3f8
#define COM1_IER (COM1_BASE + 1)
#define COM1_IIR (COM1_BASE + 2)
#define COM1_MCR (COM1_BASE + 4)
#define COM1_LSR (COM1_BASE + 5)
#define COM1_IRQ 4

/* Polling bound for waits on the PIT itself that end within 55 ms (QEMU
 * 7.2 polls port 0x61 about 200000 times in 55 ms). */
#define WAIT_BOUND 4000000u
/* wait_irr() gives up after this many periods of 65536 PIT clocks (1.1 s). */
#define WATCHDOG_PERIODS 20

/* ---- 8259A ---------------------------------------------------------------- */

/* ICW1 (edge triggered, cascade, ICW4 needed), ICW2 vector base, ICW3,
 * ICW4 (8086 mode, normal EOI). Leaves the IMR as ICW1 left it (0). */
static inline void pic_icw(u16 base, u8 vector, u8 icw3)
{
	outb(base, 0x11);
	outb(base + 1, vector);
	outb(base + 1, icw3);
	outb(base + 1, 0x01);
}

/* Master on 0x20-0x27, slave (on the master's IR2) on 0x28-0x2f, all masked. */
static inline void pic_remap(void)
{
	pic_icw(PIC1, PIC1_VECTOR, 0x04);
	pic_icw(PIC2, PIC2_VECTOR, 0x02);
	outb(PIC1 + 1, 0xff);
	outb(PIC2 + 1, 0xff);
}

static inline u8 pic_irr(u16 base)
{
	outb(base, OCW3_READ_IRR);
	return inb(base);
}

/* Reads the ISR, then selects the IRR again. */
static inline u8 pic_isr(u16 base)
{
	outb(base, OCW3_READ_ISR);
	u8 v = inb(base);
	outb(base, OCW3_READ_IRR);
	return v;
}

static inline u8 pic_imr(u16 base) { return inb(base + 1); }
static inline void pic_set_imr(u16 base, u8 mask) { outb(base + 1, mask); }
static inline void pic_eoi(u16 base) { outb(base, OCW2_EOI); }
static inline void pic_seoi(u16 base, int irq) { outb(base, OCW2_SEOI(irq & 7)); }

static inline void irq_mask(int irq)
{
	u16 base = irq < 8 ? PIC1 : PIC2;
	pic_set_imr(base, pic_imr(base) | (1 << (irq & 7)));
}

static inline void irq_unmask(int irq)
{
	u16 base = irq < 8 ? PIC1 : PIC2;
	pic_set_imr(base, pic_imr(base) & ~(1 << (irq & 7)));
}

/* The architectural windows. Interrupts pending before them are taken at a
 * fixed point: after the instruction that follows STI. */
static inline void irq_window(void) { asm volatile("sti; nop; cli" : : : "memory"); }
static inline void sti_hlt_cli(void) { asm volatile("sti; hlt; cli" : : : "memory"); }

/* ---- 8254 ----------------------------------------------------------------- */

/* Control word (LSB then MSB, binary) and the count. */
static inline void pit_program(int ch, int mode, u16 count)
{
	outb(PIT_CMD, (u8)((ch << 6) | 0x30 | (mode << 1)));
	outb(PIT_CH(ch), (u8)count);
	outb(PIT_CH(ch), (u8)(count >> 8));
}

/* Counter latch command, then LSB and MSB. */
static inline u16 pit_latch(int ch)
{
	outb(PIT_CMD, (u8)(ch << 6));
	u8 lo = inb(PIT_CH(ch));
	u8 hi = inb(PIT_CH(ch));
	return (u16)(lo | hi << 8);
}

/* Read-back command latching only the status of one counter. */
static inline u8 pit_status(int ch)
{
	outb(PIT_CMD, (u8)(0xe0 | (2 << ch)));
	return inb(PIT_CH(ch));
}

/* Port 0x61 bits the kernels compare: gate 2, speaker data, OUT2. Bit 4
 * (refresh) is left out: QEMU toggles it on every read. */
static inline u8 port_b(void) { return inb(PORT_B) & (PORT_B_GATE2 | PORT_B_SPKR | PORT_B_OUT2); }

/* Waits until OUT2 (port 0x61 bit 5) is high: 1 if it went high. */
static inline int wait_out2(void)
{
	for (u32 i = 0; i < WAIT_BOUND; i++)
		if (inb(PORT_B) & PORT_B_OUT2)
			return 1;
	return 0;
}

/*
 * Polls the IRR until one of `bits` is set: 1 if it was, 0 after
 * WATCHDOG_PERIODS expirations of counter 2 (mode 0, count 65536, gate on,
 * speaker off), so a request that never comes ends the wait in bounded
 * time on any machine. Leaves counter 2 counting and port 0x61 = gate on.
 */
static inline int wait_irr(u16 base, u8 bits)
{
	u32 periods = 0;

	outb(PORT_B, (inb(PORT_B) & ~PORT_B_SPKR) | PORT_B_GATE2);
	pit_program(2, 0, 0);
	for (;;) {
		if (pic_irr(base) & bits)
			return 1;
		if (inb(PORT_B) & PORT_B_OUT2) {
			if (++periods == WATCHDOG_PERIODS)
				return 0;
			pit_program(2, 0, 0);
		}
	}
}

/* Busy-waits `count` PIT clocks with counter 2 (mode 0, gate high, speaker
 * off), as Linux's pit_calibrate_tsc does. */
static inline int pit2_delay(u16 count)
{
	outb(PORT_B, (inb(PORT_B) & ~PORT_B_SPKR) | PORT_B_GATE2);
	pit_program(2, 0, count);
	return wait_out2();
}

/* ---- COM1 as an interrupt source ------------------------------------------ */

/*
 * Raises IRQ 4: enables the transmitter-holding-register-empty interrupt
 * (IER bit 1, MCR.OUT2) and transmits `c`, whose transmission empties the
 * holding register again. Call with IF = 0 or IRQ 4 masked: the request is
 * pending when this returns (wait_irr). Print nothing until com1_irq_ack().
 */
static inline void com1_irq_raise(char c)
{
	while (!(inb(COM1_LSR) & 0x20))
		;
	outb(COM1_MCR, 0x0b); /* DTR, RTS, OUT2 */
	outb(COM1_IER, 0x02);
	outb(COM1_BASE, (u8)c);
}

/* In the IRQ 4 handler: reads the IIR (which clears a THRE interrupt) and
 * disables the UART's interrupts. Returns the IIR. */
static inline u8 com1_irq_ack(void)
{
	u8 iir = inb(COM1_IIR);
	outb(COM1_IER, 0x00);
	outb(COM1_MCR, 0x03);
	return iir;
}

/* ---- interrupt dispatch --------------------------------------------------- */

/*
 * Vectors 0x20-0x2f go to irq_dispatch(), which counts each IRQ and calls
 * irq_fns[irq]. Without a function: vectors 0x27 and 0x2f (the 8259A's
 * spurious IR7 vectors, never used for a device here) count in
 * irq_spurious, any other in irq_unexpected (with an EOI).
 */
typedef void (*irq_fn)(int irq, struct trap_frame *f);

static irq_fn irq_fns[16];
static volatile u32 irq_counts[16];
static volatile u32 irq_spurious, irq_unexpected;

static __attribute__((unused)) void irq_fn_eoi(int irq, struct trap_frame *f)
{
	(void)f;
	if (irq >= 8)
		pic_eoi(PIC2);
	pic_eoi(PIC1);
}

static __attribute__((unused)) void irq_dispatch(struct trap_frame *f)
{
	int irq = (int)f->vector - PIC1_VECTOR;

	irq_counts[irq]++;
	if (irq_fns[irq]) {
		irq_fns[irq](irq, f);
	} else if (irq == 7 || irq == 15) {
		irq_spurious++;
		if (irq == 15)
			pic_eoi(PIC1); /* the master's IR2 is in service */
	} else {
		irq_unexpected++;
		irq_fn_eoi(irq, f);
	}
}

/* Interrupt gates for vectors 0x20-0x2f, all to irq_dispatch(). */
static __attribute__((unused)) void irq_install(void)
{
	for (int v = PIC1_VECTOR; v < PIC1_VECTOR + 16; v++) {
		idt_set_default(v, GATE_INT32);
		set_trap_handler(v, irq_dispatch);
	}
}

/* Takes a pending IRQ 0, if any, with an EOI-only handler. IF = 0. */
static __attribute__((unused)) void irq0_take_pending(void)
{
	irq_fn saved = irq_fns[0];
	u8 imr = pic_imr(PIC1);

	irq_fns[0] = irq_fn_eoi;
	pic_set_imr(PIC1, imr & ~1);
	irq_window();
	pic_set_imr(PIC1, imr);
	irq_fns[0] = saved;
}

/*
 * Stops PIT channel 0 for good with IF = 0: a one-shot of 65535 clocks
 * (55 ms) replaces whatever ran, an IRQ 0 latched before it is taken, then
 * the one-shot's own edge is waited for and taken. Afterwards OUT0 stays high
 * and IRQ 0 is neither pending nor in service. Returns 0 if the edge never
 * came (only if something held the CPU for 55 ms, when the first take
 * already took it).
 */
static __attribute__((unused)) int pit0_quiesce(void)
{
	int ok;

	pit_program(0, 0, 0xffff);
	if (pic_irr(PIC1) & 1)
		irq0_take_pending();
	ok = wait_irr(PIC1, 1);
	irq0_take_pending();
	return ok;
}

/* The common start: vectors, 8259As remapped and masked, PIT quiet. */
static __attribute__((unused)) void pc_setup(void)
{
	irq_install();
	pic_remap();
	if (!pit0_quiesce())
		fail_exit("pit channel 0 one-shot raised no irq 0");
	for (int i = 0; i < 16; i++)
		irq_counts[i] = 0;
	irq_spurious = irq_unexpected = 0;
}

/* The last checks of every interrupt kernel. */
static __attribute__((unused)) void check_quiet_end(void)
{
	check_eq("spurious interrupts (vectors 0x27, 0x2f)", irq_spurious, 0);
	check_eq("unexpected irq vectors", irq_unexpected, 0);
	check_eq("master isr at the end", pic_isr(PIC1), 0);
	check_eq("slave isr at the end", pic_isr(PIC2), 0);
}

#endif
