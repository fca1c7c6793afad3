/* Does Linux on this ARM machine give user space hardware breakpoints
 * through perf (PERF_TYPE_BREAKPOINT)? Counts the slots, then hits one. */
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <stdint.h>

__attribute__((noinline)) int target(int x) { return x * 3 + 1; }

static int open_bp(uintptr_t at)
{
	struct perf_event_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.type = PERF_TYPE_BREAKPOINT;
	attr.size = sizeof(attr);
	attr.bp_type = HW_BREAKPOINT_X;
	attr.bp_addr = at;
	attr.bp_len = sizeof(long);
	attr.exclude_kernel = 1;
	attr.exclude_hv = 1;
	return syscall(__NR_perf_event_open, &attr, 0, -1, -1, 0);
}

int main(void)
{
	int fds[16];
	int slots = 0;
	for (; slots < 16; slots++) {
		fds[slots] = open_bp((uintptr_t)target + 4 * slots);
		if (fds[slots] < 0) {
			printf("bpprobe: breakpoint %d: perf_event_open: %s\n", slots, strerror(errno));
			break;
		}
	}
	printf("bpprobe: %d execute breakpoints open at once\n", slots);
	for (int i = 1; i < slots; i++)
		close(fds[i]);
	if (slots == 0)
		return 1;
	volatile int sum = 0;
	for (int i = 0; i < 5; i++)
		sum += target(i);
	long long hits = -1;
	if (read(fds[0], &hits, sizeof(hits)) != sizeof(hits))
		printf("bpprobe: read: %s\n", strerror(errno));
	printf("bpprobe: the breakpoint on target() counted %lld hits for 5 calls\n", hits);
	return hits == 5 ? 0 : 1;
}
