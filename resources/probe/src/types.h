/* Basic freestanding types and helpers for the spry probe guest. */
#ifndef PROBE_TYPES_H
#define PROBE_TYPES_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef signed long s64;

#define NULL ((void *)0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Unaligned little-endian loads from guest memory (compile to one mov). */
static inline u8 ld8(u64 a) { return *(const volatile u8 *)a; }
static inline u16 ld16(u64 a) { u16 v; __builtin_memcpy(&v, (const void *)a, 2); return v; }
static inline u32 ld32(u64 a) { u32 v; __builtin_memcpy(&v, (const void *)a, 4); return v; }
static inline u64 ld64(u64 a) { u64 v; __builtin_memcpy(&v, (const void *)a, 8); return v; }

/* Under the KVM emulator each iteration of a rep-prefixed string
 * instruction costs about as much as one ordinary instruction, so these
 * scans are ~4x cheaper than the equivalent C loops. */

/* Length of the NUL-terminated string at s, or max if there is no NUL in
 * the first max bytes. */
static inline u64 strnlen_fast(const char *s, u64 max)
{
	const char *p = s;
	u64 n = max;
	u8 found;
	if (!max)
		return 0;
	__asm__ volatile("repne scasb" : "+D"(p), "+c"(n), "=@ccz"(found) : "a"(0) : "memory");
	return found ? (u64)(p - s) - 1 : max;
}

/* First occurrence of byte c in [s, s+n), or NULL. */
static inline const char *memchr_fast(const char *s, u64 n, char c)
{
	u8 found;
	if (!n)
		return NULL;
	__asm__ volatile("repne scasb" : "+D"(s), "+c"(n), "=@ccz"(found) : "a"(c) : "memory");
	return found ? s - 1 : NULL;
}

void *memcpy(void *d, const void *s, u64 n);
void *memset(void *d, int c, u64 n);
int memcmp(const void *a, const void *b, u64 n);
u64 strnlen(const char *s, u64 max);
u64 bytesum(u64 addr, u64 len);

#endif
