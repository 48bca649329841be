/* A tiny printf: %d %i %u %x %X %p %s %c %% with flags '-', '0', width,
 * precision for %s, and length modifiers l, ll, z. Output is buffered and
 * written to the serial port when a pr() call ends a line or the buffer
 * fills. Literal text and %s strings are scanned and copied with rep string
 * instructions: under the KVM emulator a per-character C loop costs ~30
 * emulated instructions per character, this ~4. */
#include <stdarg.h>
#include "probe.h"

static char obuf[128];
static u32 olen;
static char last_out = '\n';

void pr_flush(void)
{
	if (olen) {
		last_out = obuf[olen - 1];
		serial_write(obuf, olen);
		olen = 0;
	}
}

/* end a partially printed line (before an exception report) */
void pr_line_break(void)
{
	pr_flush();
	if (last_out != '\n')
		pr_always("\n");
}

/* fmt_str() target: while set, output goes to this buffer instead */
static char *sbuf;
static u32 slen, scap;

static void put(char c)
{
	if (sbuf) {
		if (slen + 1 < scap)
			sbuf[slen++] = c;
		return;
	}
	obuf[olen++] = c;
	if (olen == sizeof(obuf))
		pr_flush();
}

static void put_run(const char *s, u64 n)
{
	if (sbuf) {
		u64 k = scap - 1 - slen;
		if (k > n)
			k = n;
		memcpy(sbuf + slen, s, k);
		slen += (u32)k;
		return;
	}
	while (n) {
		u64 k = sizeof(obuf) - olen;
		if (k > n)
			k = n;
		memcpy(obuf + olen, s, k);
		olen += (u32)k;
		s += k;
		n -= k;
		if (olen == sizeof(obuf))
			pr_flush();
	}
}

static void put_num(u64 v, u32 base, int width, int left, char pad, int neg, int upper)
{
	char tmp[24];
	int n = 0;
	do {
		u32 d = (u32)(v % base);
		v /= base;
		tmp[n++] = (char)(d < 10 ? '0' + d : (upper ? 'A' : 'a') + d - 10);
	} while (v);
	int len = n + neg;
	if (neg && pad == '0')
		put('-');
	if (!left)
		for (; width > len; width--)
			put(pad);
	if (neg && pad != '0')
		put('-');
	while (n)
		put(tmp[--n]);
	for (; width > len; width--)
		put(' ');
}

static void vfmt(const char *f, va_list ap)
{
	const char *fend = f + strnlen_fast(f, ~0ul);
	for (; f < fend; f++) {
		if (*f != '%') {
			const char *pct = memchr_fast(f, (u64)(fend - f), '%');
			if (!pct)
				pct = fend;
			put_run(f, (u64)(pct - f));
			f = pct - 1;
			continue;
		}
		f++;
		int left = 0, width = 0, prec = -1, lng = 0;
		char pad = ' ';
		for (;; f++) {
			if (*f == '-')
				left = 1;
			else if (*f == '0')
				pad = '0';
			else
				break;
		}
		if (*f == '*') {
			width = va_arg(ap, int);
			f++;
		}
		for (; *f >= '0' && *f <= '9'; f++)
			width = width * 10 + (*f - '0');
		if (*f == '.') {
			f++;
			prec = 0;
			if (*f == '*') {
				prec = va_arg(ap, int);
				f++;
			}
			for (; *f >= '0' && *f <= '9'; f++)
				prec = prec * 10 + (*f - '0');
		}
		while (*f == 'l' || *f == 'z') {
			lng = 1;
			f++;
		}
		if (left)
			pad = ' ';
		switch (*f) {
		case 'd':
		case 'i': {
			s64 v = lng ? va_arg(ap, s64) : va_arg(ap, int);
			put_num(v < 0 ? (u64)-v : (u64)v, 10, width, left, pad, v < 0, 0);
			break;
		}
		case 'u':
			put_num(lng ? va_arg(ap, u64) : va_arg(ap, u32), 10, width, left, pad, 0, 0);
			break;
		case 'x':
		case 'X':
			put_num(lng ? va_arg(ap, u64) : va_arg(ap, u32), 16, width, left, pad, 0, *f == 'X');
			break;
		case 'p':
			put('0');
			put('x');
			put_num(va_arg(ap, u64), 16, width, left, pad, 0, 0);
			break;
		case 'c':
			put((char)va_arg(ap, int));
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			u64 n = strnlen_fast(s, prec < 0 ? ~0ul : (u64)prec);
			if (!left)
				for (; width > (int)n; width--)
					put(' ');
			put_run(s, n);
			for (; width > (int)n; width--)
				put(' ');
			break;
		}
		case '%':
			put('%');
			break;
		case 0:
			return;
		default:
			put('%');
			put(*f);
		}
	}
}

static void end_call(void)
{
	if (olen && obuf[olen - 1] == '\n')
		pr_flush();
}

void pr(const char *fmt, ...)
{
	if (cfg.quiet)
		return;
	va_list ap;
	va_start(ap, fmt);
	vfmt(fmt, ap);
	va_end(ap);
	end_call();
}

void pr_always(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfmt(fmt, ap);
	va_end(ap);
	end_call();
}

/* Formats into buf (NUL-terminated, truncated to cap - 1 characters);
 * returns the length. */
u32 fmt_str(char *buf, u32 cap, const char *fmt, ...)
{
	va_list ap;
	sbuf = buf;
	slen = 0;
	scap = cap;
	va_start(ap, fmt);
	vfmt(fmt, ap);
	va_end(ap);
	buf[slen] = 0;
	sbuf = NULL;
	return slen;
}

u32 vfmt_str(char *buf, u32 cap, const char *fmt, va_list ap)
{
	sbuf = buf;
	slen = 0;
	scap = cap;
	vfmt(fmt, ap);
	buf[slen] = 0;
	sbuf = NULL;
	return slen;
}
