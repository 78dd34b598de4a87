# A no-op libseccomp.so.2 for ppc64le (ELFv2), for running Debian's C
# virtiofsd under qemu-user, which has no seccomp(2): seccomp_init returns the
# address of a zeroed context, the rule and load calls succeed, release does
# nothing. No filter is ever installed. Built by scripts/foreign/build.sh.

	.abiversion 2
	.text

	# scmp_filter_ctx seccomp_init(uint32_t def_action)
	# Global entry: r12 holds our own address; derive the TOC pointer (r2)
	# from it, then address the context TOC-relative. Result in r3.
	.globl	seccomp_init
	.type	seccomp_init, @function
seccomp_init:
0:	addis	2, 12, .TOC. - 0b@ha
	addi	2, 2, .TOC. - 0b@l
	.localentry seccomp_init, . - seccomp_init
	addis	3, 2, context@toc@ha
	addi	3, 3, context@toc@l
	blr
	.size	seccomp_init, . - seccomp_init

	# int seccomp_rule_add(scmp_filter_ctx, uint32_t action, int syscall, unsigned int arg_cnt, ...)
	.globl	seccomp_rule_add
	.type	seccomp_rule_add, @function
seccomp_rule_add:
	li	3, 0
	blr
	.size	seccomp_rule_add, . - seccomp_rule_add

	# int seccomp_load(const scmp_filter_ctx)
	.globl	seccomp_load
	.type	seccomp_load, @function
seccomp_load:
	li	3, 0
	blr
	.size	seccomp_load, . - seccomp_load

	# void seccomp_release(scmp_filter_ctx)
	.globl	seccomp_release
	.type	seccomp_release, @function
seccomp_release:
	blr
	.size	seccomp_release, . - seccomp_release

	.bss
	.balign	16
	.type	context, @object
context:
	.zero	64
	.size	context, . - context

	.section .note.GNU-stack, "", @progbits
