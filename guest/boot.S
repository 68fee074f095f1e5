/* Multiboot (v1) entry of the test guest: QEMU's -kernel loader enters here in 32-bit
 * protected mode with flat segments, EAX = multiboot magic, EBX = multiboot info. */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003 /* page-align modules, want memory info */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .text
    .globl _start
_start:
    cli
    movl $stack_top, %esp
    pushl %ebx
    pushl %eax
    call guest_main
1:  hlt
    jmp 1b

    .section .bss
    .align 16
    .skip 16384
stack_top:
    .section .note.GNU-stack, "", @progbits
