/* Preloaded before libfaketime on a chaos host whose clock is skewed (tests/chaos/world.py).
 *
 * libfaketime 0.9.10 (Debian 12's) mangles clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...)
 * when FAKETIME_DONT_FAKE_MONOTONIC=1: it shifts the absolute deadline by the fake offset and the
 * kernel answers EINVAL (wolfcw/libfaketime#426). Python 3.11's time.sleep() is exactly that
 * call, so every sleep on the skewed host would raise OSError. With the monotonic clock left
 * real there is nothing to fake in such a sleep: it goes to the kernel unchanged. Every other
 * clock_nanosleep goes on to libfaketime.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *request,
                    struct timespec *remain)
{
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);

    if (clock_id == CLOCK_MONOTONIC || clock_id == CLOCK_BOOTTIME) {
        /* clock_nanosleep returns the error number; the raw syscall sets errno. */
        return syscall(SYS_clock_nanosleep, clock_id, flags, request, remain) == 0 ? 0 : errno;
    }
    if (next == NULL)
        next = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))
            dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock_id, flags, request, remain);
}
