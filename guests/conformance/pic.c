/*
 * The 8259A pair: ICW1-ICW4 initialisation (vectors 0x20 and 0x28), the
 * IMR (OCW1), IRR and ISR reads through OCW3, specific and non-specific EOI
 * (OCW2), priority between two requests, nesting of a higher-priority
 * request into a lower one's handler, and the slave's registers.
 *
 * Two sources, both deterministic (see lib/pc.h): IRQ 0 from a PIT
 * one-shot (mode 0, whose OUT then stays high), and IRQ 4 from the COM1
 * transmitter-empty interrupt, raised by transmitting the newline that ends
 * a "#" line with IER bit 1 and MCR.OUT2 set. Nothing drives the slave (the
 * RTC and the disks are not part of btvmm's machine), so the slave is
 * checked through its registers only: init, IMR, IRR, ISR, EOI with nothing
 * in service, and no request through the cascade.
 *
 * Requests are made pending with IF = 0 or masked and taken in `sti; nop;
 * cli` windows, so every count below is exact.
 */
#include "pc.h"

/* What the handlers saw, in delivery order. */
static volatile char order[16];
static volatile u32 norder;
static volatile u8 seen_isr[8], seen_irr[8], seen_iir;

static void log_event(char c)
{
	if (norder < sizeof(order) - 1)
		order[norder++] = c;
	order[norder] = 0;
}

static void order_reset(void)
{
	norder = 0;
	order[0] = 0;
}

static void check_order(const char *name, const char *want)
{
	printf("# %s: %s\n", name, (const char *)order);
	report(name, strcmp((const char *)order, want) == 0);
}

static void irq0_oneshot(void)
{
	pit_program(0, 0, 100);
	if (!wait_irr(PIC1, 0x01))
		fail_exit("irq 0 not pending after a pit one-shot");
}

/* Prints `what` and ends the line with the newline whose transmission
 * raises IRQ 4; returns when IRQ 4 is pending. */
static void irq4_raise(const char *what)
{
	printf("# %s: irq 4 from the transmitter-empty interrupt of this newline", what);
	com1_irq_raise('\n');
	if (!wait_irr(PIC1, 0x10))
		fail_exit("irq 4 not pending after a com1 transmission");
}

/* ---- handlers --------------------------------------------------------------- */

static void h0_count(int irq, struct trap_frame *f)
{
	(void)irq, (void)f;
	log_event('0');
	pic_eoi(PIC1);
}

static void h4_count(int irq, struct trap_frame *f)
{
	(void)irq, (void)f;
	log_event('4');
	seen_iir = com1_irq_ack();
	pic_eoi(PIC1);
}

/* ---- initialisation and the IMR -------------------------------------------- */

static void test_init(void)
{
	irq_install();
	/* Replace the BIOS's periodic timer by a 55 ms one-shot first: its edge
	 * is taken below, after the checks. */
	pit_program(0, 0, 0xffff);
	/* Both chips as the kernels use them; the IMR reads before OCW1. */
	pic_icw(PIC1, PIC1_VECTOR, 0x04);
	check_eq("master imr after icw1-icw4", pic_imr(PIC1), 0x00);
	pic_set_imr(PIC1, 0xff);
	pic_icw(PIC2, PIC2_VECTOR, 0x02);
	check_eq("slave imr after icw1-icw4", pic_imr(PIC2), 0x00);
	pic_set_imr(PIC2, 0xff);
	check_eq("master imr after ocw1 0xff", pic_imr(PIC1), 0xff);
	check_eq("slave imr after ocw1 0xff", pic_imr(PIC2), 0xff);

	/* The PIT's last edge taken: nothing pending or in service. */
	report("pit channel 0 quiesced (one-shot edge taken)", pit0_quiesce());
	check_eq("master irr when quiet", pic_irr(PIC1), 0);
	check_eq("master isr when quiet", pic_isr(PIC1), 0);
	check_eq("slave irr when quiet", pic_irr(PIC2), 0);
	check_eq("slave isr when quiet", pic_isr(PIC2), 0);

	/* OCW1 round trips; the chips' IMRs are independent. */
	pic_set_imr(PIC1, 0x5a);
	pic_set_imr(PIC2, 0xa5);
	check_eq("master imr 0x5a", pic_imr(PIC1), 0x5a);
	check_eq("slave imr 0xa5", pic_imr(PIC2), 0xa5);
	pic_set_imr(PIC1, 0xc3);
	check_eq("slave imr unchanged by a master ocw1", pic_imr(PIC2), 0xa5);
	pic_set_imr(PIC1, 0xff);
	pic_set_imr(PIC2, 0xff);
}

/* ---- OCW3 --------------------------------------------------------------------- */

static void test_ocw3(void)
{
	u8 a, b, c, d, e, imr;

	irq_fns[0] = h0_count;
	order_reset();
	irq0_oneshot(); /* IRQ 0 pending and masked: IRR 0x01, ISR 0 */
	outb(PIC1, OCW3_READ_IRR);
	a = inb(PIC1);
	b = inb(PIC1);
	outb(PIC1, OCW3_READ_ISR);
	c = inb(PIC1);
	d = inb(PIC1);
	imr = inb(PIC1 + 1);
	outb(PIC1, 0x08); /* OCW3 with RR = 0: the selection stays ISR */
	e = inb(PIC1);
	outb(PIC1, OCW3_READ_IRR);
	check_eq("ocw3 0x0a: irr with irq 0 pending", a, 0x01);
	check_eq("ocw3 0x0a: second read still the irr", b, 0x01);
	check_eq("ocw3 0x0b: isr", c, 0x00);
	check_eq("ocw3 0x0b: second read still the isr", d, 0x00);
	check_eq("port 0x21 reads the imr whatever ocw3 selected", imr, 0xff);
	check_eq("ocw3 with rr = 0 keeps the isr selected", e, 0x00);
	check_eq("slave irr unaffected by the master's request", pic_irr(PIC2), 0x00);

	/* The slave's selection is its own. */
	outb(PIC2, OCW3_READ_ISR);
	outb(PIC1, OCW3_READ_IRR);
	a = inb(PIC2);
	b = inb(PIC1);
	outb(PIC2, OCW3_READ_IRR);
	check_eq("slave isr read after a master ocw3", a, 0x00);
	check_eq("master irr read after a slave ocw3", b, 0x01);

	irq_unmask(0);
	irq_window();
	irq_mask(0);
	check_order("irq 0 taken after the ocw3 reads", "0");
}

/* ---- masks ------------------------------------------------------------------ */

static void test_masks(void)
{
	irq_fns[0] = h0_count;
	irq_fns[4] = h4_count;

	/* IRQ 0: pending while masked, delivered once unmasked. */
	order_reset();
	irq0_oneshot();
	irq_window();
	irq_window();
	check_order("masked irq 0 not delivered", "");
	check_eq("masked irq 0: irr", pic_irr(PIC1), 0x01);
	check_eq("masked irq 0: isr", pic_isr(PIC1), 0x00);
	irq_unmask(0);
	check_order("unmasked irq 0 with if = 0 not delivered", "");
	irq_window();
	check_order("irq 0 delivered after unmasking", "0");
	check_eq("irr after the irq 0 eoi", pic_irr(PIC1), 0x00);
	check_eq("isr after the irq 0 eoi", pic_isr(PIC1), 0x00);
	irq_window();
	irq_window();
	check_order("edge-triggered irq 0 with the line still high: not again", "0");

	/* Masking a pending request again holds it back. */
	order_reset();
	irq0_oneshot();
	irq_mask(0);
	irq_window();
	check_order("irq 0 masked again while pending: not delivered", "");
	check_eq("irq 0 masked again: still in the irr", pic_irr(PIC1), 0x01);
	irq_unmask(0);
	irq_window();
	irq_mask(0);
	check_order("irq 0 unmasked again: delivered once", "0");

	/* IRQ 4 likewise. */
	order_reset();
	irq4_raise("masked irq 4");
	irq_window();
	check_order("masked irq 4 not delivered", "");
	check_eq("masked irq 4: irr", pic_irr(PIC1), 0x10);
	irq_unmask(4);
	irq_window();
	irq_mask(4);
	check_order("irq 4 delivered after unmasking", "4");
	check_eq("com1 iir in the irq 4 handler (low nibble: thr empty)", seen_iir & 0x0f, 0x02);
	check_eq("com1 iir after the handler (no interrupt)", inb(COM1_IIR) & 0x0f, 0x01);
	check_eq("irr after the irq 4 eoi", pic_irr(PIC1), 0x00);

	/* The other lines of the master stay quiet. */
	static const int others[] = {1, 3, 5, 6, 7};
	u32 before = 0, after = 0;
	for (int i = 0; i < 5; i++)
		before += irq_counts[others[i]];
	pic_set_imr(PIC1, 0x15); /* IRQs 1, 3, 5, 6, 7 unmasked; 0, 2, 4 masked */
	irq_window();
	irq_window();
	pic_set_imr(PIC1, 0xff);
	for (int i = 0; i < 5; i++)
		after += irq_counts[others[i]];
	check_eq("deliveries from irqs 1, 3, 5, 6, 7 unmasked", after - before, 0);
}

/* ---- in service: IRR/ISR reads and EOI ------------------------------------- */

static void h0_in_service(int irq, struct trap_frame *f)
{
	(void)irq, (void)f;
	log_event('0');
	seen_isr[0] = pic_isr(PIC1);
	seen_irr[0] = pic_irr(PIC1);
	seen_isr[1] = pic_isr(PIC2);
	pic_eoi(PIC2); /* a non-specific EOI to the slave: not the master's */
	seen_isr[2] = pic_isr(PIC1);
	pic_seoi(PIC1, 3); /* a specific EOI for a level not in service */
	seen_isr[3] = pic_isr(PIC1);
	pic_seoi(PIC1, 0);
	seen_isr[4] = pic_isr(PIC1);
}

static void h0_nonspecific(int irq, struct trap_frame *f)
{
	(void)irq, (void)f;
	log_event('0');
	seen_isr[0] = pic_isr(PIC1);
	pic_eoi(PIC1);
	seen_isr[1] = pic_isr(PIC1);
}

static void test_in_service(void)
{
	irq_fns[0] = h0_in_service;
	order_reset();
	irq_unmask(0);
	irq0_oneshot();
	irq_window();
	irq_mask(0);
	check_order("irq 0 with eoi checks", "0");
	check_eq("isr in the irq 0 handler", seen_isr[0], 0x01);
	check_eq("irr in the irq 0 handler (cleared by inta)", seen_irr[0], 0x00);
	check_eq("slave isr in the irq 0 handler", seen_isr[1], 0x00);
	check_eq("master isr after a non-specific eoi to the slave", seen_isr[2], 0x01);
	check_eq("isr after a specific eoi for irq 3 (not in service)", seen_isr[3], 0x01);
	check_eq("isr after a specific eoi for irq 0", seen_isr[4], 0x00);

	irq_fns[0] = h0_nonspecific;
	order_reset();
	irq_unmask(0);
	irq0_oneshot();
	irq_window();
	irq_mask(0);
	check_order("irq 0 with a non-specific eoi", "0");
	check_eq("isr before the non-specific eoi", seen_isr[0], 0x01);
	check_eq("isr after the non-specific eoi", seen_isr[1], 0x00);
}

/* ---- priority ------------------------------------------------------------------ */

static void h0_no_eoi(int irq, struct trap_frame *f)
{
	(void)irq, (void)f;
	log_event('0');
	seen_isr[0] = pic_isr(PIC1);
	seen_irr[0] = pic_irr(PIC1);
}

static void h4_prio(int irq, struct trap_frame *f)
{
	(void)irq, (void)f;
	log_event('4');
	seen_isr[4] = pic_isr(PIC1);
	seen_irr[4] = pic_irr(PIC1);
	seen_iir = com1_irq_ack();
	pic_eoi(PIC1);
}

static void test_priority(void)
{
	irq_fns[0] = h0_no_eoi;
	irq_fns[4] = h4_prio;
	order_reset();
	irq0_oneshot();
	irq4_raise("priority");
	check_eq("irr with irq 0 and irq 4 pending", pic_irr(PIC1), 0x11);
	pic_set_imr(PIC1, 0xee);
	irq_window();
	check_order("irq 0 and irq 4 pending: first delivery", "0");
	check_eq("isr in the irq 0 handler", seen_isr[0], 0x01);
	check_eq("irr in the irq 0 handler (irq 4 waiting)", seen_irr[0], 0x10);
	irq_window();
	irq_window();
	check_order("irq 4 held back while irq 0 is in service", "0");
	check_eq("isr with irq 0 in service after its handler", pic_isr(PIC1), 0x01);
	pic_eoi(PIC1);
	check_order("eoi with if = 0 delivers nothing yet", "0");
	irq_window();
	pic_set_imr(PIC1, 0xff);
	check_order("irq 4 after the irq 0 eoi", "04");
	check_eq("isr in the irq 4 handler", seen_isr[4], 0x10);
	check_eq("irr in the irq 4 handler", seen_irr[4], 0x00);
	check_eq("isr at the end of the priority test", pic_isr(PIC1), 0x00);
}

/* ---- nesting and EOI order -------------------------------------------------- */

static volatile u32 eoi_mode;

/* IRQ 4's handler: IRQ 0 (higher priority) nests while IRQ 4 is in service. */
static void h4_nest(int irq, struct trap_frame *f)
{
	(void)irq, (void)f;
	log_event('4');
	seen_isr[0] = pic_isr(PIC1);
	seen_iir = com1_irq_ack();
	pit_program(0, 0, 100);
	asm volatile("sti; hlt; cli" : : : "memory"); /* IRQ 0 arrives */
	log_event('4');
	seen_isr[3] = pic_isr(PIC1);
	if (eoi_mode == 0)
		pic_eoi(PIC1);
	seen_isr[4] = pic_isr(PIC1);
}

static void h0_nested(int irq, struct trap_frame *f)
{
	(void)irq, (void)f;
	log_event('0');
	seen_isr[1] = pic_isr(PIC1);
	if (eoi_mode == 0) {
		pic_eoi(PIC1); /* non-specific: the highest level in service, 0 */
	} else {
		pic_seoi(PIC1, 4); /* the lower level first */
		seen_isr[5] = pic_isr(PIC1);
		pic_eoi(PIC1);
	}
	seen_isr[2] = pic_isr(PIC1);
	log_event('0');
}

static void test_nesting(void)
{
	irq_fns[0] = h0_nested;
	irq_fns[4] = h4_nest;

	eoi_mode = 0;
	order_reset();
	pic_set_imr(PIC1, 0xee);
	irq4_raise("nesting");
	irq_window();
	pic_set_imr(PIC1, 0xff);
	check_order("irq 0 nested in the irq 4 handler", "4004");
	check_eq("isr in the irq 4 handler", seen_isr[0], 0x10);
	check_eq("isr in the nested irq 0 handler", seen_isr[1], 0x11);
	check_eq("isr after a non-specific eoi with irq 0 and 4 in service", seen_isr[2], 0x10);
	check_eq("isr back in the irq 4 handler", seen_isr[3], 0x10);
	check_eq("isr after the irq 4 handler's eoi", seen_isr[4], 0x00);

	eoi_mode = 1;
	order_reset();
	pic_set_imr(PIC1, 0xee);
	irq4_raise("nesting, specific eoi");
	irq_window();
	pic_set_imr(PIC1, 0xff);
	check_order("irq 0 nested, specific eoi for irq 4 first", "4004");
	check_eq("isr in the nested irq 0 handler (specific eoi case)", seen_isr[1], 0x11);
	check_eq("isr after a specific eoi for irq 4 inside irq 0", seen_isr[5], 0x01);
	check_eq("isr after the non-specific eoi that follows", seen_isr[2], 0x00);
	check_eq("isr back in the irq 4 handler (already ended)", seen_isr[3], 0x00);
	check_eq("isr at the end of the nesting test", pic_isr(PIC1), 0x00);
}

/* ---- the slave ------------------------------------------------------------------ */

static void test_slave(void)
{
	u8 a, b;

	/* Re-initialised at another base and back: the IMR is cleared each time. */
	pic_set_imr(PIC2, 0x3c);
	pic_icw(PIC2, 0x70, 0x02);
	check_eq("slave imr after icw1-icw4 at base 0x70", pic_imr(PIC2), 0x00);
	pic_set_imr(PIC2, 0xff);
	pic_icw(PIC2, PIC2_VECTOR, 0x02);
	check_eq("slave imr after icw1-icw4 at base 0x28", pic_imr(PIC2), 0x00);
	check_eq("master imr unchanged by the slave's init", pic_imr(PIC1), 0xff);
	pic_set_imr(PIC2, 0xff);

	/* OCW3 on the slave. */
	outb(PIC2, OCW3_READ_ISR);
	a = inb(PIC2);
	b = inb(PIC2);
	outb(PIC2, OCW3_READ_IRR);
	check_eq("slave isr via ocw3 0x0b", a, 0x00);
	check_eq("slave isr second read", b, 0x00);
	check_eq("slave irr via ocw3 0x0a", pic_irr(PIC2), 0x00);

	/* EOIs with nothing in service change nothing. */
	pic_eoi(PIC2);
	pic_seoi(PIC2, 0);
	pic_seoi(PIC2, 7);
	check_eq("slave isr after eois with nothing in service", pic_isr(PIC2), 0x00);
	check_eq("slave imr after eois", pic_imr(PIC2), 0xff);

	/* The cascade unmasked end to end: nothing drives the slave. */
	order_reset();
	u32 before = 0;
	for (int i = 8; i < 16; i++)
		before += irq_counts[i];
	pic_set_imr(PIC2, 0x00);
	pic_set_imr(PIC1, 0xfb); /* only IR2, the cascade */
	irq_window();
	irq_window();
	pic_set_imr(PIC1, 0xff);
	pic_set_imr(PIC2, 0xff);
	u32 after = irq_counts[2];
	for (int i = 8; i < 16; i++)
		after += irq_counts[i];
	check_eq("deliveries through the unmasked cascade", after - before, 0);
	check_eq("slave isr after the cascade window", pic_isr(PIC2), 0x00);
	check_eq("master isr after the cascade window", pic_isr(PIC1), 0x00);
}

void kmain(void)
{
	test_init();
	test_ocw3();
	test_masks();
	test_in_service();
	test_priority();
	test_nesting();
	test_slave();
	check_quiet_end();
	finish();
}
