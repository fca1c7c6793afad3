/*
 * CPL 3 code far-jumps to selector 0x33.
 *
 * In the guest, 0x33 is GDT index 6, which this guest never defines (a zero
 * descriptor inside the GDT limit), so a CPU gives the guest #GP(0x30) at
 * the jump: that is what QEMU does, and this kernel passes under QEMU.
 *
 * btvmm handles this one differently from QEMU, which is why it is a kernel
 * of its own. Guest CPL 3 code runs natively in a 64-bit Linux process,
 * where the CPU resolves selectors through the host's GDT: there 0x33 is
 * __USER_CS, the 64-bit user code segment, and a native far jump to it
 * succeeds and continues in 64-bit mode, outside anything the guest could
 * do on real hardware. btvmm notices and stops the VM (exit status 2,
 * "btvmm: the VM stopped: the guest left the virtual machine: guest code
 * switched to the host's 64-bit code segment ..."). The output of this
 * kernel under btvmm is therefore not compared with QEMU's but with
 * conformance/security_user_farjmp.btvmm-expected: the line printed before
 * the kernel enters CPL 3. What matters there is that the host stays
 * untouched. The CPL 0 far jumps to 0x33 (emulated by btvmm's monitor) and
 * the other host-selector checks are in security.c.
 *
 * After the direct far jump come the other far transfers to 0x33 that CPL 3
 * code can make: indirect JMP, direct and indirect CALL, RET and IRET.
 */
#include "lib.h"

static volatile u32 ur[12];

static void record(u32 i)
{
	ur[2 * i] = last_fault.count;
	ur[2 * i + 1] = last_fault.vector << 16 | last_fault.error;
}

static u32 user_farjmp(void)
{
	static struct {
		u32 offset;
		u16 sel;
	} __attribute__((packed)) ptr33 = {0, 0x33};

	fault_reset();
	asm volatile(TRY("ljmp $0x33, $0") : : : "memory");
	record(0);
	fault_reset();
	asm volatile(TRY("ljmp *%0") : : "m"(ptr33) : "memory");
	record(1);
	fault_reset();
	asm volatile(TRY("lcall $0x33, $0") : : : "memory");
	record(2);
	fault_reset();
	asm volatile(TRY("lcall *%0") : : "m"(ptr33) : "memory");
	record(3);
	fault_reset();
	asm volatile("movl %%esp, %%ecx\n\t"
		     "pushl $0x33\n\t"
		     "pushl $0\n\t" TRY("lret") "movl %%ecx, %%esp"
		     :
		     :
		     : "ecx", "memory");
	record(4);
	fault_reset();
	asm volatile("movl %%esp, %%ecx\n\t"
		     "pushl $0x2\n\t"
		     "pushl $0x33\n\t"
		     "pushl $0\n\t" TRY("iret") "movl %%ecx, %%esp"
		     :
		     :
		     : "ecx", "memory");
	record(5);
	return 0x600d;
}

void kmain(void)
{
	static const char *const names[6] = {
		"cpl 3 ljmp 0x33",     "cpl 3 ljmp *m16:32 to 0x33", "cpl 3 lcall 0x33",
		"cpl 3 lcall *m16:32 to 0x33", "cpl 3 lret to 0x33",	     "cpl 3 iret to 0x33",
	};

	memset((void *)ur, 0xff, sizeof(ur));
	printf("# far jmp/call/ret/iret to 0x33 at cpl 3\n");
	u32 r = run_user(user_farjmp, FL_FIXED | FL_IF);
	for (int i = 0; i < 6; i++) {
		printf("# %s: %u fault(s), vector %u error 0x%x\n", names[i], ur[2 * i],
		       ur[2 * i + 1] >> 16, ur[2 * i + 1] & 0xffff);
		report(names[i], ur[2 * i] == 1 && ur[2 * i + 1] == (13u << 16 | 0x30));
	}
	check_eq("user code returned normally", r, 0x600d);
	finish();
}
