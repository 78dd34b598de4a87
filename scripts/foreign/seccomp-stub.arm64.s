// A no-op libseccomp.so.2 for aarch64 (AAPCS64), for running Debian's C
// virtiofsd under qemu-user, which has no seccomp(2): seccomp_init returns the
// address of a zeroed context, the rule and load calls succeed, release does
// nothing. No filter is ever installed. Built by scripts/foreign/build.sh.

	.text

	// scmp_filter_ctx seccomp_init(uint32_t def_action)
	.globl	seccomp_init
	.type	seccomp_init, %function
seccomp_init:
	adrp	x0, context
	add	x0, x0, :lo12:context
	ret
	.size	seccomp_init, . - seccomp_init

	// int seccomp_rule_add(scmp_filter_ctx, uint32_t action, int syscall, unsigned int arg_cnt, ...)
	.globl	seccomp_rule_add
	.type	seccomp_rule_add, %function
seccomp_rule_add:
	mov	w0, #0
	ret
	.size	seccomp_rule_add, . - seccomp_rule_add

	// int seccomp_load(const scmp_filter_ctx)
	.globl	seccomp_load
	.type	seccomp_load, %function
seccomp_load:
	mov	w0, #0
	ret
	.size	seccomp_load, . - seccomp_load

	// void seccomp_release(scmp_filter_ctx)
	.globl	seccomp_release
	.type	seccomp_release, %function
seccomp_release:
	ret
	.size	seccomp_release, . - seccomp_release

	.bss
	.balign	16
	.type	context, %object
context:
	.zero	64
	.size	context, . - context

	.section .note.GNU-stack, "", %progbits
