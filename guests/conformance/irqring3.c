/*
 * Hardware interrupts that arrive while the CPU runs CPL 3 code: a user
 * loop with IF = 1 spins until a flag that the kernel's timer handler sets
 * after 10 ticks (PIT channel 0, mode 2, 1 kHz, started by a system call
 * from the user code). Each tick is delivered
 * through the TSS's SS0:ESP0 with a CPL 3 frame (CS 0x1b, SS 0x23, the
 * user's ESP and EFLAGS, the user's DS/ES in the trap stub's frame), the
 * EIP inside the loop, the user's registers intact, and IRET returns to
 * CPL 3 where the loop goes on. Then the same with a user loop that polls
 * the tick count through `int $0x80` (ticks only ever arrive at CPL 3: the
 * kernel runs with IF = 0), a moved ESP0, and a one-shot IRQ 0 made pending
 * before entering CPL 3, which is taken at the first user instruction.
 *
 * The user code is in assembly so that the registers it holds across the
 * interrupts are known. It reads nothing the host would answer natively
 * under btvmm (no PUSHF, no segment register reads): its EFLAGS and
 * segments are seen only in the kernel's frames.
 */
#include "pc.h"

#define USER_TICKS 10

volatile u32 user_flag, user_esp_seen, user_result;
extern char user_spin[], user_spin_loop[], user_spin_end[];
extern char user_poll[], user_poll_loop[], user_poll_end[];
extern char user_first[];

/*
 * user_spin: loads known values into EBX ESI EDI EBP, records ESP, starts
 * the timer with int $0x80 (EAX = 8), spins until user_flag is set, then
 * returns 0x600d if the registers survived. Starting the timer from CPL 3
 * puts every tick inside the loop, even one that a host delay made pending
 * before the system call returned (it lands on the loop's first
 * instruction). user_poll: the same, polling the tick count with int $0x80
 * (EAX = 7).
 * user_first: returns at once (its first instruction is where a pending
 * interrupt lands).
 */
asm(".text\n"
    ".globl user_spin, user_spin_loop, user_spin_end\n"
    "user_spin:\n\t"
    "pushl %ebx\n\tpushl %esi\n\tpushl %edi\n\tpushl %ebp\n\t"
    "movl $0x11111111, %ebx\n\t"
    "movl $0x22222222, %esi\n\t"
    "movl $0x33333333, %edi\n\t"
    "movl $0x44444444, %ebp\n\t"
    "movl %esp, user_esp_seen\n\t"
    "movl $8, %eax\n\t"
    "int $0x80\n"
    "user_spin_loop:\n\t"
    "cmpl $0, user_flag\n\t"
    "je user_spin_loop\n"
    "user_spin_end:\n\t"
    "movl $0xbad, %eax\n\t"
    "cmpl $0x11111111, %ebx\n\tjne 1f\n\t"
    "cmpl $0x22222222, %esi\n\tjne 1f\n\t"
    "cmpl $0x33333333, %edi\n\tjne 1f\n\t"
    "cmpl $0x44444444, %ebp\n\tjne 1f\n\t"
    "movl $0x600d, %eax\n"
    "1:\n\t"
    "popl %ebp\n\tpopl %edi\n\tpopl %esi\n\tpopl %ebx\n\t"
    "ret\n"
    ".globl user_poll, user_poll_loop, user_poll_end\n"
    "user_poll:\n\t"
    "pushl %ebx\n\tpushl %esi\n\tpushl %edi\n\tpushl %ebp\n\t"
    "movl $0x55555555, %ebx\n\t"
    "movl $0x66666666, %esi\n\t"
    "movl $0x77777777, %edi\n\t"
    "movl $0x88888888, %ebp\n\t"
    "movl %esp, user_esp_seen\n\t"
    "movl $8, %eax\n\t"
    "int $0x80\n"
    "user_poll_loop:\n\t"
    "movl $7, %eax\n\t"
    "int $0x80\n\t"
    "cmpl $" "10" ", %eax\n\t"
    "jb user_poll_loop\n"
    "user_poll_end:\n\t"
    "movl $0xbad, %eax\n\t"
    "cmpl $0x55555555, %ebx\n\tjne 1f\n\t"
    "cmpl $0x66666666, %esi\n\tjne 1f\n\t"
    "cmpl $0x77777777, %edi\n\tjne 1f\n\t"
    "cmpl $0x88888888, %ebp\n\tjne 1f\n\t"
    "movl $0x600d, %eax\n"
    "1:\n\t"
    "popl %ebp\n\tpopl %edi\n\tpopl %esi\n\tpopl %ebx\n\t"
    "ret\n"
    ".globl user_first\n"
    "user_first:\n\t"
    "movl $0x1234, %eax\n\t"
    "ret\n");

/* What the timer handler saw. */
static volatile struct {
	u32 ticks, cpl3, cpl0, bad_cs, bad_ss, bad_esp, bad_eflags, bad_seg, bad_eip, bad_regs,
		bad_stack;
	u32 first_eip, first_cs, first_eflags;
	u32 eip_lo, eip_hi; /* the loop's bounds for this run */
	u32 ebx, esi, edi, ebp;
	u32 esp0;
} tk;
static volatile u32 syscalls;

static void tick_reset(u32 lo, u32 hi, u32 ebx, u32 esi, u32 edi, u32 ebp)
{
	memset((void *)&tk, 0, sizeof(tk));
	tk.eip_lo = lo;
	tk.eip_hi = hi;
	tk.ebx = ebx;
	tk.esi = esi;
	tk.edi = edi;
	tk.ebp = ebp;
	tk.esp0 = tss.esp0;
	user_flag = 0;
	user_esp_seen = 0;
	syscalls = 0;
}

static void h0_user(int irq, struct trap_frame *f)
{
	(void)irq;
	tk.ticks++;
	if ((f->cs & 3) == 3) {
		tk.cpl3++;
		if ((f->cs & 0xffff) != SEL_UCODE)
			tk.bad_cs++;
		if ((f->user_ss & 0xffff) != SEL_UDATA)
			tk.bad_ss++;
		if (f->user_esp != user_esp_seen)
			tk.bad_esp++;
		if ((f->eflags & (FL_IF | FL_IOPL_MASK | FL_TF | FL_NT | FL_VM)) != FL_IF)
			tk.bad_eflags++;
		if ((f->ds & 0xffff) != SEL_UDATA || (f->es & 0xffff) != SEL_UDATA)
			tk.bad_seg++;
		if (f->eip < tk.eip_lo || f->eip >= tk.eip_hi)
			tk.bad_eip++;
		if (f->ebx != tk.ebx || f->esi != tk.esi || f->edi != tk.edi || f->ebp != tk.ebp)
			tk.bad_regs++;
		if ((u32)f + sizeof(*f) != tk.esp0)
			tk.bad_stack++;
	} else {
		tk.cpl0++;
	}
	if (tk.ticks == USER_TICKS) {
		user_flag = 1;
		irq_mask(0);
	}
	pic_eoi(PIC1);
}

static void h_syscall(struct trap_frame *f)
{
	syscalls++;
	if (f->eax == 7) {
		f->eax = tk.ticks;
	} else if (f->eax == 8) {
		pit_program(0, 2, 1193);
		irq_unmask(0);
		f->eax = 0;
	} else {
		f->eax = 0xffffffda;
	}
}

static void report_ticks(const char *what)
{
	char name[96];
	static const struct {
		const char *suffix;
		u32 off;
	} items[] = {
		{": ticks at cpl 0", __builtin_offsetof(__typeof__(tk), cpl0)},
		{": frames with cs other than 0x1b", __builtin_offsetof(__typeof__(tk), bad_cs)},
		{": frames with ss other than 0x23", __builtin_offsetof(__typeof__(tk), bad_ss)},
		{": frames with esp other than the user's", __builtin_offsetof(__typeof__(tk), bad_esp)},
		{": frames with eflags other than if", __builtin_offsetof(__typeof__(tk), bad_eflags)},
		{": frames with ds/es other than 0x23", __builtin_offsetof(__typeof__(tk), bad_seg)},
		{": frames with eip outside the user loop", __builtin_offsetof(__typeof__(tk), bad_eip)},
		{": frames with changed user registers", __builtin_offsetof(__typeof__(tk), bad_regs)},
		{": frames not ending at tss.esp0", __builtin_offsetof(__typeof__(tk), bad_stack)},
	};
	u32 n = strlen(what);

	memcpy(name, what, n);
	memcpy(name + n, ": ticks at cpl 3", 17);
	check_eq(name, tk.cpl3, USER_TICKS);
	for (u32 i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
		u32 m = strlen(items[i].suffix);
		memcpy(name + n, items[i].suffix, m + 1);
		check_eq(name, *(volatile u32 *)((u8 *)&tk + items[i].off), 0);
	}
}

static void run_ticks(u32 (*fn)(void), const char *what)
{
	u32 r;

	set_trap_handler(0x80, h_syscall);
	r = run_user(fn, FL_FIXED | FL_IF);
	set_trap_handler(0x80, 0);
	report("user loop: channel 0 stopped", pit0_quiesce());
	char name[96];
	u32 n = strlen(what);
	memcpy(name, what, n);
	memcpy(name + n, ": user result (registers intact)", 33);
	check_eq(name, r, 0x600d);
	memcpy(name + n, ": ticks", 8);
	check_eq(name, tk.ticks, USER_TICKS);
	report_ticks(what);
}

static void test_spin(void)
{
	irq_fns[0] = h0_user;
	tick_reset((u32)user_spin_loop, (u32)user_spin_end, 0x11111111, 0x22222222, 0x33333333,
		   0x44444444);
	run_ticks((u32(*)(void))user_spin, "spin");
	check_eq("spin: user flag set by the handler", user_flag, 1);
}

static void test_poll(void)
{
	irq_fns[0] = h0_user;
	tick_reset((u32)user_poll_loop, (u32)user_poll_end, 0x55555555, 0x66666666, 0x77777777,
		   0x88888888);
	run_ticks((u32(*)(void))user_poll, "int 0x80 poll");
	report("int 0x80 poll: system calls made", syscalls >= 2);
}

static void test_moved_esp0(void)
{
	static u8 other_stack[4096] ALIGNED(16);

	tss.esp0 = (u32)(other_stack + sizeof(other_stack));
	irq_fns[0] = h0_user;
	tick_reset((u32)user_spin_loop, (u32)user_spin_end, 0x11111111, 0x22222222, 0x33333333,
		   0x44444444);
	run_ticks((u32(*)(void))user_spin, "moved esp0");
	tss.esp0 = (u32)trap_stack_top;
}

/* IRQ 0 pending when IRET enters CPL 3 with IF = 1: taken before the first
 * user instruction. */
static void h0_first(int irq, struct trap_frame *f)
{
	(void)irq;
	tk.ticks++;
	tk.first_eip = f->eip;
	tk.first_cs = f->cs & 0xffff;
	tk.first_eflags = f->eflags;
	if ((u32)f + sizeof(*f) != tss.esp0)
		tk.bad_stack++;
	if ((f->user_ss & 0xffff) != SEL_UDATA)
		tk.bad_ss++;
	pic_eoi(PIC1);
}

static void test_pending_at_entry(void)
{
	u32 r;

	irq_fns[0] = h0_first;
	memset((void *)&tk, 0, sizeof(tk));
	irq_unmask(0);
	pit_program(0, 0, 100);
	if (!wait_irr(PIC1, 0x01))
		fail_exit("irq 0 not pending");
	r = run_user((u32(*)(void))user_first, FL_FIXED | FL_IF);
	irq_mask(0);
	check_eq("pending at cpl 3 entry: user result", r, 0x1234);
	check_eq("pending at cpl 3 entry: interrupts", tk.ticks, 1);
	check_eq("pending at cpl 3 entry: pushed eip - the first user instruction",
		 tk.first_eip - (u32)user_first, 0);
	check_eq("pending at cpl 3 entry: pushed cs", tk.first_cs, SEL_UCODE);
	check_eq("pending at cpl 3 entry: frames with ss other than 0x23", tk.bad_ss, 0);
	check_eq("pending at cpl 3 entry: pushed eflags", tk.first_eflags, FL_FIXED | FL_IF);
	check_eq("pending at cpl 3 entry: frames not ending at tss.esp0", tk.bad_stack, 0);
}

void kmain(void)
{
	pc_setup();
	test_spin();
	test_poll();
	test_moved_esp0();
	test_pending_at_entry();
	check_quiet_end();
	finish();
}
