/*
 * Far control transfers at CPL 0 between code segments with different
 * bases: far JMP and far CALL, direct (ptr16:32) and indirect (m16:32),
 * far RET and far RET imm16, PUSH CS and MOV from CS inside the segment,
 * CS-relative data reads, a conforming segment, and the faults of far
 * transfers to bad selectors and offsets.
 *
 * FAR_CS has base 0x1000 (below the kernel), FAR2_CS base 0x2000; both
 * cover the whole address space, so the kernel's code runs in them at
 * offset = linear - base. Code reached through them (the assembly below)
 * uses only relative branches, far transfers and absolute data addresses
 * (through DS, base 0).
 */
#include "lib.h"

#define FAR_CS SEL(GDT_SPARE_FIRST + 0, 0) /* 0x38, base 0x1000 */
#define FAR2_CS SEL(GDT_SPARE_FIRST + 1, 0) /* 0x40, base 0x2000 */
#define CONF_CS SEL(GDT_SPARE_FIRST + 2, 0) /* 0x48, conforming, DPL 0 */
#define NP_CS SEL(GDT_SPARE_FIRST + 3, 0) /* 0x50, not present */
#define USER_CS SEL(GDT_SPARE_FIRST + 4, 0) /* 0x58, DPL 3 */
#define SMALL_CS SEL(GDT_SPARE_FIRST + 5, 0) /* 0x60, limit 0xfff */
#define CONF3_CS SEL(GDT_SPARE_FIRST + 6, 0) /* 0x68, conforming, DPL 3 */

/* What the code below leaves behind. */
struct far_out {
	u32 cs; /* 0: MOV from CS in the far segment */
	u32 off; /* 4: an EIP seen inside the far segment */
	u32 ret_off; /* 8: return EIP pushed by a far CALL */
	u32 ret_cs; /* 12: return CS slot (32 bits) pushed by a far CALL */
	u32 push_cs; /* 16: PUSH CS inside the far segment */
	u32 cs_data; /* 20: a read through CS */
	u32 ds_data; /* 24: the same variable through DS */
	u32 esp_delta; /* 28: ESP change over the call */
	u32 chain_cs; /* 32: CS in the second far segment */
	u32 chain_ret_off; /* 36 */
	u32 chain_ret_cs; /* 40 */
	u32 flat_ret_off; /* 44: far call from FAR_CS into flat code */
	u32 flat_ret_cs; /* 48 */
	u32 expect; /* 52: an expected offset */
};
struct far_out far_out;
u32 far_data = 0x5eed1e55;

u32 far_jmp_direct(void);
u32 far_jmp_indirect(void);
u32 far_call_direct(void);
u32 far_call_indirect(void);
u32 far_ret_imm(u32 a, u32 b);
u32 far_chain(void);
u32 far_conforming(void);

asm(".pushsection .text\n"
    /* Direct far JMP into FAR_CS and back; returns the expected offset of
     * label 2 inside FAR_CS. */
    "	.globl far_jmp_direct\n"
    "far_jmp_direct:\n"
    "	ljmp $0x38, $(1f - 0x1000)\n"
    "1:	movl %cs, %eax\n"
    "	movl %eax, far_out + 0\n"
    "	call 2f\n"
    "2:	popl %eax\n"
    "	movl %eax, far_out + 4\n"
    "	ljmp $0x08, $3f\n"
    "3:	movl $(2b - 0x1000), %eax\n"
    "	ret\n"

    /* Indirect far JMP (m16:32) into FAR_CS and back. */
    "	.globl far_jmp_indirect\n"
    "far_jmp_indirect:\n"
    "	ljmp *far_ptr_in\n"
    "far_jmp_in:\n"
    "	movl %cs, %eax\n"
    "	movl %eax, far_out + 0\n"
    "	call 2f\n"
    "2:	popl %eax\n"
    "	movl %eax, far_out + 4\n"
    "	ljmp *far_ptr_back\n"
    "far_jmp_back:\n"
    "	movl $(2b - 0x1000), %eax\n"
    "	ret\n"

    /* Direct far CALL to far_callee in FAR_CS; returns the expected
     * return offset (flat). */
    "	.globl far_call_direct\n"
    "far_call_direct:\n"
    "	pushl %ebx\n"
    "	movl %esp, %ebx\n"
    "	movl $0xdeadbeef, -4(%esp)\n"
    "	movl $0xdeadbeef, -8(%esp)\n"
    "	lcall $0x38, $(far_callee - 0x1000)\n"
    "1:	subl %esp, %ebx\n"
    "	movl %ebx, far_out + 28\n"
    "	movl $1b, %eax\n"
    "	popl %ebx\n"
    "	ret\n"

    /* Indirect far CALL (m16:32). */
    "	.globl far_call_indirect\n"
    "far_call_indirect:\n"
    "	pushl %ebx\n"
    "	movl %esp, %ebx\n"
    "	movl $0xdeadbeef, -4(%esp)\n"
    "	movl $0xdeadbeef, -8(%esp)\n"
    "	lcall *far_ptr_callee\n"
    "1:	subl %esp, %ebx\n"
    "	movl %ebx, far_out + 28\n"
    "	movl $1b, %eax\n"
    "	popl %ebx\n"
    "	ret\n"

    /* Runs in FAR_CS: records what the far CALL pushed and what CS looks
     * like from inside, then far returns. */
    "far_callee:\n"
    "	movl %cs, %eax\n"
    "	movl %eax, far_out + 0\n"
    "	movl (%esp), %eax\n"
    "	movl %eax, far_out + 8\n"
    "	movl 4(%esp), %eax\n"
    "	movl %eax, far_out + 12\n"
    "	pushl %cs\n"
    "	popl %eax\n"
    "	movl %eax, far_out + 16\n"
    "	movl %cs:(far_data - 0x1000), %eax\n"
    "	movl %eax, far_out + 20\n"
    "	movl far_data, %eax\n"
    "	movl %eax, far_out + 24\n"
    "	lret\n"

    /* u32 far_ret_imm(a, b): pushes b and a, far calls far_sum, which
     * returns a + b with RET imm16 far (lret $8). */
    "	.globl far_ret_imm\n"
    "far_ret_imm:\n"
    "	pushl %ebx\n"
    "	movl %esp, %ebx\n"
    "	pushl 12(%esp)\n"
    "	pushl 12(%esp)\n"
    "	lcall $0x38, $(far_sum - 0x1000)\n"
    "	subl %esp, %ebx\n"
    "	movl %ebx, far_out + 28\n"
    "	popl %ebx\n"
    "	ret\n"
    "far_sum:\n"
    "	movl 8(%esp), %eax\n"
    "	addl 12(%esp), %eax\n"
    "	lret $8\n"

    /* Flat -> FAR_CS -> far call FAR2_CS -> back -> far call flat code ->
     * back -> flat. Returns the expected return offset inside FAR_CS of
     * the call to FAR2_CS. */
    "	.globl far_chain\n"
    "far_chain:\n"
    "	ljmp $0x38, $(1f - 0x1000)\n"
    "1:	lcall $0x40, $(far2_callee - 0x2000)\n"
    "2:	lcall $0x08, $flat_callee\n"
    "3:	ljmp $0x08, $4f\n"
    "4:	movl $(3b - 0x1000), %eax\n"
    "	movl %eax, far_out + 52\n"
    "	movl $(2b - 0x1000), %eax\n"
    "	ret\n"
    "far2_callee:\n"
    "	movl %cs, %eax\n"
    "	movl %eax, far_out + 32\n"
    "	movl (%esp), %eax\n"
    "	movl %eax, far_out + 36\n"
    "	movl 4(%esp), %eax\n"
    "	movl %eax, far_out + 40\n"
    "	lret\n"
    "flat_callee:\n"
    "	movl (%esp), %eax\n"
    "	movl %eax, far_out + 44\n"
    "	movl 4(%esp), %eax\n"
    "	movl %eax, far_out + 48\n"
    "	lret\n"

    /* A far JMP to a conforming DPL 0 segment with RPL 3 in the selector:
     * CPL stays 0 and CS.RPL becomes 0. Returns CS seen there. */
    "	.globl far_conforming\n"
    "far_conforming:\n"
    "	ljmp $0x4b, $1f\n"
    "1:	movl %cs, %eax\n"
    "	ljmp $0x08, $2f\n"
    "2:	ret\n"
    ".popsection\n"

    ".pushsection .data\n"
    "far_ptr_in:\n"
    "	.long far_jmp_in - 0x1000\n"
    "	.word 0x38\n"
    "far_ptr_back:\n"
    "	.long far_jmp_back\n"
    "	.word 0x08\n"
    "far_ptr_callee:\n"
    "	.long far_callee - 0x1000\n"
    "	.word 0x38\n"
    ".popsection\n");

static void setup(void)
{
	const u8 code = ACC_P | ACC_CODE_RX | ACC_ACCESSED;
	gdt_set(GDT_SPARE_FIRST + 0, 0x1000, 0xfffff, code, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 1, 0x2000, 0xfffff, code, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 2, 0, 0xfffff, ACC_P | ACC_CODE_CONF | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 3, 0, 0xfffff, ACC_CODE_RX | ACC_ACCESSED, FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 4, 0, 0xfffff, code | ACC_DPL(3), FLG_G | FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 5, 0, 0xfff, code, FLG_DB);
	gdt_set(GDT_SPARE_FIRST + 6, 0, 0xfffff, ACC_P | ACC_DPL(3) | ACC_CODE_CONF | ACC_ACCESSED,
		FLG_G | FLG_DB);
}

static void test_jmp(void)
{
	u32 want;

	memset(&far_out, 0xff, sizeof(far_out));
	want = far_jmp_direct();
	check_eq("direct far jmp: cs inside", far_out.cs, FAR_CS);
	check_eq("direct far jmp: eip inside - (linear - 0x1000)", far_out.off - want, 0);
	check_eq("direct far jmp: cs after return", READ_SEG(cs), SEL_KCODE);

	memset(&far_out, 0xff, sizeof(far_out));
	want = far_jmp_indirect();
	check_eq("indirect far jmp: cs inside", far_out.cs, FAR_CS);
	check_eq("indirect far jmp: eip inside - (linear - 0x1000)", far_out.off - want, 0);
	check_eq("indirect far jmp: cs after return", READ_SEG(cs), SEL_KCODE);
}

static void check_call(const char *kind, u32 want_ret)
{
	char name[80];
	size_t n = strlen(kind);
	memcpy(name, kind, n);
#define NAME(s) (memcpy(name + n, s, sizeof(s)), name)
	check_eq(NAME(": cs inside"), far_out.cs, FAR_CS);
	check_eq(NAME(": pushed return eip - after the call"), far_out.ret_off - want_ret, 0);
	check_eq(NAME(": pushed return cs (32-bit slot)"), far_out.ret_cs, SEL_KCODE);
	check_eq(NAME(": push cs inside"), far_out.push_cs, FAR_CS);
	check_eq(NAME(": read through cs"), far_out.cs_data, 0x5eed1e55);
	check_eq(NAME(": read through ds"), far_out.ds_data, 0x5eed1e55);
	check_eq(NAME(": esp balanced"), far_out.esp_delta, 0);
#undef NAME
}

static void test_call(void)
{
	u32 want;

	memset(&far_out, 0xff, sizeof(far_out));
	want = far_call_direct();
	check_call("direct far call", want);
	memset(&far_out, 0xff, sizeof(far_out));
	want = far_call_indirect();
	check_call("indirect far call", want);

	memset(&far_out, 0xff, sizeof(far_out));
	check_eq("far ret imm16: sum", far_ret_imm(0x1234, 0x4321), 0x5555);
	check_eq("far ret imm16: esp balanced", far_out.esp_delta, 0);

	memset(&far_out, 0xff, sizeof(far_out));
	want = far_chain();
	check_eq("chain: cs in the second far segment", far_out.chain_cs, FAR2_CS);
	check_eq("chain: return eip pushed in the first far segment", far_out.chain_ret_off - want, 0);
	check_eq("chain: return cs pushed in the first far segment", far_out.chain_ret_cs, FAR_CS);
	check_eq("chain: far call into flat code, pushed eip", far_out.flat_ret_off - far_out.expect, 0);
	check_eq("chain: far call into flat code, pushed cs", far_out.flat_ret_cs, FAR_CS);
	check_eq("chain: cs after return", READ_SEG(cs), SEL_KCODE);

	check_eq("conforming dpl 0 segment via rpl 3 selector: cs", far_conforming(), CONF_CS);
}

static void test_faults(void)
{
	fault_reset();
	asm volatile(TRY("ljmp $0x50, $0") : :);
	check_fault("far jmp to a not-present code segment", 11, NP_CS);
	fault_reset();
	asm volatile(TRY("lcall $0x50, $0") : :);
	check_fault("far call to a not-present code segment", 11, NP_CS);
	fault_reset();
	asm volatile(TRY("ljmp $0x58, $0") : :);
	check_fault("far jmp to dpl 3 code at cpl 0", 13, USER_CS);
	fault_reset();
	asm volatile(TRY("ljmp $0x68, $0") : :);
	check_fault("far jmp to conforming dpl 3 code at cpl 0", 13, CONF3_CS);
	fault_reset();
	asm volatile(TRY("ljmp $0x60, $0x2000") : :);
	check_fault("far jmp beyond the code segment limit", 13, 0);
	/* Not checked: a far CALL beyond the limit. The architecture says
	 * #GP(0); QEMU 7.2 raises #GP(selector). */
	fault_reset();
	asm volatile(TRY("ljmp $0x10, $0") : :);
	check_fault("far jmp to a data segment", 13, SEL_KDATA);
	fault_reset();
	asm volatile(TRY("lcall $0, $0") : :);
	check_fault("far call to the null selector", 13, 0);
	fault_reset();
	asm volatile(TRY("ljmp $0x80, $0") : :);
	check_fault("far jmp beyond the gdt limit", 13, 0x80);
	fault_reset();
	asm volatile("movl %%esp, %%ecx\n\t"
		     "pushl $0x10\n\t"
		     "pushl $0\n\t" TRY("lret") "movl %%ecx, %%esp"
		     :
		     :
		     : "ecx", "memory");
	check_fault("far ret to a data segment", 13, SEL_KDATA);
	fault_reset();
	asm volatile("movl %%esp, %%ecx\n\t"
		     "pushl $0x50\n\t"
		     "pushl $0\n\t" TRY("lret") "movl %%ecx, %%esp"
		     :
		     :
		     : "ecx", "memory");
	check_fault("far ret to a not-present code segment", 11, NP_CS);
	check_eq("cs after the faults", READ_SEG(cs), SEL_KCODE);
}

void kmain(void)
{
	setup();
	test_jmp();
	test_call();
	test_faults();
	gdt_clear_spares();
	finish();
}
