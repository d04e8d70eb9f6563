/* A two-thread target for process-wide breakpoints.
 *
 * Prints "pid PID" and "tid TID" (its second thread, started at once), then answers one
 * line per command on stdin:
 *   t N   the second thread stores to `counter` N times  -> "done TID"
 *   n N   a new thread (created now) stores N times       -> "done TID"
 *   q     exit
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile long counter = 0;   /* the watched global */
int small = 0;               /* 4 bytes: --len defaults to 4 */
char buffer[32];             /* 32 bytes: needs --len */
static long hidden = 0;      /* a local symbol */
int opterr = 1;              /* libc defines one too: an ambiguous name */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long todo = 0;
static long done = -1;

static long gettid_(void) { return (long)syscall(SYS_gettid); }

void store_many(long n) {
    for (long i = 0; i < n; i++)
        counter = counter + 1;
}

static void *second(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    done = gettid_();
    pthread_cond_broadcast(&cond);
    for (;;) {
        while (todo == 0)
            pthread_cond_wait(&cond, &lock);
        store_many(todo);
        todo = 0;
        done = gettid_();
        pthread_cond_broadcast(&cond);
    }
    return NULL;
}

static void *fresh(void *arg) {
    store_many((long)arg);
    return (void *)gettid_();
}

int main(void) {
    pthread_t t;
    setvbuf(stdout, NULL, _IOLBF, 0);
    hidden = small + buffer[0];
    printf("pid %ld\n", (long)getpid());
    pthread_create(&t, NULL, second, NULL);
    pthread_mutex_lock(&lock);
    while (done < 0)  /* the second thread says its tid once it waits */
        pthread_cond_wait(&cond, &lock);
    printf("tid %ld\n", done);
    pthread_mutex_unlock(&lock);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        long n = 0;
        char cmd = line[0];
        if (cmd == 'q')
            break;
        n = atol(line + 1);
        if (cmd == 't') {
            pthread_mutex_lock(&lock);
            done = -1;
            todo = n;
            pthread_cond_broadcast(&cond);
            while (done < 0)
                pthread_cond_wait(&cond, &lock);
            printf("done %ld\n", done);
            pthread_mutex_unlock(&lock);
        } else if (cmd == 'n') {
            pthread_t f;
            void *tid;
            pthread_create(&f, NULL, fresh, (void *)n);
            pthread_join(f, &tid);
            printf("done %ld\n", (long)tid);
        }
    }
    return (int)hidden & 0;
}
