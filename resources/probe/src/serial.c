/* 8250/16550 UART on COM1 (port 0x3f8), polled. */
#include "io.h"
#include "probe.h"

#define COM1 0x3f8
#define UART_LSR_DR   0x01
#define UART_LSR_THRE 0x20
#define UART_FIFO     16

void serial_init(void)
{
	outb(COM1 + 1, 0x00);   /* IER: no interrupts */
	outb(COM1 + 4, 0x03);   /* MCR: DTR | RTS */
}

/*
 * THRE set means the (16-byte, 16550A) transmit FIFO is empty, so LSR is
 * polled once per 16 bytes rather than before every byte: each port access is
 * a VM exit to the VMM. The poll is bounded so a UART that never reports THRE
 * cannot hang the probe.
 * The bytes go out with single (non-rep) outsb instructions, jumping into an
 * unrolled run of 16: one emulated instruction and one ordinary 1-byte
 * KVM_EXIT_IO per byte. (rep outsb would batch the bytes into one exit with
 * count > 1, which VMM serial models commonly mishandle.)
 */
void serial_write(const char *s, u64 n)
{
	while (n) {
		for (u32 spin = 0; spin < 1000; spin++)
			if (inb(COM1 + 5) & UART_LSR_THRE)
				break;
		u64 k = n < UART_FIFO ? n : UART_FIFO;
		n -= k;
		__asm__ volatile("leaq 1f(%%rip), %%rax\n\t"
				 "subq %[k], %%rax\n\t"
				 "jmp *%%rax\n\t"
				 ".rept 16\n\toutsb\n\t.endr\n"
				 "1:"
				 : "+S"(s)
				 : [k] "r"(k), "d"((u16)COM1)
				 : "rax", "memory");
	}
}

int serial_rx_ready(void)
{
	return inb(COM1 + 5) & UART_LSR_DR;
}

u8 serial_rx(void)
{
	return inb(COM1);
}
