/* Test-only LD_PRELOAD shim: shifts the wall clock (CLOCK_REALTIME and friends) of the
 * process it is loaded into by the number of milliseconds written in the file named by
 * $KVSYNC_TEST_CLOCK_OFFSET_FILE, re-read at most every 20 ms so a test can move the
 * clock of a running process. Monotonic clocks are left alone, so timers, sleeps and
 * timeouts behave. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_ms;
static long long next_read_ns;

static long long mono_ns(void) {
    struct timespec t;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long current_offset_ms(void) {
    long long now = mono_ns();
    if (now >= __atomic_load_n(&next_read_ns, __ATOMIC_RELAXED)) {
        __atomic_store_n(&next_read_ns, now + 20000000LL, __ATOMIC_RELAXED);
        const char *path = getenv("KVSYNC_TEST_CLOCK_OFFSET_FILE");
        FILE *f = path ? fopen(path, "r") : NULL;
        if (f) {
            long long v;
            if (fscanf(f, "%lld", &v) == 1) {
                __atomic_store_n(&offset_ms, v, __ATOMIC_RELAXED);
            }
            fclose(f);
        }
    }
    return __atomic_load_n(&offset_ms, __ATOMIC_RELAXED);
}

static void shift(struct timespec *ts) {
    long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + current_offset_ms() * 1000000LL;
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int r = syscall(SYS_clock_gettime, clock, ts);
    if (r == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        shift(ts);
    }
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
