/*
 * Three CPL 3 processes, each in its own address space (its own page
 * directory; the kernel's 16 MiB identity mapping shared, supervisor-only),
 * switched by the timer (PIT channel 0, 1 kHz) as a preemptive kernel
 * does: the IRQ 0 handler saves the running process's frame, loads the
 * next one's CR3 and frame, and IRETs into it. (Three, so that a VMM that
 * keeps fewer address spaces at hand must also give one up.)
 *
 * All run the same code page at the same virtual addresses: a loop that
 * counts to ITERATIONS in its data page at 0x0804a000, after first
 * touching DEMAND_PAGES pages at 0x08050000 that nothing maps yet (the
 * kernel's #PF handler maps a zeroed page of that process on demand, so
 * page faults arrive at CPL 3 between switches), writing its own id into
 * each. It exits with `int $0x80`, returning a checksum of what it reads
 * back. The kernel then checks each process's pages through the identity
 * map: its own id everywhere, its own count, so no write went to another
 * address space. How many switches happened depends on timing and is not
 * printed; that there were some is checked.
 *
 * The kernel's pages are supervisor-only: user code that ran into them
 * would fault (no check here relies on it; paging.c checks that).
 */
#include "pc.h"

#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_U 0x004

#define USER_CODE 0x08048000u
#define USER_DATA 0x0804a000u
#define USER_STACK_TOP 0x08050000u
#define DEMAND 0x08050000u
#define DEMAND_PAGES 8
#define ITERATIONS 3000000u
#define PROCS 3

static u32 ident[4][1024] ALIGNED(4096);

struct proc {
	u32 pd[1024] ALIGNED(4096);
	u32 user_pt[1024] ALIGNED(4096);
	u8 data[4096] ALIGNED(4096);
	u8 stack[4096] ALIGNED(4096);
	u8 demand[DEMAND_PAGES][4096] ALIGNED(4096);
	struct trap_frame frame;
	u32 done, result, demand_faults, runs;
};

static struct proc procs[PROCS] ALIGNED(4096);
static u8 code[4096] ALIGNED(4096);
static volatile u32 current, switches, ticks, other_faults;

extern char user_prog[], user_prog_end[];

/*
 * The process: ESI = its data page. Word 0 holds its id (the kernel put it
 * there), word 1 its counter. EAX = 1 (exit) with EBX = the sum of the ids
 * it reads back from its demand pages plus its counter.
 */
asm(".text\n"
    ".globl user_prog, user_prog_end\n"
    "user_prog:\n\t"
    "movl $0x0804a000, %esi\n\t"
    "movl (%esi), %edx\n\t"
    "movl $0x08050000, %edi\n\t"
    "movl $8, %ecx\n"
    "1:\n\t"
    "movl %edx, (%edi)\n\t"
    "addl $0x1000, %edi\n\t"
    "loop 1b\n"
    "2:\n\t"
    "incl 4(%esi)\n\t"
    "cmpl $3000000, 4(%esi)\n\t"
    "jne 2b\n\t"
    "movl 4(%esi), %ebx\n\t"
    "movl $0x08050000, %edi\n\t"
    "movl $8, %ecx\n"
    "3:\n\t"
    "addl (%edi), %ebx\n\t"
    "addl $0x1000, %edi\n\t"
    "loop 3b\n\t"
    "movl $1, %eax\n\t"
    "int $0x80\n"
    "4:\n\t"
    "jmp 4b\n"
    "user_prog_end:\n");

static void load(struct trap_frame *f, u32 index)
{
	current = index;
	procs[index].runs++;
	write_cr3((u32)procs[index].pd);
	*f = procs[index].frame;
}

static int all_done(void)
{
	for (u32 i = 0; i < PROCS; i++)
		if (!procs[i].done)
			return 0;
	return 1;
}

static void report_and_finish(void)
{
	pit_program(0, 0, 0xffff); /* one last edge, never taken: IF stays 0 */
	irq_mask(0);
	write_cr3((u32)procs[0].pd);
	for (u32 i = 0; i < PROCS; i++) {
		struct proc *p = &procs[i];
		u32 id = 0x100 + i, ids_ok = 1;
		for (int k = 0; k < DEMAND_PAGES; k++)
			ids_ok &= ((volatile u32 *)p->demand[k])[0] == id;
		printf("# process %u\n", i);
		check_eq("  exited with its checksum", p->result, ITERATIONS + DEMAND_PAGES * id);
		check_eq("  its counter", ((volatile u32 *)p->data)[1], ITERATIONS);
		check_eq("  its id intact", ((volatile u32 *)p->data)[0], id);
		report("  its id in every demand page", ids_ok);
		check_eq("  demand faults", p->demand_faults, DEMAND_PAGES);
		report("  ran more than once (was preempted)", p->runs > 1);
	}
	report("timer switches happened", switches >= 2);
	check_eq("no other page faults", other_faults, 0);
	finish();
}

static void h_syscall(struct trap_frame *f)
{
	struct proc *p = &procs[current];

	if (f->eax != 1 || (f->cs & 3) != 3)
		fail_exit("unexpected system call");
	p->done = 1;
	p->result = f->ebx;
	if (all_done())
		report_and_finish();
	for (u32 i = 0; i < PROCS; i++)
		if (!procs[i].done) {
			load(f, i);
			return;
		}
}

static void h_tick(int irq, struct trap_frame *f)
{
	(void)irq;
	pic_eoi(PIC1);
	ticks++;
	if ((f->cs & 3) != 3)
		return;
	u32 next = (current + 1) % PROCS;
	if (procs[next].done)
		return;
	procs[current].frame = *f;
	switches++;
	load(f, next);
}

static void h_pf(struct trap_frame *f)
{
	struct proc *p = &procs[current];
	u32 cr2 = read_cr2();
	u32 index = (cr2 - DEMAND) >> 12;

	if ((f->cs & 3) != 3 || cr2 < DEMAND || index >= DEMAND_PAGES || f->error != 6) {
		other_faults++;
		printf("# unexpected #PF error %x cr2 %x eip %x\n", f->error, cr2, f->eip);
		fail_exit("unexpected page fault");
	}
	memset(p->demand[index], 0, 4096);
	p->user_pt[(DEMAND >> 12) % 1024 + index] = (u32)p->demand[index] | PTE_P | PTE_W | PTE_U;
	/* A not-present entry is never cached: no INVLPG needed. */
	p->demand_faults++;
}

static void setup_process(u32 i)
{
	struct proc *p = &procs[i];

	for (u32 k = 0; k < 4; k++)
		p->pd[k] = (u32)ident[k] | PTE_P | PTE_W | PTE_U;
	p->pd[USER_CODE >> 22] = (u32)p->user_pt | PTE_P | PTE_W | PTE_U;
	p->user_pt[(USER_CODE >> 12) % 1024] = (u32)code | PTE_P | PTE_U;
	p->user_pt[(USER_DATA >> 12) % 1024] = (u32)p->data | PTE_P | PTE_W | PTE_U;
	p->user_pt[((USER_STACK_TOP >> 12) - 1) % 1024] = (u32)p->stack | PTE_P | PTE_W | PTE_U;
	((u32 *)p->data)[0] = 0x100 + i;
	memset(&p->frame, 0, sizeof(p->frame));
	p->frame.gs = p->frame.fs = p->frame.es = p->frame.ds = SEL_UDATA;
	p->frame.eip = USER_CODE;
	p->frame.cs = SEL_UCODE;
	p->frame.eflags = FL_FIXED | FL_IF;
	p->frame.user_esp = USER_STACK_TOP;
	p->frame.user_ss = SEL_UDATA;
}

void kmain(void)
{
	pc_setup();
	irq_install();
	for (u32 i = 0; i < 4096; i++)
		ident[i / 1024][i % 1024] = (i << 12) | PTE_P | PTE_W;
	memcpy(code, user_prog, (u32)(user_prog_end - user_prog));
	for (u32 i = 0; i < PROCS; i++)
		setup_process(i);
	set_trap_handler(14, h_pf);
	set_trap_handler(0x80, h_syscall);
	idt_set_default(0x80, GATE_INT32 | GATE_DPL(3));
	irq_fns[0] = h_tick;
	write_cr3((u32)procs[0].pd);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);
	printf("# %u processes, %u iterations each, timer at 1 kHz\n", PROCS, ITERATIONS);
	irq_unmask(0);
	pit_program(0, 2, 1193);
	procs[0].runs = 1;
	current = 0;
	asm volatile("movw %w0, %%ds\n\t"
		     "movw %w0, %%es\n\t"
		     "movw %w0, %%fs\n\t"
		     "movw %w0, %%gs\n\t"
		     "pushl %0\n\t"
		     "pushl %1\n\t"
		     "pushl %2\n\t"
		     "pushl %3\n\t"
		     "pushl %4\n\t"
		     "iret"
		     :
		     : "r"((u32)SEL_UDATA), "r"(USER_STACK_TOP), "r"((u32)(FL_FIXED | FL_IF)),
		       "r"((u32)SEL_UCODE), "r"(USER_CODE)
		     : "memory");
	fail_exit("returned from the first process");
}
