/*
 * Multiboot v1 header, kernel entry, the 256 trap stubs and the CPL 3
 * entry and exit paths of the guest test library (see lib.h).
 */

	.set MB_MAGIC, 0x1BADB002
	.set MB_FLAGS, 0x00000003	/* page-aligned modules, memory info */
	.set KDATA, 0x10
	.set UCODE, 0x1b
	.set UDATA, 0x23

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .text.entry, "ax"
	.globl _start
_start:
	cli
	cld
	/* Clear .bss (the boot stack lives there) before using any stack. */
	movl %eax, %esi
	movl %ebx, %ebp
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl
	movl $boot_stack_top, %esp
	pushl $0x2
	popfl
	pushl %ebp		/* Multiboot information */
	pushl %esi		/* Multiboot magic (0x2BADB002) */
	call lib_start		/* never returns */
1:	hlt
	jmp 1b

/*
 * Trap stubs: vectors with a CPU error code (8, 10-14, 17) push nothing
 * extra, the others push 0 in its place; all then push the vector.
 */
	.text
	.align 16
	.globl isr_stub_base
isr_stub_base:
	.set vec, 0
	.rept 256
	.align 16
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17)
	nop
	nop
	.else
	pushl $0
	.endif
	pushl $vec
	jmp isr_common
	.set vec, vec + 1
	.endr

isr_common:
	pushal
	pushl %ds
	pushl %es
	pushl %fs
	pushl %gs
	movl $KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	cld
	pushl %esp
	call trap_dispatch
	addl $4, %esp
	.globl isr_return
isr_return:
	popl %gs
	popl %fs
	popl %es
	popl %ds
	popal
	addl $8, %esp		/* vector, error code */
	iret

/*
 * u32 run_user(u32 (*fn)(void), u32 eflags): IRET to fn at CPL 3; fn
 * returns into user_exit_trampoline, which leaves with int $0x81.
 */
	.globl run_user
run_user:
	pushl %ebp
	pushl %ebx
	pushl %esi
	pushl %edi
	pushfl
	movl %esp, user_saved_esp
	movl 24(%esp), %ecx	/* fn */
	movl 28(%esp), %edx	/* eflags */
	movl $user_stack_top, %eax
	subl $4, %eax
	movl $user_exit_trampoline, (%eax)
	pushl $UDATA		/* SS */
	pushl %eax		/* ESP */
	pushl %edx		/* EFLAGS */
	pushl $UCODE		/* CS */
	pushl %ecx		/* EIP */
	movl $UDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %fs
	movl %eax, %gs
	xorl %eax, %eax
	xorl %ebx, %ebx
	xorl %ecx, %ecx
	xorl %edx, %edx
	xorl %esi, %esi
	xorl %edi, %edi
	xorl %ebp, %ebp
	iret

	.globl user_exit_trampoline
user_exit_trampoline:
	int $0x81
	ud2			/* never resumed */

/* void user_return(u32 value): back to run_user's caller, at CPL 0. */
	.globl user_return
user_return:
	movl 4(%esp), %eax
	movl $KDATA, %edx
	movl %edx, %ds
	movl %edx, %es
	movl %edx, %fs
	movl %edx, %gs
	movl user_saved_esp, %esp
	popfl
	popl %edi
	popl %esi
	popl %ebx
	popl %ebp
	ret

	.bss
	.align 16
	.globl boot_stack_top, trap_stack_top, user_stack_top
	.space 16384
boot_stack_top:
	.space 8192
trap_stack_top:
	.space 8192
user_stack_top:
	.align 4
user_saved_esp:
	.space 4

	.section .note.GNU-stack, "", @progbits
