"""Helpers for the ``prog.so`` / ``PLUGINn`` tests: C plugins compiled
by the tests (``cc -shared -fPIC``), an environment without inherited
plugin settings, and a client for the plugins' little command language.

:func:`build` compiles :data:`SOURCE` into a folder, once per object:

* ``cmd.so`` — the program: ``int cmd(int argc, char **argv, char
  **envp)`` reads command lines from fd 0 and answers on fd 1 (see
  below); it also has ``init(int)``, which counts its calls, so a
  ``PLUGINn`` naming ``cmd.so`` itself shows whether the connection's
  call runs in the object the server pre-loaded;
* ``five.so``, ``two.so``, ``ten.so`` — the same source with another
  ``TAG``, loaded as ``PLUGINn`` only (their ``init`` logs its tag);
* ``nosuch.so`` — has no function ``nosuch`` (a ``dlsym`` failure);
* ``text.so`` — a text file, not an object (a load failure).

``init_stdout(arg)`` leaves ``init-stdout TAG ARG`` in C's ``stdout``
buffer of the server (it does not flush).

``init_ids(arg)`` writes ``plugin-ids TAG ARG uid=U euid=U gid=G
egid=G`` on stderr.

Every ``init(arg)`` writes ``plugin-init TAG ARG cwd=DIR`` on stderr
(unbuffered; the server's log), so the log shows the order, the
argument and the working directory of each call.

The commands of ``cmd`` (one per line; EOF returns 0):

``env``      ``argc=N``, one ``argv=...`` per argument, ``argv-null=yes``
             if ``argv[argc]`` is NULL, one ``envp=...`` per entry,
             ``getenv=`` what the C ``getenv("TCPREMOTEIP")`` says,
             ``getenv-mark=`` the same for ``PLUGTEST_MARK``, ``end-env``
``adopt``    ``environ = envp``, then ``adopted=`` ``getenv("TCPREMOTEIP")``
``say X``    ``said X``
``count``    ``inits=N last=A``: the ``init`` calls this copy of the
             object has seen, and the last argument
``signals``  ``SIGHUP=dfl|other SIGUSR1=... SIGTERM=... SIGCHLD=... SIGPIPE=...
             SIGXFSZ=... blocked=hup,usr1,term,chld,`` (those blocked)
``fds``      ``fds=0,1,2,`` the open descriptors (from /proc/self/fd)
``atexit``   registers a handler that writes ``atexit-ran`` on fd 1
``ret N``    return N
``exit N``   ``exit(N)`` (atexit, stdio flushed by the C library)
``block``    ``blocking`` (written at once), then read fd 0 until EOF
``crash``    write through a NULL pointer
``raise``    ``raise(SIGSEGV)``
``hup``      ``kill(getpid(), SIGHUP)``, then ``survived``

Everything except ``block`` goes through C stdio (``printf``) and is
not flushed by the plugin: the client sees it only if the server's
child flushes stdio after the call (design: shared-objects).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional

from tests.fix_server import Server, clean_env, read_all
from tests.util import need

__all__ = ["SOURCE", "NOLOOKUP", "SIGSEGV_STATUSES", "Plugins", "build", "plugin_env",
           "run_cmds", "end_status", "openssl_cert", "lines_with", "env_of", "first"]

#: options that keep the server from asking the DNS or ident
NOLOOKUP = ["-H", "-R", "-l", "Local"]
#: the raw wait status of a child killed by SIGSEGV, without or with a core dump
SIGSEGV_STATUSES = (11, 11 | 0x80)

SOURCE = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TAG
#define TAG "plugin"
#endif

extern char **environ;
static int init_calls = 0;
static int init_last = -1;

static void put(const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(1, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

/* a line of fd 0 without its newline; -1 at EOF before any byte */
static int line0(char *buf, size_t size)
{
    size_t n = 0;
    char c;
    for (;;) {
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (n == 0)
                return -1;
            break;
        }
        if (c == '\n')
            break;
        if (n + 1 < size)
            buf[n++] = c;
    }
    buf[n] = 0;
    return (int)n;
}

int init(int arg)
{
    char cwd[4096];
    init_calls++;
    init_last = arg;
    if (!getcwd(cwd, sizeof cwd))
        strcpy(cwd, "?");
    fprintf(stderr, "plugin-init %s %d cwd=%s\n", TAG, arg, cwd);
    return 0;
}

/* an init that leaves a line in C's stdout buffer, in the server */
int init_stdout(int arg)
{
    printf("init-stdout %s %d\n", TAG, arg);
    return 0;
}

/* an init that says who it runs as */
int init_ids(int arg)
{
    fprintf(stderr, "plugin-ids %s %d uid=%d euid=%d gid=%d egid=%d\n", TAG, arg,
            (int)getuid(), (int)geteuid(), (int)getgid(), (int)getegid());
    return 0;
}

static void on_exit_handler(void)
{
    put("atexit-ran\n");
}

static const char *disposition(int sig)
{
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) != 0)
        return "error";
    return sa.sa_handler == SIG_DFL ? "dfl" : "other";
}

int cmd(int argc, char **argv, char **envp)
{
    char line[1024];
    while (line0(line, sizeof line) >= 0) {
        if (!strcmp(line, "env")) {
            const char *ip = getenv("TCPREMOTEIP");
            const char *mark = getenv("PLUGTEST_MARK");
            int i;
            char **e;
            printf("argc=%d\n", argc);
            for (i = 0; i < argc; i++)
                printf("argv=%s\n", argv[i]);
            printf("argv-null=%s\n", argv[argc] == NULL ? "yes" : "no");
            for (e = envp; *e; e++)
                printf("envp=%s\n", *e);
            printf("getenv=%s\n", ip ? ip : "(null)");
            printf("getenv-mark=%s\n", mark ? mark : "(null)");
            printf("end-env\n");
        } else if (!strcmp(line, "adopt")) {
            const char *ip;
            environ = envp;
            ip = getenv("TCPREMOTEIP");
            printf("adopted=%s\n", ip ? ip : "(null)");
        } else if (!strncmp(line, "say ", 4)) {
            printf("said %s\n", line + 4);
        } else if (!strcmp(line, "count")) {
            printf("inits=%d last=%d\n", init_calls, init_last);
        } else if (!strcmp(line, "signals")) {
            sigset_t set;
            sigprocmask(SIG_BLOCK, NULL, &set);
            printf("SIGHUP=%s SIGUSR1=%s SIGTERM=%s SIGCHLD=%s SIGPIPE=%s SIGXFSZ=%s "
                   "blocked=%s%s%s%s\n",
                   disposition(SIGHUP), disposition(SIGUSR1), disposition(SIGTERM),
                   disposition(SIGCHLD), disposition(SIGPIPE), disposition(SIGXFSZ),
                   sigismember(&set, SIGHUP) ? "hup," : "",
                   sigismember(&set, SIGUSR1) ? "usr1," : "",
                   sigismember(&set, SIGTERM) ? "term," : "",
                   sigismember(&set, SIGCHLD) ? "chld," : "");
        } else if (!strcmp(line, "fds")) {
            DIR *d = opendir("/proc/self/fd");
            struct dirent *ent;
            printf("fds=");
            while (d && (ent = readdir(d)) != NULL) {
                if (ent->d_name[0] == '.' || atoi(ent->d_name) == dirfd(d))
                    continue;
                printf("%s,", ent->d_name);
            }
            printf("\n");
            if (d)
                closedir(d);
        } else if (!strcmp(line, "atexit")) {
            atexit(on_exit_handler);
        } else if (!strncmp(line, "ret ", 4)) {
            return atoi(line + 4);
        } else if (!strncmp(line, "exit ", 5)) {
            exit(atoi(line + 5));
        } else if (!strcmp(line, "block")) {
            char buf[512];
            put("blocking\n");
            while (read(0, buf, sizeof buf) != 0)
                ;
            return 0;
        } else if (!strcmp(line, "crash")) {
            *(volatile int *)0 = 1;
        } else if (!strcmp(line, "raise")) {
            raise(SIGSEGV);
        } else if (!strcmp(line, "hup")) {
            kill(getpid(), SIGHUP);
            printf("survived\n");
        } else {
            printf("unknown %s\n", line);
        }
    }
    return 0;
}
"""


@dataclass
class Plugins:
    """Where the compiled objects are (absolute paths)."""

    folder: str
    cmd: str        # cmd.so, function cmd, init TAG "cmd"
    five: str       # five.so, init TAG "five"
    two: str        # two.so, init TAG "two"
    ten: str        # ten.so, init TAG "ten"
    nosuch: str     # nosuch.so: no function nosuch
    text: str       # text.so: a text file
    missing: str    # missing.so: no such file


def _compile(cc: str, source: str, out: str, tag: str) -> None:
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", f'-DTAG="{tag}"',
                           "-o", out, source], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def build(folder: str) -> Plugins:
    """Compile the plugins into ``folder`` (needs ``cc``)."""
    cc = need("cc")
    os.makedirs(folder, exist_ok=True)
    source = os.path.join(folder, "plugin.c")
    with open(source, "w") as handle:
        handle.write(SOURCE)
    paths = {}
    for name in ("cmd", "five", "two", "ten", "nosuch"):
        paths[name] = os.path.join(folder, name + ".so")
        _compile(cc, source, paths[name], name)
    text = os.path.join(folder, "text.so")
    with open(text, "w") as handle:
        handle.write("this is not an ELF object\n")
    return Plugins(folder=folder, text=text, missing=os.path.join(folder, "missing.so"),
                   **paths)


_PLUGIN_VARS = re.compile(r"^(PLUGIN.*|USE_DLMOPEN|LMID\d+|PLUGTEST_.*|PYTHONUNBUFFERED)$")


def plugin_env(**extra: str) -> Dict[str, str]:
    """:func:`tests.fix_server.clean_env` without inherited ``PLUGIN*``
    and ``USE_DLMOPEN``, and without ``PYTHONUNBUFFERED`` (under which
    the interpreter makes C's ``stdout`` unbuffered, so what a plugin
    ``printf`` says would reach the client even if nothing flushed it);
    then ``extra``, in the order given: a dict keeps its insertion
    order, and so does ``subprocess`` when it builds the server's
    environment from it."""
    env = {k: v for k, v in clean_env().items() if not _PLUGIN_VARS.match(k)}
    env.update(extra)
    return env


def run_cmds(sock: socket.socket, commands: List[str], timeout: float = 10.0) -> List[str]:
    """Send the ``commands`` (one per line) and EOF, read until EOF,
    return the answer's lines."""
    sock.sendall("".join(c + "\n" for c in commands).encode())
    sock.shutdown(socket.SHUT_WR)
    return read_all(sock, timeout).decode("latin-1").splitlines()


def end_status(server: Server, pid: int, timeout: float = 10.0) -> int:
    """Wait for ``end PID status W`` (``-v``) and return W."""
    line = server.wait_log(rf"^tcpserver: end {pid} status \d+$", timeout=timeout)[0]
    return int(line.rsplit(" ", 1)[1])


def openssl_cert(folder: str) -> str:
    """A self-signed P-256 certificate and its key in one PEM file
    (needs ``openssl``); returns its path.  (Made here rather than with
    tests/fix_tls.py so this module stands alone.)"""
    openssl = need("openssl")
    key = os.path.join(folder, "key.pem")
    crt = os.path.join(folder, "crt.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "30", "-subj", "/CN=plugin.test"],
                   check=True, capture_output=True, timeout=60)
    path = os.path.join(folder, "server.pem")
    with open(path, "wb") as out:
        for part in (crt, key):
            with open(part, "rb") as handle:
                out.write(handle.read())
    return path


def lines_with(lines: List[str], prefix: str) -> List[str]:
    return [line[len(prefix):] for line in lines if line.startswith(prefix)]


def env_of(lines: List[str]) -> Dict[str, str]:
    """The ``envp=`` lines of an ``env`` answer as a dict."""
    return dict(entry.split("=", 1) for entry in lines_with(lines, "envp="))


def first(lines: List[str], prefix: str) -> Optional[str]:
    found = lines_with(lines, prefix)
    return found[0] if found else None
