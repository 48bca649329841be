/* Minimal string/memory helpers (gcc may emit calls to memcpy/memset). */
#include "types.h"

void *memcpy(void *d, const void *s, u64 n)
{
	void *ret = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

void *memset(void *d, int c, u64 n)
{
	void *ret = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

int memcmp(const void *a, const void *b, u64 n)
{
	u8 ne;
	if (!n)
		return 0;
	__asm__ volatile("repe cmpsb" : "+D"(b), "+S"(a), "+c"(n), "=@ccnz"(ne) : : "memory");
	if (!ne)
		return 0;
	return ((const u8 *)a)[-1] < ((const u8 *)b)[-1] ? -1 : 1;
}

u64 strnlen(const char *s, u64 max)
{
	return strnlen_fast(s, max);
}
