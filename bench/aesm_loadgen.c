/* Closed-loop AESM load generator for bench/quote_service.py (built there with the system `cc`).
 *
 * N clients, each repeating one "exchange": the request frames given (for a quote: InitQuoteEx,
 * GetQuoteSizeEx, GetQuoteEx, already AESM-framed by the Python harness - the real protobuf bytes), every
 * request over a fresh Unix-socket connection, as libsgx_quote_ex does: connect, send the frame, read
 * the whole length-prefixed reply, close. One thread, epoll, non-blocking sockets, so the generator
 * costs a few microseconds per request instead of a Python event loop's ~100.
 *
 * usage: aesm_loadgen SOCKET FRAMES_FILE CLIENTS DURATION_S MAX_EXCHANGES CHECK
 *   FRAMES_FILE  the frames of one exchange, concatenated (each: u32 LE length + payload)
 *   MAX_EXCHANGES  0 = no limit (stop after DURATION_S); otherwise stop starting exchanges after that many
 *   CHECK        1: a reply whose errorCode (field 1 of the response's sub-message) is not 0 is an error
 * Prints one JSON object on stdout: counts, errors, elapsed seconds, the generator's own CPU time, and
 * latency percentiles in ms per whole exchange, per request (all pooled) and per request position.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAMES 8
#define REQUEST_TIMEOUT_S 10.0
#define MAX_REPLY (4u << 20)

enum { IDLE, CONNECTING, WRITING, READING, RETRY, DONE };

typedef struct {
    int fd, state, stage;
    size_t off;             /* bytes of the request written / of the reply read */
    size_t need;            /* reply bytes expected (4 until the header is in) */
    unsigned char *buf;
    size_t cap;
    double t_exchange, t_request, t_retry;
} client_t;

typedef struct { double *v; size_t n, cap; } samples_t;

static const unsigned char *frames[MAX_FRAMES];
static size_t frame_len[MAX_FRAMES];
static int nframes;
static struct sockaddr_un addr;
static socklen_t addr_len;
static int ep;
static int check;
static long exchanges_started, exchanges_done, requests_done, errors, reply_errors, connect_retries;
static long io_errors, timeouts;
static samples_t lat_exchange, lat_request, lat_stage[MAX_FRAMES];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void push(samples_t *s, double v) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (!s->v) { perror("realloc"); exit(2); }
    }
    s->v[s->n++] = v;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(samples_t *s, double p) {  /* s must be sorted */
    if (!s->n) return -1;
    size_t i = (size_t)(s->n * p);
    if (i >= s->n) i = s->n - 1;
    return s->v[i] * 1e3;
}

static double mean(samples_t *s) {
    double t = 0;
    for (size_t i = 0; i < s->n; i++) t += s->v[i];
    return s->n ? t / s->n * 1e3 : -1;
}

/* errorCode of a Response: skip the sub-message's tag and length varints, expect field 1 varint. */
static long reply_code(const unsigned char *p, size_t n) {
    size_t i = 0;
    for (int k = 0; k < 2; k++) {
        while (i < n && (p[i] & 0x80)) i++;
        i++;
    }
    if (i >= n || p[i] != 0x08) return -1;
    i++;
    long v = 0;
    for (int shift = 0; i < n && shift < 63; shift += 7, i++) {
        v |= (long)(p[i] & 0x7f) << shift;
        if (!(p[i] & 0x80)) return v;
    }
    return -1;
}

static void close_conn(client_t *c) {
    if (c->fd >= 0) close(c->fd);  /* also removes it from the epoll set */
    c->fd = -1;
}

static void start_request(client_t *c, double t);

static void start_exchange(client_t *c, double t, double end, long max_exchanges) {
    if (t >= end || (max_exchanges && exchanges_started >= max_exchanges)) {
        c->state = DONE;
        return;
    }
    exchanges_started++;
    c->stage = 0;
    c->t_exchange = t;
    start_request(c, t);
}

static void fail_exchange(client_t *c, long *counter) {
    (*counter)++;
    errors++;
    close_conn(c);
    c->state = IDLE;  /* the main loop starts a new exchange */
}

static void arm(client_t *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &ev) < 0) { perror("epoll_ctl"); exit(2); }
}

static void do_write(client_t *c) {
    const unsigned char *f = frames[c->stage];
    size_t len = frame_len[c->stage];
    while (c->off < len) {
        ssize_t w = send(c->fd, f + c->off, len - c->off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) {
                if (c->state != WRITING) arm(c, EPOLLOUT, c->state == CONNECTING ? EPOLL_CTL_MOD : EPOLL_CTL_ADD);
                c->state = WRITING;
                return;
            }
            fail_exchange(c, &io_errors);
            return;
        }
        c->off += (size_t)w;
    }
    int op = (c->state == WRITING || c->state == CONNECTING) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    c->state = READING;
    c->off = 0;
    c->need = 4;
    arm(c, EPOLLIN, op);
}

static void start_request(client_t *c, double t) {
    c->t_request = t;
    c->off = 0;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { perror("socket"); exit(2); }
    if (connect(c->fd, (struct sockaddr *)&addr, addr_len) == 0) {
        c->state = IDLE;
        do_write(c);
        return;
    }
    if (errno == EINPROGRESS) {
        c->state = CONNECTING;
        arm(c, EPOLLOUT, EPOLL_CTL_ADD);
        return;
    }
    if (errno == EAGAIN || errno == ENOENT || errno == ECONNREFUSED) {
        /* backlog full, or the server is between restarts: retry shortly, like a real client */
        connect_retries++;
        close_conn(c);
        c->state = RETRY;
        c->t_retry = t + 0.001;
        return;
    }
    fail_exchange(c, &io_errors);
}

static void do_read(client_t *c, double t_end, long max_exchanges) {
    for (;;) {
        if (c->cap < c->need) {
            c->cap = c->need < 65536 ? 65536 : c->need;
            c->buf = realloc(c->buf, c->cap);
            if (!c->buf) { perror("realloc"); exit(2); }
        }
        ssize_t r = recv(c->fd, c->buf + c->off, c->cap - c->off, 0);
        if (r < 0) {
            if (errno == EAGAIN) return;
            fail_exchange(c, &io_errors);
            return;
        }
        if (r == 0) {  /* closed before the whole reply */
            fail_exchange(c, &io_errors);
            return;
        }
        c->off += (size_t)r;
        if (c->need == 4 && c->off >= 4) {
            uint32_t n = c->buf[0] | c->buf[1] << 8 | c->buf[2] << 16 | (uint32_t)c->buf[3] << 24;
            if (n > MAX_REPLY) { fail_exchange(c, &io_errors); return; }
            c->need = 4 + (size_t)n;
        }
        if (c->need > 4 && c->off >= c->need) break;
    }
    double t = now();
    close_conn(c);
    long code = reply_code(c->buf + 4, c->need - 4);
    push(&lat_request, t - c->t_request);
    push(&lat_stage[c->stage], t - c->t_request);
    requests_done++;
    if (check && code != 0) {
        reply_errors++;
        errors++;
        c->state = IDLE;
        return;
    }
    if (++c->stage < nframes) {
        start_request(c, t);
        return;
    }
    push(&lat_exchange, t - c->t_exchange);
    exchanges_done++;
    c->state = IDLE;
    start_exchange(c, t, t_end, max_exchanges);
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    size_t cap = 1 << 16, n = 0;
    unsigned char *b = malloc(cap);
    for (size_t r; (r = fread(b + n, 1, cap - n, f)) > 0;) {
        n += r;
        if (n == cap) b = realloc(b, cap *= 2);
    }
    fclose(f);
    *len = n;
    return b;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s SOCKET FRAMES_FILE CLIENTS DURATION_S MAX_EXCHANGES CHECK\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int nclients = atoi(argv[3]);
    double duration = atof(argv[4]);
    long max_exchanges = atol(argv[5]);
    check = atoi(argv[6]);
    size_t total;
    unsigned char *all = read_file(argv[2], &total);
    for (size_t off = 0; off + 4 <= total;) {
        uint32_t n = all[off] | all[off + 1] << 8 | all[off + 2] << 16 | (uint32_t)all[off + 3] << 24;
        if (nframes == MAX_FRAMES || off + 4 + n > total) { fprintf(stderr, "bad frames file\n"); return 2; }
        frames[nframes] = all + off;
        frame_len[nframes++] = 4 + n;
        off += 4 + n;
    }
    if (!nframes || nclients < 1) { fprintf(stderr, "no frames or no clients\n"); return 2; }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) { fprintf(stderr, "socket path too long\n"); return 2; }
    strcpy(addr.sun_path, path);
    addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
    ep = epoll_create1(EPOLL_CLOEXEC);

    client_t *cl = calloc((size_t)nclients, sizeof *cl);
    double t0 = now(), t_end = t0 + duration, hard_end = t_end + 60.0, last_scan = t0;
    for (int i = 0; i < nclients; i++) {
        cl[i].fd = -1;
        start_exchange(&cl[i], t0, t_end, max_exchanges);
    }
    struct epoll_event evs[256];
    for (;;) {
        int active = 0, waiting_retry = 0;
        double t = now();
        for (int i = 0; i < nclients; i++) {
            client_t *c = &cl[i];
            if (c->state == IDLE) start_exchange(c, t, t_end, max_exchanges);
            if (c->state == RETRY && t >= c->t_retry) start_request(c, t);
            if (c->state == RETRY) waiting_retry = 1;
            if (c->state != DONE) active = 1;
        }
        if (!active || t > hard_end) break;
        if (t - last_scan > 0.05) {  /* per-request timeout: a stuck server must not hang the bench */
            last_scan = t;
            for (int i = 0; i < nclients; i++)
                if ((cl[i].state == CONNECTING || cl[i].state == WRITING || cl[i].state == READING) &&
                    t - cl[i].t_request > REQUEST_TIMEOUT_S)
                    fail_exchange(&cl[i], &timeouts);
        }
        int n = epoll_wait(ep, evs, 256, waiting_retry ? 1 : 50);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 2; }
        for (int i = 0; i < n; i++) {
            client_t *c = evs[i].data.ptr;
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err) fail_exchange(c, &io_errors);
                else do_write(c);
            } else if (c->state == WRITING) {
                do_write(c);
            } else if (c->state == READING) {
                do_read(c, t_end, max_exchanges);
            }
        }
    }
    double elapsed = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;

    qsort(lat_exchange.v, lat_exchange.n, sizeof(double), cmp_double);
    qsort(lat_request.v, lat_request.n, sizeof(double), cmp_double);
    printf("{\"exchanges\": %ld, \"requests\": %ld, \"errors\": %ld, \"reply_errors\": %ld, \"io_errors\": %ld, "
           "\"timeouts\": %ld, \"connect_retries\": %ld, \"elapsed\": %.6f, \"loadgen_cpu\": %.6f, ",
           exchanges_done, requests_done, errors, reply_errors, io_errors, timeouts, connect_retries, elapsed, cpu);
    printf("\"exchange_ms\": {\"p50\": %.4f, \"p99\": %.4f, \"max\": %.4f, \"mean\": %.4f}, ",
           pct(&lat_exchange, 0.5), pct(&lat_exchange, 0.99),
           lat_exchange.n ? lat_exchange.v[lat_exchange.n - 1] * 1e3 : -1, mean(&lat_exchange));
    printf("\"request_ms\": {\"p50\": %.4f, \"p99\": %.4f, \"max\": %.4f, \"mean\": %.4f}, \"stage_ms\": [",
           pct(&lat_request, 0.5), pct(&lat_request, 0.99),
           lat_request.n ? lat_request.v[lat_request.n - 1] * 1e3 : -1, mean(&lat_request));
    for (int s = 0; s < nframes; s++) {
        qsort(lat_stage[s].v, lat_stage[s].n, sizeof(double), cmp_double);
        printf("%s{\"p50\": %.4f, \"p99\": %.4f, \"mean\": %.4f}", s ? ", " : "", pct(&lat_stage[s], 0.5),
               pct(&lat_stage[s], 0.99), mean(&lat_stage[s]));
    }
    printf("]}\n");
    return 0;
}
