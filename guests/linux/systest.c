/*
 * systest: checks of a Linux guest's process, memory, signal, FPU and
 * system call behaviour, run inside the busybox initramfs
 * (scripts/make-initramfs --add BUILD/systest:/bin/systest).
 *
 * Prints one line per check, "ok NAME" or "FAIL NAME: DETAIL", then
 * "systest: N passed, M failed"; exit status 0 only if every check passed.
 * The output is compared byte for byte between QEMU TCG and btvmm, so it
 * never holds pids, times or addresses (a FAIL detail may hold values, but
 * only ones the check itself computes deterministically, or a coarse fact).
 * Child processes never print: they report through exit status or a pipe.
 *
 * Built 32-bit, static, with SSE2 floating point (guests/linux/Makefile).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;

static void ok(const char *name)
{
    printf("ok %s\n", name);
    passed++;
}

static void fail(const char *name, const char *fmt, ...)
{
    va_list ap;

    printf("FAIL %s: ", name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    failed++;
}

/* fork() with stdio flushed, so that a child never repeats buffered output. */
static pid_t fork_flushed(void)
{
    fflush(NULL);
    return fork();
}

/* Waits for pid; returns its status, or -1 (errno kept) if waitpid fails. */
static int wait_for(pid_t pid)
{
    int status;
    pid_t got;

    do {
        got = waitpid(pid, &status, 0);
    } while (got < 0 && errno == EINTR);
    if (got != pid)
        return -1;
    return status;
}

/* "exited 3", "killed by signal 11", ... for FAIL details. */
static const char *describe(int status)
{
    static char buf[64];

    if (status == -1)
        snprintf(buf, sizeof buf, "waitpid failed (%s)", strerror(errno));
    else if (WIFEXITED(status))
        snprintf(buf, sizeof buf, "exited %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, sizeof buf, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, sizeof buf, "status 0x%x", status);
    return buf;
}

/* ---- fork, wait, exit status ---------------------------------------- */

static void check_fork_wait(void)
{
    const char *name = "fork_wait";
    pid_t pid = fork_flushed();
    int status;

    if (pid < 0) {
        fail(name, "fork: %s", strerror(errno));
        return;
    }
    if (pid == 0)
        _exit(42);
    status = wait_for(pid);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 42)
        fail(name, "child %s, expected exited 42", describe(status));
    else
        ok(name);
}

static void check_fork_signal(void)
{
    const char *name = "fork_signal";
    pid_t pid = fork_flushed();
    int status;

    if (pid < 0) {
        fail(name, "fork: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        signal(SIGUSR1, SIG_DFL);
        kill(getpid(), SIGUSR1);
        _exit(0);
    }
    status = wait_for(pid);
    if (status == -1 || !WIFSIGNALED(status) || WTERMSIG(status) != SIGUSR1)
        fail(name, "child %s, expected killed by signal %d", describe(status), SIGUSR1);
    else
        ok(name);
}

/* ---- getpid / getppid ------------------------------------------------ */

static void check_getpid(void)
{
    const char *name = "getpid_getppid";
    pid_t self = getpid(), pid, reported = 0;
    int fds[2], status;
    ssize_t n;

    if (pipe(fds) < 0) {
        fail(name, "pipe: %s", strerror(errno));
        return;
    }
    pid = fork_flushed();
    if (pid < 0) {
        fail(name, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return;
    }
    if (pid == 0) {
        pid_t mine = getpid();

        close(fds[0]);
        if (write(fds[1], &mine, sizeof mine) != sizeof mine)
            _exit(2);
        _exit(getppid() == self ? 0 : 1);
    }
    close(fds[1]);
    n = read(fds[0], &reported, sizeof reported);
    close(fds[0]);
    status = wait_for(pid);
    if (getpid() != self)
        fail(name, "getpid changed in the parent");
    else if (n != sizeof reported)
        fail(name, "read %d bytes of the child's pid", (int)n);
    else if (reported != pid)
        fail(name, "child's getpid differs from fork's return value");
    else if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail(name, "child %s (1: getppid is not the parent's pid)", describe(status));
    else
        ok(name);
}

/* ---- fork + execve of busybox, output through a pipe ----------------- */

static void check_exec(void)
{
    const char *name = "exec_busybox";
    static char *const argv[] = { "busybox", "echo", "hello", "from", "exec", NULL };
    static char *const envp[] = { "PATH=/bin", NULL };
    const char *expected = "hello from exec\n";
    char buf[256];
    size_t len = 0;
    int fds[2], status;
    pid_t pid;

    if (pipe(fds) < 0) {
        fail(name, "pipe: %s", strerror(errno));
        return;
    }
    pid = fork_flushed();
    if (pid < 0) {
        fail(name, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return;
    }
    if (pid == 0) {
        close(fds[0]);
        if (dup2(fds[1], 1) < 0)
            _exit(126);
        close(fds[1]);
        execve("/bin/busybox", argv, envp);
        _exit(127);
    }
    close(fds[1]);
    for (;;) {
        ssize_t n = read(fds[0], buf + len, sizeof buf - 1 - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += n;
        if (len == sizeof buf - 1)
            break;
    }
    close(fds[0]);
    buf[len] = 0;
    status = wait_for(pid);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail(name, "child %s (127: execve failed)", describe(status));
    else if (strcmp(buf, expected) != 0)
        fail(name, "read %u bytes, not \"hello from exec\\n\"", (unsigned)len);
    else
        ok(name);
}

/* ---- 1 MiB through a pipe -------------------------------------------- */

#define PIPE_BYTES (1u << 20)

static uint32_t lcg_next(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return *state;
}

/* FNV-1a, 32 bits. */
static uint32_t fnv1a(uint32_t hash, const unsigned char *p, size_t n)
{
    while (n--) {
        hash ^= *p++;
        hash *= 16777619u;
    }
    return hash;
}

static void fill_pattern(unsigned char *buf, size_t n, uint32_t *state)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = lcg_next(state) >> 24;
}

static void check_pipe(void)
{
    const char *name = "pipe_1mib";
    static unsigned char buf[65536];
    uint32_t state = 12345, expected = 2166136261u, got = 2166136261u;
    size_t total = 0, chunk;
    int fds[2], status;
    pid_t pid;

    /* The expected checksum, from the same generator. */
    for (size_t done = 0; done < PIPE_BYTES; done += chunk) {
        chunk = PIPE_BYTES - done < sizeof buf ? PIPE_BYTES - done : sizeof buf;
        fill_pattern(buf, chunk, &state);
        expected = fnv1a(expected, buf, chunk);
    }

    if (pipe(fds) < 0) {
        fail(name, "pipe: %s", strerror(errno));
        return;
    }
    pid = fork_flushed();
    if (pid < 0) {
        fail(name, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return;
    }
    if (pid == 0) {
        /* Writes of uneven sizes, 1 byte to 64 KiB, so that reads and
         * writes straddle the pipe's pages in every way. */
        uint32_t sizes = 99;

        close(fds[0]);
        state = 12345;
        for (size_t done = 0; done < PIPE_BYTES; done += chunk) {
            chunk = (lcg_next(&sizes) >> 16) + 1;
            if (chunk > PIPE_BYTES - done)
                chunk = PIPE_BYTES - done;
            fill_pattern(buf, chunk, &state);
            for (size_t off = 0; off < chunk;) {
                ssize_t n = write(fds[1], buf + off, chunk - off);

                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    _exit(1);
                off += n;
            }
        }
        _exit(0);
    }
    close(fds[1]);
    for (;;) {
        /* Uneven reads too. */
        size_t want = 1 + (total * 7919u) % sizeof buf;
        ssize_t n = read(fds[0], buf, want);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got = fnv1a(got, buf, n);
        total += n;
    }
    close(fds[0]);
    status = wait_for(pid);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail(name, "writer %s", describe(status));
    else if (total != PIPE_BYTES)
        fail(name, "received %u bytes, expected %u", (unsigned)total, PIPE_BYTES);
    else if (got != expected)
        fail(name, "checksum 0x%08x, expected 0x%08x", got, expected);
    else
        ok(name);
}

/* ---- pthreads: mutex, condition variable ----------------------------- */

#define MUTEX_THREADS 4
#define MUTEX_ROUNDS 100000

static pthread_mutex_t counter_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile unsigned counter;

static void *mutex_worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < MUTEX_ROUNDS; i++) {
        pthread_mutex_lock(&counter_lock);
        counter = counter + 1;
        pthread_mutex_unlock(&counter_lock);
        if (i % 10000 == 0)
            sched_yield();
    }
    return NULL;
}

static void check_mutex(void)
{
    const char *name = "pthread_mutex";
    pthread_t threads[MUTEX_THREADS];
    int started = 0, err = 0;

    counter = 0;
    for (; started < MUTEX_THREADS; started++) {
        err = pthread_create(&threads[started], NULL, mutex_worker, NULL);
        if (err)
            break;
    }
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (err)
        fail(name, "pthread_create: %s", strerror(err));
    else if (counter != MUTEX_THREADS * MUTEX_ROUNDS)
        fail(name, "counter %u, expected %u", counter, MUTEX_THREADS * MUTEX_ROUNDS);
    else
        ok(name);
}

/* Two threads hand a token back and forth: each waits on the condition
 * variable until it is its turn, so every handoff is a futex wait and wake. */
#define HANDOFFS 2000

static pthread_mutex_t turn_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn_cond = PTHREAD_COND_INITIALIZER;
static int turn;                    /* whose turn: 0 or 1 */
static unsigned handoffs;           /* completed handoffs */
static unsigned out_of_turn;        /* times a thread ran out of turn */

static void *cond_worker(void *arg)
{
    int me = (int)(intptr_t)arg;

    pthread_mutex_lock(&turn_lock);
    for (;;) {
        while (turn != me && handoffs < HANDOFFS)
            pthread_cond_wait(&turn_cond, &turn_lock);
        if (handoffs >= HANDOFFS)
            break;
        if ((int)(handoffs & 1) != me)
            out_of_turn++;
        handoffs++;
        turn = !me;
        pthread_cond_broadcast(&turn_cond);
    }
    pthread_mutex_unlock(&turn_lock);
    return NULL;
}

static void check_cond(void)
{
    const char *name = "pthread_cond";
    pthread_t threads[2];
    int err = 0, started = 0;

    turn = 0;
    handoffs = 0;
    out_of_turn = 0;
    for (; started < 2; started++) {
        err = pthread_create(&threads[started], NULL, cond_worker, (void *)(intptr_t)(1 - started));
        if (err)
            break;
    }
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (err)
        fail(name, "pthread_create: %s", strerror(err));
    else if (handoffs != HANDOFFS || out_of_turn != 0)
        fail(name, "%u handoffs (expected %u), %u out of turn", handoffs, HANDOFFS, out_of_turn);
    else
        ok(name);
}

/* ---- SIGSEGV on an unmapped page, siglongjmp out ----------------------- */

static sigjmp_buf segv_jump;
static void *volatile segv_addr;
static volatile int segv_code, segv_signo;

static void segv_handler(int sig, siginfo_t *info, void *ucontext)
{
    (void)ucontext;
    segv_signo = sig;
    segv_code = info->si_code;
    segv_addr = info->si_addr;
    siglongjmp(segv_jump, 1);
}

static void check_sigsegv(void)
{
    const char *name = "sigsegv";
    struct sigaction sa, old;
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *p;
    volatile unsigned char *volatile target;
    sigset_t mask;
    volatile int rounds = 0;

    p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fail(name, "mmap: %s", strerror(errno));
        return;
    }
    p[100] = 1;
    if (munmap(p, page) < 0) {
        fail(name, "munmap: %s", strerror(errno));
        return;
    }
    target = p + 100;

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old);

    /* Twice: the second fault checks that siglongjmp restored the signal
     * mask (SIGSEGV is blocked inside the handler). */
    segv_addr = NULL;
    if (sigsetjmp(segv_jump, 1) == 0) {
        (void)*target;
        sigaction(SIGSEGV, &old, NULL);
        fail(name, "reading the unmapped page did not fault");
        return;
    }
    rounds++;
    if (rounds == 1 && segv_addr == (void *)target && segv_code == SEGV_MAPERR) {
        segv_addr = NULL;
        target = p + 200;
        if (sigsetjmp(segv_jump, 1) == 0) {
            *target = 2;
            sigaction(SIGSEGV, &old, NULL);
            fail(name, "writing the unmapped page did not fault");
            return;
        }
        rounds++;
    }
    sigaction(SIGSEGV, &old, NULL);
    sigprocmask(SIG_BLOCK, NULL, &mask);

    if (segv_signo != SIGSEGV)
        fail(name, "handler got signal %d", segv_signo);
    else if (segv_addr != (void *)target)
        fail(name, "si_addr is not the faulting address (fault %d)", rounds);
    else if (segv_code != SEGV_MAPERR)
        fail(name, "si_code %d, expected SEGV_MAPERR (%d)", segv_code, SEGV_MAPERR);
    else if (sigismember(&mask, SIGSEGV))
        fail(name, "SIGSEGV still blocked after siglongjmp");
    else
        ok(name);
}

/* ---- floating point in two processes at once -------------------------- */

/*
 * Each process sets its own SSE rounding mode (MXCSR.RC) and x87 control
 * word (rounding and precision control), then runs a double computation
 * (SSE2 arithmetic, libm sqrt/sin/exp) and a long double one (x87), with
 * sched_yield between slices so that the two processes interleave. Before
 * forking, the parent computed the expected results of both flavours the same
 * way; a kernel that loses a register or a control word across a context
 * switch (or a signal, or a fault) gives a different bit pattern.
 */
struct flavour {
    const char *who;
    unsigned mxcsr_rc;   /* MXCSR bits 14:13 */
    unsigned x87_rc;     /* FCW bits 11:10 */
    unsigned x87_pc;     /* FCW bits 9:8 */
};

static const struct flavour flavours[2] = {
    { "parent", 0, 0, 3 },   /* nearest; x87 nearest, 64-bit precision */
    { "child", 3, 2, 2 },    /* toward zero; x87 up, 53-bit precision */
};

#define FPU_SLICES 320
#define FPU_STEPS 300        /* per slice */

struct fpu_result {
    double sse;
    long double x87;
    unsigned mxcsr, fcw;     /* control words at the end */
};

static unsigned get_mxcsr(void)
{
    unsigned v;

    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}

static void set_mxcsr(unsigned v)
{
    __asm__ volatile("ldmxcsr %0" : : "m"(v));
}

static unsigned get_fcw(void)
{
    unsigned short v;

    __asm__ volatile("fnstcw %0" : "=m"(v));
    return v;
}

static void set_fcw(unsigned v)
{
    unsigned short w = v;

    __asm__ volatile("fldcw %0" : : "m"(w));
}

static void apply_flavour(const struct flavour *f, unsigned mxcsr, unsigned fcw)
{
    set_mxcsr((mxcsr & ~0x6000u) | (f->mxcsr_rc << 13));
    set_fcw((fcw & ~0xf00u) | (f->x87_rc << 10) | (f->x87_pc << 8));
}

static __attribute__((noinline)) double sse_slice(double acc, int slice)
{
    for (int k = 0; k < FPU_STEPS; k++) {
        double x = (slice * FPU_STEPS + k + 1) * 0.001;

        acc += sqrt(x) * sin(x) / (1.0 + x * x);
        acc = acc * 0.9999 + exp(-x) * 1e-3;
    }
    return acc;
}

static __attribute__((noinline)) long double x87_slice(long double acc, int slice)
{
    for (int k = 0; k < FPU_STEPS; k++) {
        long double n = slice * FPU_STEPS + k + 1;

        acc += 1.0L / (n * n) - 1.0L / (n * n * n + 3.0L);
        acc = acc * 1.0000001L + 1e-12L / n;
    }
    return acc;
}

static __attribute__((noinline)) void fpu_compute(const struct flavour *f, int yield,
                                                  struct fpu_result *r)
{
    unsigned mxcsr = get_mxcsr(), fcw = get_fcw();
    volatile double sse = 0.0;
    volatile long double x87 = 0.0L;

    apply_flavour(f, mxcsr, fcw);
    for (int s = 0; s < FPU_SLICES; s++) {
        sse = sse_slice(sse, s);
        x87 = x87_slice(x87, s);
        if (yield)
            sched_yield();
    }
    r->sse = sse;
    r->x87 = x87;
    r->mxcsr = get_mxcsr();
    r->fcw = get_fcw();
    set_mxcsr(mxcsr);
    set_fcw(fcw);
}

/* 0: matches; otherwise which part differs (1 SSE, 2 x87, 4 MXCSR, 8 FCW). */
static int fpu_compare(const struct fpu_result *got, const struct fpu_result *want)
{
    int diff = 0;

    if (memcmp(&got->sse, &want->sse, sizeof got->sse) != 0)
        diff |= 1;
    if (memcmp(&got->x87, &want->x87, 10) != 0)
        diff |= 2;
    if (got->mxcsr != want->mxcsr)
        diff |= 4;
    if (got->fcw != want->fcw)
        diff |= 8;
    return diff;
}

static void check_fpu(void)
{
    const char *name = "fpu_two_processes";
    struct fpu_result expected[2], got;
    int diff, status;
    pid_t pid;

    memset(expected, 0, sizeof expected);
    memset(&got, 0, sizeof got);
    fpu_compute(&flavours[0], 0, &expected[0]);
    fpu_compute(&flavours[1], 0, &expected[1]);
    if (fpu_compare(&expected[0], &expected[1]) == 0) {
        fail(name, "the two flavours gave the same results");
        return;
    }

    pid = fork_flushed();
    if (pid < 0) {
        fail(name, "fork: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        fpu_compute(&flavours[1], 1, &got);
        _exit(fpu_compare(&got, &expected[1]));
    }
    fpu_compute(&flavours[0], 1, &got);
    diff = fpu_compare(&got, &expected[0]);
    status = wait_for(pid);
    if (diff)
        fail(name, "parent's results differ (mask %d: 1 SSE, 2 x87, 4 MXCSR, 8 FCW)", diff);
    else if (status == -1 || !WIFEXITED(status))
        fail(name, "child %s", describe(status));
    else if (WEXITSTATUS(status) != 0)
        fail(name, "child's results differ (mask %d: 1 SSE, 2 x87, 4 MXCSR, 8 FCW)",
             WEXITSTATUS(status));
    else
        ok(name);
}

/* ---- clocks and sleeping ---------------------------------------------- */

static int64_t ns_of(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

static void check_clock(void)
{
    const char *name = "clock_monotonic";
    struct timespec prev, now;
    int backwards = 0;

    if (clock_gettime(CLOCK_MONOTONIC, &prev) < 0) {
        fail(name, "clock_gettime: %s", strerror(errno));
        return;
    }
    /* Never backwards over many reads, and forwards once a few ms passed. */
    for (int i = 0; i < 1000; i++) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (ns_of(&now) < ns_of(&prev))
            backwards++;
        prev = now;
    }
    {
        struct timespec start = now;
        int spins = 0;

        do {
            clock_gettime(CLOCK_MONOTONIC, &now);
            sched_yield();
        } while (ns_of(&now) - ns_of(&start) < 1000000 && ++spins < 1000000);
        if (backwards)
            fail(name, "went backwards");
        else if (ns_of(&now) - ns_of(&start) < 1000000)
            fail(name, "did not advance by 1 ms in 1000000 reads");
        else
            ok(name);
    }
}

static void check_nanosleep(void)
{
    const char *name = "nanosleep";
    struct timespec before, after, req = { 0, 10000000 };
    int64_t slept;

    clock_gettime(CLOCK_MONOTONIC, &before);
    while (nanosleep(&req, &req) < 0 && errno == EINTR)
        ;
    clock_gettime(CLOCK_MONOTONIC, &after);
    slept = ns_of(&after) - ns_of(&before);
    if (slept < 10000000)
        fail(name, "returned before 10 ms had passed");
    else if (slept > 2000000000)
        fail(name, "slept more than 2 s");
    else
        ok(name);
}

/* ---- a file in /tmp --------------------------------------------------- */

static void check_tmp_file(void)
{
    const char *name = "tmp_file";
    const char *path = "/tmp/systest.file";
    static unsigned char data[20000], back[20001];
    uint32_t state = 777;
    struct stat st;
    ssize_t n;
    int fd;

    fill_pattern(data, sizeof data, &state);
    fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0) {
        fail(name, "create: %s", strerror(errno));
        return;
    }
    n = write(fd, data, sizeof data);
    if (close(fd) < 0 || n != (ssize_t)sizeof data) {
        fail(name, "write returned %d", (int)n);
        unlink(path);
        return;
    }
    if (stat(path, &st) < 0 || st.st_size != (off_t)sizeof data || (st.st_mode & 0777) != 0644) {
        fail(name, "stat does not show a %u-byte 0644 file", (unsigned)sizeof data);
        unlink(path);
        return;
    }
    fd = open(path, O_RDONLY);
    if (fd < 0) {
        fail(name, "reopen: %s", strerror(errno));
        unlink(path);
        return;
    }
    n = read(fd, back, sizeof back);
    close(fd);
    if (n != (ssize_t)sizeof data || memcmp(data, back, sizeof data) != 0) {
        fail(name, "read back %d bytes, not what was written", (int)n);
        unlink(path);
        return;
    }
    if (unlink(path) < 0) {
        fail(name, "unlink: %s", strerror(errno));
        return;
    }
    if (open(path, O_RDONLY) >= 0 || errno != ENOENT)
        fail(name, "the file is still there after unlink");
    else
        ok(name);
}

static const struct {
    void (*run)(void);
    const char *name;
} checks[] = {
    { check_fork_wait, "fork_wait" },
    { check_fork_signal, "fork_signal" },
    { check_getpid, "getpid_getppid" },
    { check_exec, "exec_busybox" },
    { check_pipe, "pipe_1mib" },
    { check_mutex, "pthread_mutex" },
    { check_cond, "pthread_cond" },
    { check_sigsegv, "sigsegv" },
    { check_fpu, "fpu_two_processes" },
    { check_clock, "clock_monotonic" },
    { check_nanosleep, "nanosleep" },
    { check_tmp_file, "tmp_file" },
};

int main(void)
{
    /* SYSTEST_TIMES=1: each check's wall time on stderr (never compared). */
    int times = getenv("SYSTEST_TIMES") != NULL;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        struct timespec start, end;

        clock_gettime(CLOCK_MONOTONIC, &start);
        checks[i].run();
        clock_gettime(CLOCK_MONOTONIC, &end);
        if (times) {
            fflush(stdout);
            fprintf(stderr, "# %s: %lld ms\n", checks[i].name,
                    (long long)((ns_of(&end) - ns_of(&start)) / 1000000));
        }
    }

    printf("systest: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
