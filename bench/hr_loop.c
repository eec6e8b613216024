/* hr_loop: the design ceiling of `tcpserver -hr` in one process.
 *
 * Not a server for use: a benchmark yardstick (bench/bench_core.py
 * compiles it with cc).  It does, in C and with nothing else, what our
 * parent does per connection on the default path (DECISIONS D1): one
 * epoll loop accepts, sends the ident query (RFC 1413, from the
 * connection's local address with IP_BIND_ADDRESS_NO_PORT) and the PTR
 * query (UDP to $DNSCACHEIP, random ID, answer checked against the ID
 * and the question) at once, and when both are in, sets
 * TCPREMOTEHOST/TCPREMOTEINFO and the other TCP* variables and starts
 * the program with posix_spawnp (fd 0 and 1 the socket), in line.  It
 * reaps through a signalfd.  No timeouts, rules, limits or logging: it
 * is the most one process of this design can do on the machine.
 *
 *   hr_loop [-F|-S] [-H] [-R] [-c MAX] HOST PORT PROG [ARG...]
 *
 * Prints the bound port on stdout (port 0 picks one).  -F starts the
 * program with fork+exec instead (the loop then does not wait for the
 * exec), to show what the vfork wait costs.  -S hands the descriptor
 * and the environment to a spawn process (forked at the start) that
 * calls posix_spawnp and reaps, telling the loop of every end: the
 * loop then never waits in vfork, at the price of a hand-over per
 * connection (with -F, that process forks instead).  -H leaves out the PTR
 * query and -R the ident query, as tcpserver's -H and -R do; -c is the
 * most connections with a lookup or a program running (100).  Linux
 * only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

extern char **environ;

struct conn {
    int fd, ident, dns;
    int pending;                 /* lookups not yet answered */
    struct sockaddr_in local, remote;
    unsigned short id;
    unsigned char q[300];
    int qlen;
    char info[128], host[256];
    char ibuf[512];
    int ilen;
};

/* epoll data: pointer to the conn with the low bits saying which fd
 * (address 0 with 1, 2, 3: the listener, the signalfd, the spawn
 * process) */
#define TAG_IDENT 1
#define TAG_DNS 2

static int ep, lfd, sfd, maxconn = 100, active, forkmode, nohost, noinfo, spawner, helper = -1;
static struct sockaddr_in dnsaddr;
static char **prog;

static void die(const char *what) { perror(what); exit(111); }

static int usage(void)
{
    fprintf(stderr, "usage: hr_loop [-F|-S] [-H] [-R] [-c MAX] HOST PORT PROG...\n");
    return 100;
}

static void watch(int fd, unsigned events, struct conn *c, int tag, int op)
{
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = (unsigned long long)(unsigned long)c | (unsigned)tag;
    if (epoll_ctl(ep, op, fd, &ev) == -1) die("epoll_ctl");
}

static void finish(struct conn *c);

static void lookup_done(struct conn *c)
{
    if (--c->pending == 0) finish(c);
}

/* A lookup socket leaves epoll before it is closed: a posix_spawn
 * child lets its parent go at exec_mmap and closes the close-on-exec
 * descriptors after that, so for a moment it can hold every socket of
 * ours, and one closed in that window would keep its registration and
 * report events for a freed conn. */
static void ident_end(struct conn *c)
{
    if (c->ident >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->ident, 0); close(c->ident); c->ident = -1; }
    lookup_done(c);
}

static void dns_end(struct conn *c)
{
    if (c->dns >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->dns, 0); close(c->dns); c->dns = -1; }
    lookup_done(c);
}

/* 0: the query went out whole */
static int ident_send(struct conn *c)
{
    char req[32];
    int n = snprintf(req, sizeof req, "%u , %u\r\n",
                     ntohs(c->remote.sin_port), ntohs(c->local.sin_port));
    return send(c->ident, req, n, MSG_NOSIGNAL) == n ? 0 : -1;
}

static void ident_start(struct conn *c)
{
    int one = 1;
    struct sockaddr_in peer = c->remote, me = c->local;
    c->ident = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->ident == -1) { lookup_done(c); return; }
    setsockopt(c->ident, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    me.sin_port = 0;
    peer.sin_port = htons(113);
    if (bind(c->ident, (struct sockaddr *)&me, sizeof me) == -1) { ident_end(c); return; }
    if (connect(c->ident, (struct sockaddr *)&peer, sizeof peer) == -1 && errno != EINPROGRESS) {
        ident_end(c);
        return;
    }
    /* on loopback the connection is usually up when connect returns:
     * send the query at once, as ours does */
    if (ident_send(c) == 0) {
        watch(c->ident, EPOLLIN, c, TAG_IDENT, EPOLL_CTL_ADD);
        return;
    }
    watch(c->ident, EPOLLOUT, c, TAG_IDENT, EPOLL_CTL_ADD);
}

static void ident_event(struct conn *c, unsigned events)
{
    if (events & EPOLLOUT) {
        if (ident_send(c) != 0) { ident_end(c); return; }
        watch(c->ident, EPOLLIN, c, TAG_IDENT, EPOLL_CTL_MOD);
        return;
    }
    ssize_t r = recv(c->ident, c->ibuf + c->ilen, sizeof c->ibuf - 1 - c->ilen, 0);
    if (r > 0) {
        c->ilen += r;
        c->ibuf[c->ilen] = 0;
        char *nl = memchr(c->ibuf, '\n', c->ilen);
        if (!nl && c->ilen < (int)sizeof c->ibuf - 1) return;
        if (nl) *nl = 0;
        /* ports : USERID : os : user */
        char *p = strchr(c->ibuf, ':');
        if (p) p += 1 + strspn(p + 1, " \t");
        if (p && strncmp(p, "USERID", 6) == 0 && (p = strchr(p, ':'))
            && (p = strchr(p + 1, ':'))) {
            p++;
            while (*p == ' ') p++;
            size_t n = strcspn(p, "\r");
            if (n >= sizeof c->info) n = sizeof c->info - 1;
            memcpy(c->info, p, n);
            c->info[n] = 0;
        }
    } else if (r == -1 && errno == EAGAIN) {
        return;
    }
    ident_end(c);
}

static void dns_start(struct conn *c)
{
    unsigned char *ip = (unsigned char *)&c->remote.sin_addr;
    unsigned char *q = c->q;
    int i, n = 0;
    c->dns = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->dns == -1) { lookup_done(c); return; }
    c->id = (unsigned short)random();
    q[0] = c->id >> 8; q[1] = c->id & 255; q[2] = 1; q[3] = 0;   /* RD */
    q[4] = 0; q[5] = 1; memset(q + 6, 0, 6);
    n = 12;
    for (i = 3; i >= 0; i--) {
        int len = sprintf((char *)q + n + 1, "%u", ip[i]);
        q[n] = len;
        n += len + 1;
    }
    memcpy(q + n, "\007in-addr\004arpa\000\000\014\000\001", 18);
    n += 18;
    c->qlen = n;
    /* a random source port: the kernel's ephemeral choice (D50) */
    if (connect(c->dns, (struct sockaddr *)&dnsaddr, sizeof dnsaddr) == -1
        || send(c->dns, q, n, 0) != n) {
        dns_end(c);
        return;
    }
    watch(c->dns, EPOLLIN, c, TAG_DNS, EPOLL_CTL_ADD);
}

/* the name at offset pos of msg, uncompressed into out (dotted) */
static int dns_name(const unsigned char *msg, int len, int pos, char *out, int outlen)
{
    int o = 0, hops = 0;
    while (pos < len) {
        int l = msg[pos];
        if (l == 0) { out[o ? o - 1 : 0] = 0; return 0; }
        if ((l & 0xc0) == 0xc0) {
            if (pos + 1 >= len || ++hops > 20) return -1;
            pos = ((l & 0x3f) << 8) | msg[pos + 1];
            continue;
        }
        if (pos + 1 + l > len || o + l + 1 >= outlen) return -1;
        memcpy(out + o, msg + pos + 1, l);
        o += l;
        out[o++] = '.';
        pos += l + 1;
    }
    return -1;
}

static int skip_name(const unsigned char *msg, int len, int pos)
{
    while (pos < len) {
        int l = msg[pos];
        if (l == 0) return pos + 1;
        if ((l & 0xc0) == 0xc0) return pos + 2;
        pos += l + 1;
    }
    return -1;
}

static void dns_event(struct conn *c)
{
    unsigned char m[1500];
    ssize_t r = recv(c->dns, m, sizeof m, 0);
    if (r == -1 && errno == EAGAIN) return;
    if (r < c->qlen) { dns_end(c); return; }
    /* the answer to our question? (ID, QR, the question echoed) */
    if (m[0] != c->q[0] || m[1] != c->q[1] || !(m[2] & 0x80)
        || memcmp(m + 4, c->q + 4, 2) || memcmp(m + 12, c->q + 12, c->qlen - 12)) {
        return;   /* not ours: keep waiting */
    }
    int an = (m[6] << 8) | m[7], pos = c->qlen;
    while (an-- > 0 && pos > 0 && pos + 10 < r) {
        pos = skip_name(m, r, pos);
        if (pos < 0 || pos + 10 > r) break;
        int type = (m[pos] << 8) | m[pos + 1];
        int rdlen = (m[pos + 8] << 8) | m[pos + 9];
        pos += 10;
        if (type == 12) {
            dns_name(m, r, pos, c->host, sizeof c->host);
            break;
        }
        pos += rdlen;
    }
    dns_end(c);
}

static char *var(const char *name, const char *value)
{
    char *s = malloc(strlen(name) + strlen(value) + 2);
    if (!s) die("malloc");
    sprintf(s, "%s=%s", name, value);
    return s;
}

/* start the program on fd (fork+exec with -F, else posix_spawnp) */
static pid_t spawn_now(int fd, char **env)
{
    pid_t pid;
    if (forkmode) {
        pid = fork();
        if (pid == 0) {
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, 0);
            dup2(fd, 0);
            dup2(fd, 1);
            execvpe(prog[0], prog, env);
            _exit(111);
        }
    } else {
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t at;
        sigset_t none;
        sigemptyset(&none);
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, fd, 0);
        posix_spawn_file_actions_adddup2(&fa, fd, 1);
        posix_spawnattr_init(&at);
        posix_spawnattr_setsigmask(&at, &none);
        posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
        if (posix_spawnp(&pid, prog[0], &fa, &at, prog, env) != 0) pid = -1;
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&at);
    }
    return pid;
}

/* -S: the program is started by the spawn process; the descriptor and
 * the environment (one block of NUL-ended strings) go over a
 * SOCK_SEQPACKET socket.  0 if sent, -1 if not. */
static int hand_over(int fd, char **env)
{
    static char block[65536];
    size_t n = 0;
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov;
    struct msghdr mh;
    struct cmsghdr *cm;
    int i;
    for (i = 0; env[i]; i++) {
        size_t l = strlen(env[i]) + 1;
        if (n + l > sizeof block) return -1;
        memcpy(block + n, env[i], l);
        n += l;
    }
    memset(&mh, 0, sizeof mh);
    memset(cbuf, 0, sizeof cbuf);
    iov.iov_base = block;
    iov.iov_len = n;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    return sendmsg(helper, &mh, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

/* the spawn process: start what it is handed, tell of every end (one
 * byte each); ends when the loop goes away */
static void spawn_process(int sock)
{
    static char block[65536];
    char *env[1024];
    sigset_t chld;
    int sig;
    struct pollfd pf[2];
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sig = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    pf[0].fd = sock; pf[0].events = POLLIN;
    pf[1].fd = sig; pf[1].events = POLLIN;
    for (;;) {
        if (poll(pf, 2, -1) == -1) continue;
        if (pf[1].revents) {
            struct signalfd_siginfo si;
            while (read(sig, &si, sizeof si) > 0) {}
            while (waitpid(-1, 0, WNOHANG) > 0) send(sock, "x", 1, MSG_NOSIGNAL);
        }
        if (pf[0].revents) {
            char cbuf[CMSG_SPACE(sizeof(int))];
            struct iovec iov = { block, sizeof block - 1 };
            struct msghdr mh;
            struct cmsghdr *cm;
            int fd = -1, k = 0;
            size_t at = 0;
            memset(&mh, 0, sizeof mh);
            mh.msg_iov = &iov;
            mh.msg_iovlen = 1;
            mh.msg_control = cbuf;
            mh.msg_controllen = sizeof cbuf;
            ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
            if (n == 0) _exit(0);
            if (n < 0) continue;
            cm = CMSG_FIRSTHDR(&mh);
            if (cm && cm->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(cm), sizeof(int));
            while (at < (size_t)n && k < 1023) {
                env[k++] = block + at;
                at += strlen(block + at) + 1;
            }
            env[k] = 0;
            if (fd < 0 || spawn_now(fd, env) == -1) send(sock, "x", 1, MSG_NOSIGNAL);
            if (fd >= 0) close(fd);
        }
    }
}

static void finish(struct conn *c)
{
    char lip[INET_ADDRSTRLEN], rip[INET_ADDRSTRLEN], lport[8], rport[8];
    char *add[9];
    int nenv = 0, i, k = 0;
    pid_t pid;

    inet_ntop(AF_INET, &c->local.sin_addr, lip, sizeof lip);
    inet_ntop(AF_INET, &c->remote.sin_addr, rip, sizeof rip);
    sprintf(lport, "%u", ntohs(c->local.sin_port));
    sprintf(rport, "%u", ntohs(c->remote.sin_port));
    add[k++] = var("PROTO", "TCP");
    add[k++] = var("TCPLOCALIP", lip);
    add[k++] = var("TCPLOCALPORT", lport);
    add[k++] = var("TCPREMOTEIP", rip);
    add[k++] = var("TCPREMOTEPORT", rport);
    if (c->host[0]) add[k++] = var("TCPREMOTEHOST", c->host);
    if (c->info[0]) add[k++] = var("TCPREMOTEINFO", c->info);
    while (environ[nenv]) nenv++;
    char **env = malloc((nenv + k + 1) * sizeof *env);
    if (!env) die("malloc");
    for (i = 0; i < nenv; i++) env[i] = environ[i];
    for (i = 0; i < k; i++) env[nenv + i] = add[i];
    env[nenv + k] = 0;

    if (helper >= 0) {
        pid = hand_over(c->fd, env);
    } else {
        pid = spawn_now(c->fd, env);
    }
    if (pid == -1) active--;
    for (i = 0; i < k; i++) free(add[i]);
    free(env);
    close(c->fd);
    free(c);
}

static void accept_all(void)
{
    int batch;
    for (batch = 0; batch < 64 && active < maxconn; batch++) {   /* as ours: 64 a turn */
        struct conn *c = calloc(1, sizeof *c);
        socklen_t sl = sizeof c->remote;
        if (!c) die("calloc");
        c->fd = accept4(lfd, (struct sockaddr *)&c->remote, &sl, SOCK_CLOEXEC);
        if (c->fd == -1) { free(c); return; }
        sl = sizeof c->local;
        getsockname(c->fd, (struct sockaddr *)&c->local, &sl);
        c->ident = c->dns = -1;
        c->pending = 2;
        active++;
        /* ident first: its answer comes last; the last of the two to
         * end starts the program */
        if (noinfo) lookup_done(c); else ident_start(c);
        if (nohost) lookup_done(c); else dns_start(c);
    }
}

int main(int argc, char **argv)
{
    int opt, one = 1;
    struct sockaddr_in me;
    socklen_t sl = sizeof me;
    sigset_t chld;
    const char *dns = getenv("DNSCACHEIP");

    while ((opt = getopt(argc, argv, "+FHRSc:")) != -1) {
        if (opt == 'F') forkmode = 1;
        else if (opt == 'H') nohost = 1;
        else if (opt == 'R') noinfo = 1;
        else if (opt == 'S') spawner = 1;
        else if (opt == 'c') maxconn = atoi(optarg);
        else return usage();
    }
    if (argc - optind < 3) return usage();
    prog = argv + optind + 2;
    memset(&dnsaddr, 0, sizeof dnsaddr);
    dnsaddr.sin_family = AF_INET;
    dnsaddr.sin_port = htons(53);
    if (inet_pton(AF_INET, dns ? dns : "127.0.0.1", &dnsaddr.sin_addr) != 1) die("DNSCACHEIP");
    srandom(getpid() ^ (unsigned)time(0));

    memset(&me, 0, sizeof me);
    me.sin_family = AF_INET;
    me.sin_port = htons(atoi(argv[optind + 1]));
    if (inet_pton(AF_INET, argv[optind], &me.sin_addr) != 1) die("HOST");
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&me, sizeof me) == -1 || listen(lfd, 256) == -1) die("listen");
    getsockname(lfd, (struct sockaddr *)&me, &sl);
    printf("%u\n", ntohs(me.sin_port));
    fflush(stdout);

    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, 0);
    sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (spawner) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1) die("socketpair");
        pid_t pid = fork();
        if (pid == -1) die("fork");
        if (pid == 0) {
            close(sv[0]);
            close(lfd);
            spawn_process(sv[1]);
        }
        close(sv[1]);
        helper = sv[0];
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep == -1 || sfd == -1) die("epoll/signalfd");
    struct epoll_event ev;
    ev.events = EPOLLIN; ev.data.u64 = 1ULL;   /* tag 1 at address 0: the listener */
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.u64 = 2ULL;                        /* tag 2 at address 0: the signalfd */
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    if (helper >= 0) {
        ev.data.u64 = 3ULL;                    /* tag 3 at address 0: the spawn process */
        epoll_ctl(ep, EPOLL_CTL_ADD, helper, &ev);
    }

    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1), i;
        if (n == -1) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (i = 0; i < n; i++) {
            unsigned long long d = evs[i].data.u64;
            struct conn *c = (struct conn *)(unsigned long)(d & ~3ULL);
            if (!c) {
                if (d == 1) accept_all();
                else if (d == 3) {
                    char ends[256];
                    ssize_t r;
                    while ((r = recv(helper, ends, sizeof ends, MSG_DONTWAIT)) > 0) active -= r;
                    if (r == 0) { fprintf(stderr, "hr_loop: the spawn process ended\n"); exit(111); }
                    accept_all();
                } else {
                    struct signalfd_siginfo si;
                    while (read(sfd, &si, sizeof si) > 0) {}
                    while (waitpid(-1, 0, WNOHANG) > 0) active--;
                    accept_all();
                }
            } else if ((d & 3) == TAG_IDENT) {
                ident_event(c, evs[i].events & EPOLLERR ? EPOLLIN : evs[i].events);
            } else {
                dns_event(c);
            }
        }
    }
}
