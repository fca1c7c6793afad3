/*
 * Planner fixture: small 32-bit code shapes with symbols, for testing
 * `btvmm plan` end to end (assembled with `as --32`, linked with
 * `ld -m elf_i386`). It is never run; the planner only reads it.
 */
	.text
	.globl _start
_start:

/* The dissertation's fig. 3.3. */
	.globl fig33, fig33_cond1, fig33_cond2, fig33_sensitive
	.globl fig33_pointer1, fig33_pointer2
fig33:
	mov	$1, %eax
	test	%eax, %eax
fig33_cond1:
	je	fig33_pointer1_block
	cmp	$3, %ecx
fig33_cond2:
	jne	fig33_pointer2
	nop
fig33_sensitive:
	pushf
	popf
	ret
fig33_pointer1_block:
	add	%ecx, %eax
fig33_pointer1:
	ret
fig33_pointer2:
	jmp	*%eax

/* A counted loop whose only exit is a return. */
	.globl loop_entry, loop_exit
loop_entry:
	xor	%ecx, %ecx
1:	inc	%ecx
	cmp	$10, %ecx
	jb	1b
loop_exit:
	ret

/* A call chain: the innermost return is the first stop. */
	.globl chain_outer, chain_middle, chain_inner, chain_inner_ret
chain_outer:
	call	chain_middle
	ret
chain_middle:
	call	chain_inner
	ret
chain_inner:
	push	%ebp
	mov	%esp, %ebp
	pop	%ebp
chain_inner_ret:
	ret
