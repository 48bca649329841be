/* kvmclock: a nanosecond guest clock for the bench modes.
 *
 * The probe times its benchmarks itself so that every VMM is timed the same
 * way: QEMU has no boot-timer device (spry logs a CLOCK_MONOTONIC stamp per
 * boot-timer write, QEMU logs nothing), and console lines are timed only when
 * the host reads them, after ~10 us per printed byte. kvmclock is KVM's own
 * paravirtual clock (MSR_KVM_SYSTEM_TIME_NEW): KVM, not the VMM, fills it in,
 * so it reads the same under spry and QEMU. One read is an rdtsc (~4.6 us
 * under PVM) and ~20 instructions. */
#ifndef PROBE_CLOCK_H
#define PROBE_CLOCK_H
#include "types.h"

/* Registers the clock with KVM if CPUID advertises it (KVM signature,
 * KVM_FEATURE_CLOCKSOURCE2); returns 1 if clock_ns() works. Idempotent. */
int clock_init(void);
/* kvmclock nanoseconds (0 if clock_init() failed) */
u64 clock_ns(void);

#endif
