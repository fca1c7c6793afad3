/*
 * CPL 3 code loads selector 0x2b into SS.
 *
 * In the guest, 0x2b is the busy TSS (GDT index 5) with RPL 3, so a CPU
 * gives the guest #GP(0x28) at the load: that is what QEMU does, and this
 * kernel passes under QEMU. security.c checks the same load at CPL 0.
 *
 * btvmm handles this one differently from QEMU, which is why it is a kernel
 * of its own. Guest CPL 3 code runs natively in a 64-bit Linux process,
 * where the CPU resolves selectors through the host's GDT: there 0x2b is
 * __USER_DS, the host's user data segment, and the native load succeeds
 * (a selector collision, DESIGN.md section 2). btvmm repairs a data segment
 * register loaded that way at the next trap (user_untraced.c, class (g)),
 * but cannot do so for SS, which the host's stack accesses go through: it
 * stops the VM (exit status 2, "btvmm: the VM stopped: the guest left the
 * virtual machine: guest user code loaded Ss with host selector 0x2b
 * natively ..."). The output of this kernel under btvmm is therefore not
 * compared with QEMU's but with conformance/security_user_ss.btvmm-expected:
 * the line printed before the kernel enters CPL 3.
 */
#include "lib.h"

static volatile u32 ur[2];

/* The load is followed by a reload of the user data selector, so that a
 * load that wrongly succeeds shows up as a missing fault, not as a later
 * crash. */
static u32 user_load_ss(void)
{
	fault_reset();
	asm volatile(TRY("mov %0, %%ss") "mov %1, %%ss" : : "r"(0x2b), "r"(SEL_UDATA) : "memory");
	ur[0] = last_fault.count;
	ur[1] = last_fault.vector << 16 | last_fault.error;
	return 0x600d;
}

void kmain(void)
{
	memset((void *)ur, 0xff, sizeof(ur));
	printf("# mov 0x2b (host user data, guest busy tss with rpl 3) to ss at cpl 3\n");
	u32 r = run_user(user_load_ss, FL_FIXED | FL_IF);
	printf("# cpl 3 mov 0x2b to ss: %u fault(s), vector %u error 0x%x\n", ur[0], ur[1] >> 16,
	       ur[1] & 0xffff);
	report("cpl 3 mov 0x2b to ss", ur[0] == 1 && ur[1] == (13u << 16 | 0x28));
	check_eq("user code returned normally", r, 0x600d);
	finish();
}
