/*
 * Control flow the breakpoint planner has to follow: deep call chains
 * (recursion depth 200) through a function-pointer table (call *%reg),
 * mutual recursion through pointers (gcc emits sibling calls: jmp *%reg),
 * indirect calls through a table in memory (call *table(,%eax,4)), a
 * switch jump table (jmp *.L(,%eax,4)), computed goto (jmp *%reg and
 * jmp *table(,%edx,4)), RET imm16 from stdcall and fastcall functions and
 * from a hand-written function.
 * Every result is computed twice, the second time without the control
 * flow under test, and compared.
 */
#include "lib.h"

#define NOINLINE __attribute__((noinline, noclone))

/* ---- deep recursion through a pointer table ---------------------------- */

typedef u32 (*step_fn)(u32 depth, u32 acc);
static u32 step_a(u32 d, u32 acc);
static u32 step_b(u32 d, u32 acc);
static u32 step_c(u32 d, u32 acc);
static u32 step_d(u32 d, u32 acc);
static step_fn volatile const table[4] = {step_a, step_b, step_c, step_d};
static u32 max_depth;

#define STEP(name, k) \
	static NOINLINE u32 name(u32 d, u32 acc) \
	{ \
		if (200 - d > max_depth) \
			max_depth = 200 - d; \
		if (d == 0) \
			return acc; \
		u32 r = table[(acc + d) & 3](d - 1, acc * (k) + d); \
		return r ^ (d << (k)); \
	}
STEP(step_a, 3)
STEP(step_b, 5)
STEP(step_c, 7)
STEP(step_d, 11)

/* The same function, as a loop with an explicit stack. */
static u32 step_iterative(u32 depth, u32 acc)
{
	static const u32 k[4] = {3, 5, 7, 11};
	static u32 shift[256];
	u32 f = 0, n = 0; /* f: index of the current function (step_a) */
	for (u32 d = depth; d > 0; d--) {
		shift[n++] = d << k[f];
		u32 next = (acc + d) & 3;
		acc = acc * k[f] + d;
		f = next;
	}
	while (n)
		acc ^= shift[--n];
	return acc;
}

static void test_recursion(void)
{
	max_depth = 0;
	u32 r = step_a(200, 1);
	u32 w = step_iterative(200, 1);
	printf("# recursion through the pointer table: 0x%x, depth %u\n", r, max_depth);
	report("recursion depth 200 through a function-pointer table", r == w);
	check_eq("recursion depth reached", max_depth, 200);
}

/* ---- mutual recursion --------------------------------------------------- */

static NOINLINE int is_odd(u32 n);
static int (*volatile odd_ptr)(u32) = is_odd;
static NOINLINE int is_even(u32 n)
{
	return n == 0 ? 1 : odd_ptr(n - 1) + 0 * (int)n;
}
static int (*volatile even_ptr)(u32) = is_even;
static NOINLINE int is_odd(u32 n)
{
	return n == 0 ? 0 : even_ptr(n - 1) + 0 * (int)n;
}

static NOINLINE u32 ackermann(u32 m, u32 n)
{
	if (m == 0)
		return n + 1;
	if (n == 0)
		return ackermann(m - 1, 1);
	return ackermann(m - 1, ackermann(m, n - 1));
}

static void test_mutual(void)
{
	report("is_even(200) through pointers", is_even(200) == 1);
	report("is_odd(201) through pointers", is_odd(201) == 1);
	report("is_even(199) through pointers", is_even(199) == 0);
	check_eq("ackermann(2, 50)", ackermann(2, 50), 103);
}

/* ---- indirect calls and sibling calls ------------------------------------ */

static NOINLINE u32 op_add(u32 a, u32 b) { return a + b; }
static NOINLINE u32 op_sub(u32 a, u32 b) { return a - b; }
static NOINLINE u32 op_xor(u32 a, u32 b) { return a ^ b; }
static NOINLINE u32 op_mul(u32 a, u32 b) { return a * b; }
static u32 (*const ops[4])(u32, u32) = {op_add, op_sub, op_xor, op_mul};

/* gcc emits call *ops(,%eax,4) here. */
static NOINLINE u32 dispatch(u32 i, u32 a, u32 b)
{
	return ops[i & 3](a, b);
}

static void test_indirect(void)
{
	u32 acc = 1, want = 1;
	for (u32 i = 0; i < 64; i++) {
		acc = ops[i & 3](acc, i + 3) + 1; /* call *ops(,%reg,4) */
		u32 x = i + 3;
		switch (i & 3) {
		case 0: want = want + x; break;
		case 1: want = want - x; break;
		case 2: want = want ^ x; break;
		default: want = want * x; break;
		}
		want += 1;
	}
	printf("# indirect calls through a table: 0x%x\n", acc);
	report("indirect calls through a table", acc == want);

	acc = 7;
	for (u32 i = 0; i < 40; i++)
		acc = dispatch(i * 7, acc, i);
	u32 w = 7;
	for (u32 i = 0; i < 40; i++) {
		switch ((i * 7) & 3) {
		case 0: w = w + i; break;
		case 1: w = w - i; break;
		case 2: w = w ^ i; break;
		default: w = w * i; break;
		}
	}
	printf("# calls through a table in memory: 0x%x\n", acc);
	report("calls through a table in memory", acc == w);

	u32 (*volatile fp)(u32, u32) = op_mul;
	check_eq("call through a register", fp(6, 7), 42); /* call *%reg */
}

/* ---- switch jump table ----------------------------------------------------- */

static NOINLINE u32 jump_table(u32 sel, u32 x)
{
	switch (sel) {
	case 0: return x + 11;
	case 1: return x * 3;
	case 2: return x ^ 0x5a5a;
	case 3: return x << 4;
	case 4: return x >> 1;
	case 5: return ~x;
	case 6: return x - 1000;
	case 7: return x * x;
	case 8: return x | 0x8000;
	case 9: return x & 0xff;
	case 10: return x + x + x + x + 1;
	case 11: return 0 - x;
	default: return 0xdeadbeef;
	}
}

static void test_switch(void)
{
	static const u32 want[13] = {
		1234 + 11, 1234 * 3,	1234 ^ 0x5a5a, 1234 << 4,   1234 >> 1,
		~1234u,	   1234 - 1000, 1234 * 1234,   1234 | 0x8000, 1234 & 0xff,
		4 * 1234 + 1, -1234u, 0xdeadbeef,
	};
	u32 ok = 0, sum = 0;
	for (u32 i = 0; i < 13; i++) {
		u32 r = jump_table(i, 1234);
		sum += r;
		ok += r == want[i];
	}
	printf("# switch jump table: sum 0x%x\n", sum);
	check_eq("switch jump table, 13 selectors", ok, 13);
	check_eq("switch jump table, selector 0xffffffff", jump_table(0xffffffff, 1), 0xdeadbeef);
}

/* ---- computed goto ----------------------------------------------------------- */

static NOINLINE u32 threaded(const u8 *prog)
{
	static void *const op[] = {&&halt, &&inc, &&dbl, &&neg, &&jnz2};
	u32 acc = 0, pc = 0;
	goto *op[prog[pc++]];
inc:
	acc++;
	goto *op[prog[pc++]];
dbl:
	acc *= 2;
	goto *op[prog[pc++]];
neg:
	acc = -acc;
	goto *op[prog[pc++]];
jnz2:
	/* Jump back two instructions while acc < 1000. */
	if (acc < 1000)
		pc -= 2;
	goto *op[prog[pc++]];
halt:
	return acc;
}

static void test_computed_goto(void)
{
	static const u8 prog[] = {1, 1, 2, 4, 3, 0}; /* inc inc (dbl jnz2)* neg halt */
	check_eq("computed goto interpreter", threaded(prog), -1024u);
}

/* ---- RET imm16 ------------------------------------------------------------------- */

static NOINLINE __attribute__((stdcall)) u32 std3(u32 a, u32 b, u32 c)
{
	return a * 100 + b * 10 + c;
}
static NOINLINE __attribute__((stdcall)) u32 std6(u32 a, u32 b, u32 c, u32 d, u32 e, u32 f)
{
	return a + b + c + d + e + f;
}
static NOINLINE __attribute__((fastcall)) u32 fast4(u32 a, u32 b, u32 c, u32 d)
{
	return (a - b) * (c + d);
}
static u32(__attribute__((stdcall)) *volatile std3_ptr)(u32, u32, u32) = std3;

/* Near RET imm16 written by hand: ret_pop8 returns its two stack
 * arguments' difference and pops them. */
u32 ret_pop8(u32 a, u32 b);
asm(".pushsection .text\n"
    "ret_pop8:\n"
    "	movl 4(%esp), %eax\n"
    "	subl 8(%esp), %eax\n"
    "	ret $8\n"
    ".popsection\n");

static void test_ret_imm(void)
{
	u32 esp0, esp1, r;

	asm volatile("movl %%esp, %0" : "=r"(esp0));
	check_eq("stdcall, 3 arguments (ret $12)", std3(1, 2, 3), 123);
	check_eq("stdcall through a pointer", std3_ptr(4, 5, 6), 456);
	check_eq("stdcall, 6 arguments (ret $24)", std6(1, 2, 3, 4, 5, 6), 21);
	check_eq("fastcall, 4 arguments (ret $8)", fast4(10, 4, 2, 3), 30);
	asm volatile("movl %%esp, %0" : "=r"(esp1));
	check_eq("esp after the stdcall and fastcall calls", esp1 - esp0, 0);

	asm volatile("movl %%esp, %%ebx\n\t"
		     "pushl $7\n\t"
		     "pushl $50\n\t"
		     "call ret_pop8\n\t"
		     "subl %%esp, %%ebx"
		     : "=a"(r), "=b"(esp0)
		     :
		     : "ecx", "edx", "memory", "cc");
	check_eq("ret $8 result", r, 43);
	check_eq("ret $8 popped both arguments", esp0, 0);
}

void kmain(void)
{
	test_recursion();
	test_mutual();
	test_indirect();
	test_switch();
	test_computed_goto();
	test_ret_imm();
	finish();
}
