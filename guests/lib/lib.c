/*
 * The guest test library: descriptor tables, trap dispatch, COM1 output,
 * results and exit (see lib.h).
 */
#include <stdarg.h>

#include "lib.h"

#define COM1 0x3f8
#define UART_THR 0
#define UART_IER 1
#define UART_DLL 0
#define UART_DLM 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_LCR_DLAB 0x80
#define UART_LCR_8N1 0x03
#define UART_LSR_THRE 0x20

#define DEBUG_EXIT_PORT 0xf4
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002

u64 gdt[GDT_ENTRIES] ALIGNED(8);
u64 idt[256] ALIGNED(8);
struct tss tss ALIGNED(16);
volatile struct fault_info last_fault;

extern u8 isr_stub_base[];
extern const u32 __ex_table_start[], __ex_table_end[];

static trap_handler handlers[256];
static u32 passed, total;

/* ---- memory ---------------------------------------------------------- */

void *memset(void *d, int c, size_t n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

void *memmove(void *d, const void *s, size_t n)
{
	u8 *p = d;
	const u8 *q = s;
	if (p < q)
		return memcpy(d, s, n);
	while (n--)
		p[n] = q[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *p = a, *q = b;
	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p < *q ? -1 : 1;
	return 0;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (u8)*a - (u8)*b;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* ---- output ---------------------------------------------------------- */

static void uart_init(void)
{
	outb(COM1 + UART_IER, 0x00);
	outb(COM1 + UART_LCR, UART_LCR_DLAB);
	outb(COM1 + UART_DLL, 0x01); /* 115200 baud */
	outb(COM1 + UART_DLM, 0x00);
	outb(COM1 + UART_LCR, UART_LCR_8N1);
	outb(COM1 + UART_FCR, 0x07); /* FIFOs on and cleared */
	outb(COM1 + UART_MCR, 0x03); /* DTR, RTS; OUT2 off: no IRQ */
}

void putc(char c)
{
	while (!(inb(COM1 + UART_LSR) & UART_LSR_THRE))
		;
	outb(COM1 + UART_THR, (u8)c);
}

void puts(const char *s)
{
	while (*s)
		putc(*s++);
}

void put_hex(u32 v, int digits)
{
	static const char hex[] = "0123456789abcdef";
	int n = 8;
	if (digits <= 0) {
		while (n > 1 && !(v >> ((n - 1) * 4)))
			n--;
	} else {
		n = digits > 8 ? 8 : digits;
	}
	while (n--)
		putc(hex[(v >> (n * 4)) & 0xf]);
}

void put_dec(u32 v)
{
	char buf[12];
	int i = 0;
	do {
		buf[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (i)
		putc(buf[--i]);
}

void put_sdec(s32 v)
{
	if (v < 0) {
		putc('-');
		put_dec(-(u32)v);
	} else {
		put_dec((u32)v);
	}
}

/*
 * A small printf: %s %c %d %u %x %X (same as %x) with an optional zero-pad
 * width (%08x), %llx for u64, %%.
 */
void printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	for (; *fmt; fmt++) {
		int width = 0, is_long = 0;
		if (*fmt != '%') {
			putc(*fmt);
			continue;
		}
		fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			is_long++;
			fmt++;
		}
		switch (*fmt) {
		case 's':
			puts(va_arg(ap, const char *));
			break;
		case 'c':
			putc((char)va_arg(ap, int));
			break;
		case 'd':
			put_sdec(va_arg(ap, s32));
			break;
		case 'u':
			put_dec(va_arg(ap, u32));
			break;
		case 'x':
		case 'X':
			if (is_long >= 2) {
				u64 v = va_arg(ap, u64);
				if (width > 8 || (v >> 32)) {
					put_hex((u32)(v >> 32), width > 8 ? width - 8 : 0);
					put_hex((u32)v, 8);
				} else {
					put_hex((u32)v, width);
				}
			} else {
				put_hex(va_arg(ap, u32), width);
			}
			break;
		case '%':
			putc('%');
			break;
		case 0:
			fmt--;
			break;
		default:
			putc('%');
			putc(*fmt);
			break;
		}
	}
	va_end(ap);
}

/* ---- results and exit ------------------------------------------------ */

void NORETURN debug_exit(u32 value)
{
	/* isa-debug-exit: QEMU exits with status (value << 1) | 1. */
	outl(DEBUG_EXIT_PORT, value);
	for (;;)
		asm volatile("cli; hlt");
}

void report(const char *name, int ok)
{
	total++;
	if (ok)
		passed++;
	printf("%s %s\n", ok ? "ok" : "not ok", name);
}

void check_eq(const char *name, u32 got, u32 want)
{
	printf("# %s = 0x%x\n", name, got);
	if (got != want)
		printf("# expected 0x%x\n", want);
	report(name, got == want);
}

static const char *const vector_names[32] = {
	"DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "CSO", "TS", "NP", "SS", "GP", "PF", "15",
	"MF", "AC", "MC", "XM", "VE", "CP", "22", "23", "24", "25", "26", "27", "28", "VC", "SX", "31",
};

void print_fault(void)
{
	if (last_fault.count == 0) {
		puts("no fault");
		return;
	}
	if (last_fault.count > 1)
		printf("%u faults, last ", last_fault.count);
	if (last_fault.vector < 32)
		printf("#%s(0x%x)", vector_names[last_fault.vector], last_fault.error);
	else
		printf("vector 0x%x", last_fault.vector);
}

void check_fault(const char *name, u32 vector, u32 error)
{
	printf("# %s: ", name);
	print_fault();
	putc('\n');
	report(name, last_fault.count == 1 && last_fault.vector == vector && last_fault.error == error);
}

void check_no_fault(const char *name)
{
	printf("# %s: ", name);
	print_fault();
	putc('\n');
	report(name, last_fault.count == 0);
}

u32 cmdline_option(const char *key, u32 fallback)
{
	const char *cmdline = (mb_info && (mb_info[0] & 4)) ? (const char *)mb_info[4] : 0;
	u32 length = strlen(key);

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

void NORETURN finish(void)
{
	printf("%u/%u passed\n", passed, total);
	debug_exit(passed == total ? 0 : 1);
}

void NORETURN fail_exit(const char *why)
{
	printf("FATAL: %s\n", why);
	printf("%u/%u passed\n", passed, total);
	debug_exit(1);
}

/* ---- descriptors ----------------------------------------------------- */

u64 make_desc(u32 base, u32 limit, u8 access, u8 flags)
{
	u64 d = 0;
	d |= limit & 0xffff;
	d |= (u64)(base & 0xffffff) << 16;
	d |= (u64)access << 40;
	d |= (u64)((limit >> 16) & 0xf) << 48;
	d |= (u64)(flags & 0xf) << 52;
	d |= (u64)(base >> 24) << 56;
	return d;
}

void gdt_set(int index, u32 base, u32 limit, u8 access, u8 flags)
{
	gdt[index] = make_desc(base, limit, access, flags);
}

void gdt_clear_spares(void)
{
	for (int i = GDT_SPARE_FIRST; i < GDT_ENTRIES; i++)
		gdt[i] = 0;
}

u32 desc_base(u64 d)
{
	return (u32)((d >> 16) & 0xffffff) | (u32)((d >> 56) << 24);
}

u32 desc_limit(u64 d)
{
	return (u32)(d & 0xffff) | (u32)(((d >> 48) & 0xf) << 16);
}

u8 desc_access(u64 d)
{
	return (u8)(d >> 40);
}

void idt_set_gate(int vector, u32 offset, u16 selector, u8 type)
{
	idt[vector] = (u64)(offset & 0xffff) | ((u64)selector << 16) | ((u64)type << 40) |
		      ((u64)(offset >> 16) << 48);
}

void idt_set_default(int vector, u8 type)
{
	idt_set_gate(vector, (u32)isr_stub_base + 16 * (u32)vector, SEL_KCODE, type);
}

static void tables_init(void)
{
	struct dtr d;

	gdt[0] = 0;
	gdt_set(1, 0, 0xfffff, ACC_P | ACC_DPL(0) | ACC_CODE_RX | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(2, 0, 0xfffff, ACC_P | ACC_DPL(0) | ACC_DATA_RW | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(3, 0, 0xfffff, ACC_P | ACC_DPL(3) | ACC_CODE_RX | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(4, 0, 0xfffff, ACC_P | ACC_DPL(3) | ACC_DATA_RW | ACC_ACCESSED, FLG_G | FLG_DB);
	memset(&tss, 0, sizeof(tss));
	tss.ss0 = SEL_KDATA;
	tss.esp0 = (u32)trap_stack_top;
	tss.iomap_base = sizeof(tss); /* no I/O bitmap */
	gdt_set(5, (u32)&tss, sizeof(tss) - 1, ACC_P | ACC_TSS32, 0);
	gdt[GDT_UNDEFINED] = 0;
	gdt_clear_spares();

	d.limit = GDT_LIMIT;
	d.base = (u32)gdt;
	lgdt(&d);
	asm volatile("ljmp %0, $1f\n1:" : : "i"(SEL_KCODE));
	asm volatile("movl %0, %%ds\n\t"
		     "movl %0, %%es\n\t"
		     "movl %0, %%fs\n\t"
		     "movl %0, %%gs\n\t"
		     "movl %0, %%ss"
		     :
		     : "r"((u32)SEL_KDATA)
		     : "memory");
	lldt(0);
	ltr(SEL_TSS);

	for (int v = 0; v < 256; v++)
		idt[v] = 0;
	for (int v = 0; v < 32; v++)
		idt_set_default(v, GATE_INT32);
	for (int v = 0x40; v < 0x50; v++)
		idt_set_default(v, GATE_INT32);
	idt_set_default(0x80, GATE_INT32 | GATE_DPL(3));
	idt_set_default(0x81, GATE_INT32 | GATE_DPL(3));
	d.limit = sizeof(idt) - 1;
	d.base = (u32)idt;
	lidt(&d);
}

/* ---- traps ----------------------------------------------------------- */

void set_trap_handler(int vector, trap_handler handler)
{
	handlers[vector] = handler;
}

void fault_reset(void)
{
	last_fault.count = 0;
	last_fault.vector = 0xffffffff;
	last_fault.error = 0xffffffff;
	last_fault.eip = 0;
	last_fault.cs = 0;
	last_fault.eflags = 0;
}

void print_frame(const struct trap_frame *f)
{
	printf("vector %u error %x at %x:%x eflags %x\n", f->vector, f->error, f->cs & 0xffff, f->eip,
	       f->eflags);
	printf("eax %x ebx %x ecx %x edx %x esi %x edi %x ebp %x\n", f->eax, f->ebx, f->ecx, f->edx,
	       f->esi, f->edi, f->ebp);
	printf("ds %x es %x fs %x gs %x", f->ds & 0xffff, f->es & 0xffff, f->fs & 0xffff, f->gs & 0xffff);
	if (f->cs & 3)
		printf(" user ss:esp %x:%x", f->user_ss & 0xffff, f->user_esp);
	printf("\n");
}

static void user_exit_handler(struct trap_frame *f)
{
	user_return(f->eax);
}

void trap_dispatch(struct trap_frame *f)
{
	if (handlers[f->vector]) {
		handlers[f->vector](f);
		return;
	}
	for (const u32 *e = __ex_table_start; e < __ex_table_end; e += 2) {
		if (e[0] == f->eip) {
			last_fault.count++;
			last_fault.vector = f->vector;
			last_fault.error = f->error;
			last_fault.eip = f->eip;
			last_fault.cs = f->cs & 0xffff;
			last_fault.eflags = f->eflags;
			f->eip = e[1];
			return;
		}
	}
	printf("unexpected trap: ");
	print_frame(f);
	fail_exit("unexpected trap");
}

/* ---- start ----------------------------------------------------------- */

const u32 *mb_info;

void NORETURN lib_start(u32 magic, u32 info)
{
	mb_info = (const u32 *)info;
	write_cr0(CR0_LIB);
	write_cr4(0);
	uart_init();
	/* Mask both 8259s: nothing may interrupt the few IF = 1 windows. */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	tables_init();
	fault_reset();
	set_trap_handler(0x81, user_exit_handler);
	if (magic != MULTIBOOT_BOOTLOADER_MAGIC)
		fail_exit("not started by a Multiboot loader");
	kmain();
	fail_exit("kmain returned");
}
