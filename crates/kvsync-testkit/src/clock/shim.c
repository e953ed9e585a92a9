/* Test-only LD_PRELOAD shim: shifts the wall clock (CLOCK_REALTIME and friends) of the
 * process it is loaded into by the number of milliseconds written in the file named by
 * $KVSYNC_TEST_CLOCK_OFFSET_FILE, re-read at most every 20 ms so a test can move the
 * clock of a running process. Monotonic clocks are left alone.
 *
 * A machine whose clock is off is off for the kernel too, so waits with an absolute
 * wall-clock deadline (librdkafka computes them from gettimeofday and passes them to
 * pthread_cond_timedwait, which the kernel measures against its own clock) get their
 * deadline shifted back; otherwise a clock set ahead would make every such wait last
 * minutes, and one set behind would make them all time out at once. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <threads.h>
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

static void shift_by(struct timespec *ts, long long ms) {
    long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + ms * 1000000LL;
    if (ns < 0) ns = 0;
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

static void shift(struct timespec *ts) { shift_by(ts, current_offset_ms()); }

/* The kernel's view of an absolute deadline given in the shifted clock. */
static struct timespec unshifted(const struct timespec *abstime) {
    struct timespec t = *abstime;
    shift_by(&t, -current_offset_ms());
    return t;
}

int pthread_cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *mutex, const struct timespec *abstime) {
    static int (*real)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
    if (!real) {
        real = dlvsym(RTLD_NEXT, "pthread_cond_timedwait", "GLIBC_2.3.2");
        if (!real) real = dlsym(RTLD_NEXT, "pthread_cond_timedwait");
    }
    struct timespec t = unshifted(abstime);
    return real(cond, mutex, &t);
}

/* librdkafka uses C11 threads where glibc has them, whose waits reach the kernel
 * without going through the pthread symbols above. */
int cnd_timedwait(cnd_t *cond, mtx_t *mtx, const struct timespec *abstime) {
    static int (*real)(cnd_t *, mtx_t *, const struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "cnd_timedwait");
    struct timespec t = unshifted(abstime);
    return real(cond, mtx, &t);
}

int mtx_timedlock(mtx_t *mtx, const struct timespec *abstime) {
    static int (*real)(mtx_t *, const struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "mtx_timedlock");
    struct timespec t = unshifted(abstime);
    return real(mtx, &t);
}

int pthread_mutex_timedlock(pthread_mutex_t *mutex, const struct timespec *abstime) {
    static int (*real)(pthread_mutex_t *, const struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "pthread_mutex_timedlock");
    struct timespec t = unshifted(abstime);
    return real(mutex, &t);
}

int sem_timedwait(sem_t *sem, const struct timespec *abstime) {
    static int (*real)(sem_t *, const struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "sem_timedwait");
    struct timespec t = unshifted(abstime);
    return real(sem, &t);
}

int timespec_get(struct timespec *ts, int base) {
    if (base != TIME_UTC) return 0;
    if (clock_gettime(CLOCK_REALTIME, ts) != 0) return 0;
    return base;
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
    if (tv != NULL) {
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
