# A no-op libseccomp.so.2 for mips64el (n64, PIC/abicalls), for running
# Debian's C virtiofsd under qemu-user, which has no seccomp(2): seccomp_init
# returns the address of a zeroed context, the rule and load calls succeed,
# release does nothing. No filter is ever installed. Built by
# scripts/foreign/build.sh.

	.abicalls
	.set	noreorder
	.text

	# scmp_filter_ctx seccomp_init(uint32_t def_action)
	# $25 (t9) holds our own address on entry; compute this object's GOT
	# pointer from it in $3 ($28 is callee-saved in n64, so leave it alone),
	# load the context's address from the GOT. Result in $2, return with
	# jr $31 (the instruction after it runs in the delay slot).
	.globl	seccomp_init
	.type	seccomp_init, @function
	.ent	seccomp_init
seccomp_init:
	lui	$3, %hi(%neg(%gp_rel(seccomp_init)))
	daddu	$3, $3, $25
	daddiu	$3, $3, %lo(%neg(%gp_rel(seccomp_init)))
	ld	$2, %got_page(context)($3)
	jr	$31
	daddiu	$2, $2, %got_ofst(context)
	.end	seccomp_init
	.size	seccomp_init, . - seccomp_init

	# int seccomp_rule_add(scmp_filter_ctx, uint32_t action, int syscall, unsigned int arg_cnt, ...)
	.globl	seccomp_rule_add
	.type	seccomp_rule_add, @function
	.ent	seccomp_rule_add
seccomp_rule_add:
	jr	$31
	move	$2, $0
	.end	seccomp_rule_add
	.size	seccomp_rule_add, . - seccomp_rule_add

	# int seccomp_load(const scmp_filter_ctx)
	.globl	seccomp_load
	.type	seccomp_load, @function
	.ent	seccomp_load
seccomp_load:
	jr	$31
	move	$2, $0
	.end	seccomp_load
	.size	seccomp_load, . - seccomp_load

	# void seccomp_release(scmp_filter_ctx)
	.globl	seccomp_release
	.type	seccomp_release, @function
	.ent	seccomp_release
seccomp_release:
	jr	$31
	nop
	.end	seccomp_release
	.size	seccomp_release, . - seccomp_release

	.bss
	.balign	16
	.type	context, @object
context:
	.space	64
	.size	context, . - context

	.section .note.GNU-stack, "", @progbits
