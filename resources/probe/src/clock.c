/*
 * kvmclock (see clock.h): the guest hands KVM the address of a
 * pvclock_vcpu_time_info through MSR_KVM_SYSTEM_TIME_NEW; KVM keeps it filled
 * with (tsc_timestamp, system_time, mul, shift), and
 *   ns = system_time + ((tsc - tsc_timestamp) << shift) * mul >> 32
 * (a negative shift shifts right). The version field is odd while KVM updates
 * the record, and changes with every update.
 */
#include "clock.h"
#include "io.h"

#define KVM_CPUID_SIGNATURE      0x40000000u
#define KVM_CPUID_FEATURES       0x40000001u
#define KVM_FEATURE_CLOCKSOURCE2 3
#define MSR_KVM_SYSTEM_TIME_NEW  0x4b564d01u

struct pvclock {
	u32 version;
	u32 pad0;
	u64 tsc_timestamp;
	u64 system_time;
	u32 mul;
	signed char shift;
	u8 flags;
	u8 pad[2];
};

/* 32 bytes that must not cross a page: 64-byte aligned in .bss (identity-mapped) */
static volatile struct pvclock pvti __attribute__((aligned(64)));
static int state;       /* 0 not tried, 1 on, -1 unavailable */

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

int clock_init(void)
{
	if (state)
		return state > 0;
	state = -1;
	u32 a, b, c, d;
	cpuid(KVM_CPUID_SIGNATURE, 0, &a, &b, &c, &d);
	/* "KVMKVMKVM\0\0\0" */
	if (b != 0x4b4d564b || c != 0x564b4d56 || d != 0x4d || a < KVM_CPUID_FEATURES)
		return 0;
	cpuid(KVM_CPUID_FEATURES, 0, &a, &b, &c, &d);
	if (!(a & (1u << KVM_FEATURE_CLOCKSOURCE2)))
		return 0;
	/* bit 0: enable. KVM fills the record before the guest runs again. */
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (u64)&pvti | 1);
	if (!pvti.version || !pvti.mul)
		return 0;
	state = 1;
	return 1;
}

u64 clock_ns(void)
{
	if (state <= 0)
		return 0;
	u32 v;
	u64 ns;
	do {
		v = pvti.version;
		__asm__ volatile("" ::: "memory");
		u64 delta = rdtsc() - pvti.tsc_timestamp;
		int shift = pvti.shift;
		delta = shift >= 0 ? delta << shift : delta >> -shift;
		/* (delta * mul) >> 32 without a 128-bit product: split delta in halves */
		u64 mul = pvti.mul;
		ns = pvti.system_time + (delta >> 32) * mul + (((delta & 0xffffffffu) * mul) >> 32);
		__asm__ volatile("" ::: "memory");
	} while ((v & 1) || v != pvti.version);
	return ns;
}
