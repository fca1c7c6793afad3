/*
 * The guest test library: a Multiboot v1 kernel skeleton for btvmm's
 * conformance tests (32-bit protected mode, paging off, interrupts off).
 *
 * A test kernel defines kmain(), calls report() for each check and ends with
 * finish(), which prints "<passed>/<total> passed" and leaves through the ISA
 * debug-exit port (0xf4): exit status 1 under QEMU when every check passed,
 * 3 otherwise. Every line a kernel prints must be a deterministic fact: the
 * output is compared byte for byte between QEMU (TCG) and btvmm.
 *
 * What the library sets up before kmain() (lib.c, entry.S):
 *   - GDT (GDT_ENTRIES entries), see the SEL_* and GDT_* names below;
 *   - TSS at SEL_TSS, loaded with LTR, SS0:ESP0 = a ring-0 trap stack,
 *     I/O bitmap base beyond the limit (no I/O at CPL 3 with IOPL 0);
 *   - LDTR = 0;
 *   - IDT with all 256 vectors: present interrupt gates (DPL 0) for 0-31,
 *     0x40-0x4f and 0x80-0x81, where 0x80 and 0x81 have DPL 3; the others
 *     zero (no gate type: INT n gives #GP(n * 8 + 2)). Tests change gates
 *     with idt_set_gate() and idt_set_default();
 *   - CR0 = PE | MP | ET | NE, CR4 = 0, EFLAGS = 0x2 (IF = 0, IOPL = 0);
 *   - COM1 initialized; both 8259 PICs masked (SeaBIOS leaves the PIT
 *     running with IRQ 0 unmasked on vector 8, which would otherwise arrive
 *     in the few tests that set IF).
 */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed int s32;
typedef unsigned int size_t;

#define NORETURN __attribute__((noreturn))
#define ALIGNED(n) __attribute__((aligned(n)))

/* GDT layout. */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UCODE 0x1b
#define SEL_UDATA 0x23
#define SEL_TSS 0x28
/* Index 6 (selector 0x30, 0x33 with RPL 3) is never defined: it stays a
 * zero descriptor inside the limit. The security tests use 0x33, the host
 * Linux 64-bit user code selector. */
#define GDT_UNDEFINED 6
/* Indices GDT_SPARE_FIRST .. GDT_ENTRIES - 1 are free for tests
 * (gdt_set()); the library resets them to zero with gdt_clear_spares(). */
#define GDT_SPARE_FIRST 7
#define GDT_ENTRIES 16
#define GDT_LIMIT (GDT_ENTRIES * 8 - 1)
#define SEL(index, rpl) (((index) << 3) | (rpl))

/* Descriptor access bytes (present, DPL, S, type). */
#define ACC_P 0x80
#define ACC_DPL(n) ((n) << 5)
#define ACC_S 0x10
#define ACC_CODE_RX 0x1a /* S | code, readable */
#define ACC_CODE_XO 0x18 /* S | code, execute-only */
#define ACC_CODE_CONF 0x1e /* S | code, conforming, readable */
#define ACC_DATA_RW 0x12 /* S | data, writable */
#define ACC_DATA_RO 0x10 /* S | data, read-only */
#define ACC_DATA_RW_DOWN 0x16 /* S | data, writable, expand-down */
#define ACC_ACCESSED 0x01
#define ACC_TSS32 0x09 /* available 32-bit TSS */
#define ACC_TSS32_BUSY 0x0b
#define ACC_LDT 0x02
/* Descriptor flags nibble (bits 52-55). */
#define FLG_G 0x8
#define FLG_DB 0x4

/* IDT gate types. */
#define GATE_INT32 0x8e /* present, DPL 0, 32-bit interrupt gate */
#define GATE_TRAP32 0x8f
#define GATE_DPL(n) ((n) << 5)

/* EFLAGS bits. */
#define FL_CF 0x0001
#define FL_FIXED 0x0002
#define FL_PF 0x0004
#define FL_ZF 0x0040
#define FL_SF 0x0080
#define FL_TF 0x0100
#define FL_IF 0x0200
#define FL_DF 0x0400
#define FL_OF 0x0800
#define FL_ARITH 0x08d5 /* CF PF AF ZF SF OF */
#define FL_IOPL_MASK 0x3000
#define FL_IOPL(n) ((n) << 12)
#define FL_NT 0x4000
#define FL_RF 0x10000
#define FL_VM 0x20000
#define FL_AC 0x40000
#define FL_ID 0x200000

/* CR0 / CR4 bits. */
#define CR0_PE 0x00000001
#define CR0_MP 0x00000002
#define CR0_EM 0x00000004
#define CR0_TS 0x00000008
#define CR0_ET 0x00000010
#define CR0_NE 0x00000020
#define CR0_WP 0x00010000
#define CR0_AM 0x00040000
#define CR0_NW 0x20000000
#define CR0_CD 0x40000000
#define CR0_PG 0x80000000
#define CR0_LIB (CR0_PE | CR0_MP | CR0_ET | CR0_NE)

/* The 32-bit TSS. */
struct tss {
	u32 link, esp0, ss0, esp1, ss1, esp2, ss2;
	u32 cr3, eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi;
	u32 es, cs, ss, ds, fs, gs, ldt;
	u16 trap, iomap_base;
} __attribute__((packed));

/* Pseudo-descriptor for LGDT/LIDT/SGDT/SIDT. */
struct dtr {
	u16 limit;
	u32 base;
} __attribute__((packed));

/*
 * What every trap stub saves, lowest address first. user_esp and user_ss
 * exist only when the trap came from CPL 3 ((cs & 3) != 0). A handler may
 * change any field, eip and cs included, to choose where the trap resumes.
 * The return path reloads DS, ES, FS and GS from the frame: a test must not
 * let a trap happen while a segment register holds a selector whose
 * descriptor it has since made invalid.
 */
struct trap_frame {
	u32 gs, fs, es, ds;
	u32 edi, esi, ebp, esp_pusha, ebx, edx, ecx, eax;
	u32 vector, error;
	u32 eip, cs, eflags;
	u32 user_esp, user_ss;
};

typedef void (*trap_handler)(struct trap_frame *frame);

/* What the last fault caught by a TRY() site was. */
struct fault_info {
	u32 count; /* faults caught since fault_reset() */
	u32 vector;
	u32 error;
	u32 eip; /* as pushed by the CPU */
	u32 cs;
	u32 eflags;
};

extern volatile struct fault_info last_fault;
extern u64 gdt[GDT_ENTRIES];
extern u64 idt[256];
extern struct tss tss;
extern u8 trap_stack_top[];
extern u8 user_stack_top[];
extern char __kernel_start[], __kernel_end[];

/* The test's entry point. */
void kmain(void);

/* Output (COM1). */
void putc(char c);
void puts(const char *s); /* no newline added */
void put_hex(u32 v, int digits); /* digits 0: as many as needed */
void put_dec(u32 v);
void put_sdec(s32 v);
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Results. */
void report(const char *name, int ok);
/* "# name = 0x<got>" (and the expected value when it differs), then report. */
void check_eq(const char *name, u32 got, u32 want);
/* "# name: #GP(0x80)" from last_fault, then report: exactly one fault, with
 * this vector and error code (0 for vectors without one). */
void check_fault(const char *name, u32 vector, u32 error);
/* "# name: no fault", then report. */
void check_no_fault(const char *name);
/* Prints "#GP(0x80)"-style text for the fault in last_fault. */
void print_fault(void);
/* The Multiboot information structure the loader passed (flags first). */
extern const u32 *mb_info;
/* The value of "key=N" on the Multiboot command line, or fallback when it
 * is missing or 0. */
u32 cmdline_option(const char *key, u32 fallback);
void NORETURN finish(void);
void NORETURN fail_exit(const char *why);
void NORETURN debug_exit(u32 value);

/* Traps. */
void set_trap_handler(int vector, trap_handler handler);
void idt_set_gate(int vector, u32 offset, u16 selector, u8 type);
void idt_set_default(int vector, u8 type); /* gate to the library stub */
void fault_reset(void);
void print_frame(const struct trap_frame *f);

/* Descriptors. */
u64 make_desc(u32 base, u32 limit, u8 access, u8 flags);
void gdt_set(int index, u32 base, u32 limit, u8 access, u8 flags);
void gdt_clear_spares(void);
u32 desc_base(u64 d);
u32 desc_limit(u64 d); /* raw 20-bit limit */
u8 desc_access(u64 d);

/*
 * Runs fn at CPL 3 (CS 0x1b, SS/DS/ES/FS/GS 0x23, the library's user stack)
 * with the given EFLAGS. Returns fn's return value, or the value given to
 * user_return() by a trap handler, or the EAX of an `int $0x81`. The
 * caller's EFLAGS are restored on return.
 */
u32 run_user(u32 (*fn)(void), u32 eflags);
/* Abandons the CPL 3 run from inside a trap handler. */
void NORETURN user_return(u32 value);

/* Memory helpers (gcc may emit calls to these). */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
int strcmp(const char *a, const char *b);
size_t strlen(const char *s);

/*
 * TRY(insn): run one instruction that may fault. If it faults (any vector
 * without a registered handler), the fault is recorded in last_fault and
 * execution resumes after the instruction. The faulting EIP must be the
 * start of the instruction (a fault), which the table lookup checks.
 * TRY_TRAP(insn): the same for traps, whose pushed EIP is the next
 * instruction (INT n, INT3, INTO).
 * Use only in code running in a segment with base 0 (EIP = linear).
 */
#define EX_ENTRY(from, to) \
	".pushsection .ex_table, \"a\"\n\t.long " #from ", " #to "\n\t.popsection\n\t"
#define TRY(insn) "1:\n\t" insn "\n2:\n\t" EX_ENTRY(1b, 2b)
#define TRY_TRAP(insn) "1:\n\t" insn "\n2:\n\t" EX_ENTRY(2b, 2b)

/* Port I/O and privileged-register accessors. */
static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { asm volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

#define DEFINE_CR(n) \
	static inline u32 read_cr##n(void) \
	{ \
		u32 v; \
		asm volatile("mov %%cr" #n ", %0" : "=r"(v)); \
		return v; \
	} \
	static inline void write_cr##n(u32 v) { asm volatile("mov %0, %%cr" #n : : "r"(v) : "memory"); }
DEFINE_CR(0)
DEFINE_CR(2)
DEFINE_CR(3)
DEFINE_CR(4)
#undef DEFINE_CR

#define DEFINE_DR(n) \
	static inline u32 read_dr##n(void) \
	{ \
		u32 v; \
		asm volatile("mov %%db" #n ", %0" : "=r"(v)); \
		return v; \
	} \
	static inline void write_dr##n(u32 v) { asm volatile("mov %0, %%db" #n : : "r"(v)); }
DEFINE_DR(0)
DEFINE_DR(1)
DEFINE_DR(2)
DEFINE_DR(3)
DEFINE_DR(6)
DEFINE_DR(7)
#undef DEFINE_DR

static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
	asm volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

static inline u32 read_eflags(void)
{
	u32 v;
	asm volatile("pushfl; popl %0" : "=r"(v));
	return v;
}
static inline void write_eflags(u32 v) { asm volatile("pushl %0; popfl" : : "r"(v) : "memory", "cc"); }

static inline void lgdt(const struct dtr *d) { asm volatile("lgdt %0" : : "m"(*d)); }
static inline void lidt(const struct dtr *d) { asm volatile("lidt %0" : : "m"(*d)); }
static inline void sgdt(struct dtr *d) { asm volatile("sgdt %0" : "=m"(*d)); }
static inline void sidt(struct dtr *d) { asm volatile("sidt %0" : "=m"(*d)); }
static inline u16 sldt(void)
{
	u16 v;
	asm volatile("sldt %0" : "=rm"(v));
	return v;
}
static inline u16 str(void)
{
	u16 v;
	asm volatile("str %0" : "=rm"(v));
	return v;
}
static inline void lldt(u16 sel) { asm volatile("lldt %0" : : "rm"(sel)); }
static inline void ltr(u16 sel) { asm volatile("ltr %0" : : "rm"(sel)); }

#define READ_SEG(seg) \
	({ \
		u16 v__; \
		asm volatile("mov %%" #seg ", %0" : "=rm"(v__)); \
		v__; \
	})
#define WRITE_SEG(seg, v) asm volatile("mov %0, %%" #seg : : "rm"((u16)(v)) : "memory")

#endif
