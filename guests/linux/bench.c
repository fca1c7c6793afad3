/*
 * The benchmarks of `btvmm bench` (issue: experiments), one static i386
 * program run the same way natively on the host and inside the guest under
 * btvmm and QEMU:
 *
 *   bench NAME [COUNT]
 *
 * Each prints one machine-readable line and exits 0:
 *
 *   bench name=NAME count=COUNT unit=UNIT ns=TOTAL per_unit_ns=X
 *
 * TOTAL is CLOCK_MONOTONIC nanoseconds around the measured loop (the set-up
 * is outside it), UNIT what one of the COUNT repetitions is. A failure
 * prints "bench name=NAME error=WHAT" to standard output and exits 1.
 *
 * With BTVMM_MARKS=1 in the environment (the guest's /init sets it; never
 * natively: it writes an I/O port) the program also writes M to btvmm's
 * counter-mark port 0x508 just before the loop's clock starts and M + 1
 * just after it stops, and adds "mark=M" to its line: `btvmm run --stats`
 * then reports the monitor's counters at both points, which `btvmm bench`
 * turns into the counters of the loop alone. Other machines drop the
 * writes (nothing is at that port).
 *
 * NAME:
 *   getuid        getuid() through glibc (a real system call each time)
 *   getuid-int80  getuid32 through int $0x80, no libc in the loop
 *   fork-exec     fork + exec of this program's "null" + wait
 *   null          exits at once (what fork-exec runs)
 *   pipe-switch   two processes pass one byte back and forth over two pipes
 *                 (per round trip: two process switches)
 *   thread-switch two threads pass a token over a futex (per round trip)
 *   sigsegv       a read of a PROT_NONE page, SIGSEGV handled (siglongjmp)
 *   mmap          mmap 1 MiB anonymous, touch every page, munmap
 *   nqueens       count the solutions of 10-queens (per solve)
 *   gzip          busybox gzip -c of 1 MiB of pseudo-random data to
 *                 /dev/null (per compression; BUSYBOX in the environment
 *                 names busybox, default /bin/busybox)
 *   compile       tokenize, parse and fold the expressions of a generated
 *                 200 KiB source and emit stack code (per pass)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *bench_name;
static const char *self_path;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail(const char *what)
{
	printf("bench name=%s error=%s:%s\n", bench_name, what, strerror(errno));
	fflush(stdout);
	exit(1);
}

/* btvmm's counter-mark port (devices::counter_mark). */
#define COUNTER_MARK_PORT 0x508

/* The start mark of this benchmark, 0 when marks are off. */
static unsigned mark;

static void write_mark(unsigned value)
{
	if (mark)
		outl(value, COUNTER_MARK_PORT);
}

/* The loop's start: the mark, then the clock. */
static uint64_t begin(void)
{
	write_mark(mark);
	return now_ns();
}

/* The loop's end: the clock, then the mark. Nanoseconds since start. */
static uint64_t finish(uint64_t start)
{
	uint64_t ns = now_ns() - start;
	write_mark(mark + 1);
	return ns;
}

static void report(unsigned long count, const char *unit, uint64_t ns)
{
	printf("bench name=%s count=%lu unit=%s ns=%llu per_unit_ns=%.1f", bench_name, count,
	       unit, (unsigned long long)ns, count ? (double)ns / (double)count : 0.0);
	if (mark)
		printf(" mark=%u", mark);
	printf("\n");
	fflush(stdout);
}

/* Keeps the compiler from dropping a computed value. */
static volatile uint32_t sink;

static void bench_getuid(unsigned long n)
{
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++)
		sink += (uint32_t)syscall(SYS_getuid32);
	report(n, "call", finish(start));
}

static void bench_getuid_int80(unsigned long n)
{
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		uint32_t result;
		asm volatile("int $0x80" : "=a"(result) : "a"(SYS_getuid32) : "memory");
		sink += result;
	}
	report(n, "call", finish(start));
}

static void bench_fork_exec(unsigned long n)
{
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			fail("fork");
		if (pid == 0) {
			execl(self_path, self_path, "null", (char *)NULL);
			_exit(127);
		}
		int status;
		if (waitpid(pid, &status, 0) != pid)
			fail("waitpid");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			errno = ECHILD;
			fail("child");
		}
	}
	report(n, "process", finish(start));
}

static void bench_pipe_switch(unsigned long n)
{
	int there[2], back[2];
	if (pipe(there) || pipe(back))
		fail("pipe");
	pid_t pid = fork();
	if (pid < 0)
		fail("fork");
	char byte = 0;
	if (pid == 0) {
		for (unsigned long i = 0; i < n; i++) {
			if (read(there[0], &byte, 1) != 1 || write(back[1], &byte, 1) != 1)
				_exit(1);
		}
		_exit(0);
	}
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		if (write(there[1], &byte, 1) != 1 || read(back[0], &byte, 1) != 1)
			fail("pipe round trip");
	}
	uint64_t ns = finish(start);
	int status;
	waitpid(pid, &status, 0);
	report(n, "round-trip", ns);
}

static uint32_t token;
static unsigned long rounds;

static void futex_wait(uint32_t *word, uint32_t value)
{
	syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

static void futex_wake(uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The token is even when the main thread holds it, odd for the partner. */
static void *partner(void *unused)
{
	(void)unused;
	for (unsigned long i = 0; i < rounds; i++) {
		uint32_t seen;
		while (((seen = __atomic_load_n(&token, __ATOMIC_SEQ_CST)) & 1) == 0)
			futex_wait(&token, seen);
		__atomic_store_n(&token, seen + 1, __ATOMIC_SEQ_CST);
		futex_wake(&token);
	}
	return NULL;
}

static void bench_thread_switch(unsigned long n)
{
	pthread_t thread;
	rounds = n;
	if (pthread_create(&thread, NULL, partner, NULL))
		fail("pthread_create");
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		uint32_t mine = __atomic_load_n(&token, __ATOMIC_SEQ_CST);
		__atomic_store_n(&token, mine + 1, __ATOMIC_SEQ_CST);
		futex_wake(&token);
		uint32_t seen;
		while (((seen = __atomic_load_n(&token, __ATOMIC_SEQ_CST)) & 1) == 1)
			futex_wait(&token, seen);
	}
	uint64_t ns = finish(start);
	pthread_join(thread, NULL);
	report(n, "round-trip", ns);
}

static sigjmp_buf after_fault;

static void on_segv(int signal)
{
	(void)signal;
	siglongjmp(after_fault, 1);
}

static void bench_sigsegv(unsigned long n)
{
	volatile uint8_t *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		fail("mmap");
	struct sigaction action = { .sa_handler = on_segv };
	sigemptyset(&action.sa_mask);
	if (sigaction(SIGSEGV, &action, NULL))
		fail("sigaction");
	unsigned long faults = 0;
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		if (sigsetjmp(after_fault, 1) == 0)
			sink += page[0];
		else
			faults++;
	}
	uint64_t ns = finish(start);
	if (faults != n) {
		errno = EFAULT;
		fail("not every read faulted");
	}
	report(n, "fault", ns);
}

static void bench_mmap(unsigned long n)
{
	const size_t size = 1 << 20;
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		uint8_t *area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				     -1, 0);
		if (area == MAP_FAILED)
			fail("mmap");
		for (size_t offset = 0; offset < size; offset += 4096)
			area[offset] = (uint8_t)offset;
		if (munmap(area, size))
			fail("munmap");
	}
	report(n, "MiB", finish(start));
}

static unsigned queens(unsigned size, unsigned row, uint32_t columns, uint32_t left,
		       uint32_t right)
{
	if (row == size)
		return 1;
	unsigned found = 0;
	uint32_t free = ~(columns | left | right) & ((1u << size) - 1);
	while (free) {
		uint32_t bit = free & -free;
		free -= bit;
		found += queens(size, row + 1, columns | bit, (left | bit) << 1, (right | bit) >> 1);
	}
	return found;
}

static void bench_nqueens(unsigned long n)
{
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		unsigned solutions = queens(10, 0, 0, 0, 0);
		if (solutions != 724) {
			errno = EINVAL;
			fail("wrong count of 10-queens solutions");
		}
		sink += solutions;
	}
	report(n, "solve", finish(start));
}

/* xorshift32: the same bytes on every system. */
static uint32_t next_random(uint32_t *state)
{
	uint32_t x = *state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *state = x;
}

static void bench_gzip(unsigned long n)
{
	const char *busybox = getenv("BUSYBOX");
	if (!busybox)
		busybox = "/bin/busybox";
	char path[] = "/tmp/bench-gzip-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		fail("mkstemp");
	static uint32_t data[1 << 18];
	uint32_t state = 2463534242u;
	for (size_t i = 0; i < sizeof data / sizeof data[0]; i++)
		data[i] = next_random(&state);
	if (write(fd, data, sizeof data) != (ssize_t)sizeof data)
		fail("write");
	close(fd);
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			fail("fork");
		if (pid == 0) {
			int null = open("/dev/null", O_WRONLY);
			if (null < 0 || dup2(null, 1) < 0)
				_exit(126);
			execl(busybox, busybox, "gzip", "-c", path, (char *)NULL);
			_exit(127);
		}
		int status;
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0) {
			unlink(path);
			errno = ECHILD;
			fail("busybox gzip");
		}
	}
	uint64_t ns = finish(start);
	unlink(path);
	report(n, "MiB", ns);
}

/*
 * The compile-like workload: a generated source of assignments
 * "vNNN = (vA * 17 + vB) % (vC - 3) ..." is tokenized, its expressions
 * parsed by recursive descent into a tree, names interned in a hash table,
 * constants folded and stack code emitted. Deterministic: the emitted code's
 * checksum is the same on every system.
 */
enum { MAX_SOURCE = 200 * 1024, MAX_NODES = 1 << 17, MAX_NAMES = 4096, MAX_CODE = 1 << 18 };

static char source[MAX_SOURCE + 256];
static size_t source_len;

static void generate_source(void)
{
	uint32_t state = 88172645u;
	static const char ops[] = "+-*/%";
	source_len = 0;
	while (source_len < MAX_SOURCE) {
		source_len += (size_t)sprintf(source + source_len, "v%u = ", next_random(&state) % 1000);
		unsigned terms = 2 + next_random(&state) % 6;
		for (unsigned t = 0; t < terms; t++) {
			if (next_random(&state) % 4 == 0)
				source[source_len++] = '(';
			if (next_random(&state) % 2)
				source_len += (size_t)sprintf(source + source_len, "v%u",
							      next_random(&state) % 1000);
			else
				source_len += (size_t)sprintf(source + source_len, "%u",
							      next_random(&state) % 100 + 1);
			if (t + 1 < terms)
				source_len += (size_t)sprintf(source + source_len, " %c ",
							      ops[next_random(&state) % 5]);
		}
		/* Close what was opened. */
		int depth = 0;
		for (size_t i = source_len; i > 0 && source[i - 1] != '='; i--)
			depth += source[i - 1] == '(';
		while (depth-- > 0)
			source[source_len++] = ')';
		source[source_len++] = ';';
		source[source_len++] = '\n';
	}
	source[source_len] = 0;
}

enum token_kind { T_END, T_NAME, T_NUMBER, T_OP, T_OPEN, T_CLOSE, T_ASSIGN, T_SEMI };

struct compiler {
	const char *at;
	enum token_kind kind;
	uint32_t value; /* number, name index or operator */
	struct node {
		uint8_t op; /* 'n' number, 'v' name, or an operator */
		uint32_t value;
		int32_t left, right;
	} nodes[MAX_NODES];
	int32_t node_count;
	struct name {
		uint32_t hash;
		uint16_t len;
		const char *text;
	} names[MAX_NAMES];
	uint32_t code[MAX_CODE];
	uint32_t code_len;
};

static struct compiler compiler;

static uint32_t intern(const char *text, uint16_t len)
{
	uint32_t hash = 2166136261u;
	for (uint16_t i = 0; i < len; i++)
		hash = (hash ^ (uint8_t)text[i]) * 16777619u;
	for (uint32_t slot = hash % MAX_NAMES;; slot = (slot + 1) % MAX_NAMES) {
		struct name *name = &compiler.names[slot];
		if (!name->text) {
			*name = (struct name){ hash, len, text };
			return slot;
		}
		if (name->hash == hash && name->len == len && !memcmp(name->text, text, len))
			return slot;
	}
}

static void next_token(void)
{
	const char *at = compiler.at;
	while (*at == ' ' || *at == '\n')
		at++;
	char c = *at;
	if (!c) {
		compiler.kind = T_END;
	} else if (c >= 'a' && c <= 'z') {
		const char *start = at;
		while ((*at >= 'a' && *at <= 'z') || (*at >= '0' && *at <= '9'))
			at++;
		compiler.kind = T_NAME;
		compiler.value = intern(start, (uint16_t)(at - start));
		compiler.at = at;
		return;
	} else if (c >= '0' && c <= '9') {
		uint32_t value = 0;
		while (*at >= '0' && *at <= '9')
			value = value * 10 + (uint32_t)(*at++ - '0');
		compiler.kind = T_NUMBER;
		compiler.value = value;
		compiler.at = at;
		return;
	} else if (c == '(') {
		compiler.kind = T_OPEN;
	} else if (c == ')') {
		compiler.kind = T_CLOSE;
	} else if (c == '=') {
		compiler.kind = T_ASSIGN;
	} else if (c == ';') {
		compiler.kind = T_SEMI;
	} else {
		compiler.kind = T_OP;
		compiler.value = (uint8_t)c;
	}
	compiler.at = at + 1;
}

static int32_t new_node(uint8_t op, uint32_t value, int32_t left, int32_t right)
{
	if (compiler.node_count >= MAX_NODES)
		return -1;
	compiler.nodes[compiler.node_count] = (struct node){ op, value, left, right };
	return compiler.node_count++;
}

static int32_t parse_sum(void);

static int32_t parse_primary(void)
{
	if (compiler.kind == T_OPEN) {
		next_token();
		int32_t inner = parse_sum();
		if (compiler.kind == T_CLOSE)
			next_token();
		return inner;
	}
	uint8_t op = compiler.kind == T_NAME ? 'v' : 'n';
	int32_t node = new_node(op, compiler.value, -1, -1);
	next_token();
	return node;
}

static int32_t fold(uint8_t op, int32_t left, int32_t right)
{
	struct node *a = &compiler.nodes[left], *b = &compiler.nodes[right];
	if (a->op != 'n' || b->op != 'n')
		return new_node(op, 0, left, right);
	uint32_t x = a->value, y = b->value, result;
	switch (op) {
	case '+': result = x + y; break;
	case '-': result = x - y; break;
	case '*': result = x * y; break;
	case '/': result = y ? x / y : 0; break;
	default: result = y ? x % y : 0; break;
	}
	/* The folded operands' nodes are reused for the constant. */
	compiler.node_count = left + 1;
	a->value = result;
	return left;
}

static int32_t parse_product(void)
{
	int32_t left = parse_primary();
	while (left >= 0 && compiler.kind == T_OP &&
	       (compiler.value == '*' || compiler.value == '/' || compiler.value == '%')) {
		uint8_t op = (uint8_t)compiler.value;
		next_token();
		int32_t right = parse_primary();
		if (right < 0)
			return -1;
		left = fold(op, left, right);
	}
	return left;
}

static int32_t parse_sum(void)
{
	int32_t left = parse_product();
	while (left >= 0 && compiler.kind == T_OP &&
	       (compiler.value == '+' || compiler.value == '-')) {
		uint8_t op = (uint8_t)compiler.value;
		next_token();
		int32_t right = parse_product();
		if (right < 0)
			return -1;
		left = fold(op, left, right);
	}
	return left;
}

static void emit(int32_t node)
{
	struct node *n = &compiler.nodes[node];
	if (n->op == 'n' || n->op == 'v') {
		if (compiler.code_len + 2 <= MAX_CODE) {
			compiler.code[compiler.code_len++] = n->op;
			compiler.code[compiler.code_len++] = n->value;
		}
		return;
	}
	emit(n->left);
	emit(n->right);
	if (compiler.code_len < MAX_CODE)
		compiler.code[compiler.code_len++] = n->op;
}

static uint32_t compile_pass(void)
{
	memset(compiler.names, 0, sizeof compiler.names);
	compiler.at = source;
	compiler.code_len = 0;
	next_token();
	while (compiler.kind == T_NAME) {
		uint32_t target = compiler.value;
		next_token();
		if (compiler.kind != T_ASSIGN)
			return 0;
		next_token();
		compiler.node_count = 0;
		int32_t tree = parse_sum();
		if (tree < 0 || compiler.kind != T_SEMI)
			return 0;
		next_token();
		emit(tree);
		if (compiler.code_len + 2 <= MAX_CODE) {
			compiler.code[compiler.code_len++] = '=';
			compiler.code[compiler.code_len++] = target;
		}
	}
	uint32_t checksum = 0;
	for (uint32_t i = 0; i < compiler.code_len; i++)
		checksum = checksum * 31 + compiler.code[i];
	return checksum ^ compiler.code_len;
}

static void bench_compile(unsigned long n)
{
	generate_source();
	uint32_t first = compile_pass();
	if (first == 0) {
		errno = EINVAL;
		fail("the generated source did not parse");
	}
	uint64_t start = begin();
	for (unsigned long i = 0; i < n; i++) {
		if (compile_pass() != first) {
			errno = EINVAL;
			fail("passes disagree");
		}
	}
	uint64_t ns = finish(start);
	printf("# compile: %zu bytes of source, checksum %08x\n", source_len, first);
	report(n, "pass", ns);
}

struct benchmark {
	const char *name;
	void (*run)(unsigned long);
	unsigned long count;
};

static const struct benchmark benchmarks[] = {
	{ "getuid", bench_getuid, 100000 },
	{ "getuid-int80", bench_getuid_int80, 100000 },
	{ "fork-exec", bench_fork_exec, 200 },
	{ "pipe-switch", bench_pipe_switch, 10000 },
	{ "thread-switch", bench_thread_switch, 10000 },
	{ "sigsegv", bench_sigsegv, 10000 },
	{ "mmap", bench_mmap, 200 },
	{ "nqueens", bench_nqueens, 200 },
	{ "gzip", bench_gzip, 5 },
	{ "compile", bench_compile, 20 },
};

int main(int argc, char **argv)
{
	self_path = "/proc/self/exe";
	if (argc >= 2 && !strcmp(argv[1], "null"))
		return 0;
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: bench NAME [COUNT]\n");
		return 2;
	}
	/* fork-exec runs this very program again: by its real path. */
	static char exe[4096];
	ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (len > 0) {
		exe[len] = 0;
		self_path = exe;
	}
	for (size_t i = 0; i < sizeof benchmarks / sizeof benchmarks[0]; i++) {
		if (strcmp(argv[1], benchmarks[i].name))
			continue;
		bench_name = benchmarks[i].name;
		unsigned long count = benchmarks[i].count;
		if (argc == 3) {
			char *end;
			count = strtoul(argv[2], &end, 10);
			if (*end || count == 0) {
				fprintf(stderr, "bench: bad count %s\n", argv[2]);
				return 2;
			}
		}
		const char *marks = getenv("BTVMM_MARKS");
		if (marks && !strcmp(marks, "1")) {
			if (ioperm(COUNTER_MARK_PORT, 4, 1) == 0)
				mark = 2 * (unsigned)(i + 1);
			else
				printf("# bench: no counter marks: ioperm: %s\n", strerror(errno));
		}
		benchmarks[i].run(count);
		return 0;
	}
	fprintf(stderr, "bench: unknown benchmark %s\n", argv[1]);
	return 2;
}
