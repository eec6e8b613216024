"""Shared-object programs (``prog.so``) and ``PLUGINn``, end to end
(design: shared-objects, signals).

The plugins are C, compiled by the tests (``cc -shared -fPIC``, see
tests/fix_plugins.py).  Covered: ``argc``/``argv``/``envp`` and the C
``getenv`` that does not see the connection's variables until the plugin
adopts ``envp``; the return value as the exit status (``& 0xFF``) and C
stdio flushed after the call; ``PLUGINn`` in the environment's order,
init 0 at start-up and 1 on SIGHUP; ``PLUGINn_dir`` and file arguments
made absolute before it; the pre-loaded object being the one the
connection calls; loading and init after the privilege drop; load and
symbol failures (exit 111); only fd 0, 1, 2 open in the child; no
atexit handlers on return; an init's unflushed C ``stdout`` kept out of
the connections; a plugin that crashes or blocks harms only its
connection; ``-c`` counts plugin children; SIGHUP/SIGUSR1 at their
defaults in the child; a plugin behind the TLS relay; ``USE_DLMOPEN``
ignored with one warning; a bare ``x.so`` searched on ``$PATH`` and
exec'd.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
from typing import Dict, Iterator, List, Sequence, Tuple

import pytest

from tests.fix_plugins import (NOLOOKUP, SIGSEGV_STATUSES, Plugins, build, end_status, env_of,
                               first, lines_with, openssl_cert, plugin_env, run_cmds)
from tests.fix_rules import ours_rules
from tests.fix_server import (OURS, Server, Servers, children_of, read_all, read_exactly, read_some,
                              relay_server_of, run_once, wait_until)
from tests.fix_tls import TLS_VARIABLES, read_tls, tls_connect
from tests.util import need_root


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Plugins:
    return build(str(tmp_path_factory.mktemp("plugins")))


def in_dir(folder: str) -> List[str]:
    """A server prefix that starts the server in ``folder`` (and execs it)."""
    return ["sh", "-c", 'cd "$0" && exec "$@"', folder]


def start(servers: Servers, prog: Sequence[str], env: Dict[str, str],
          options: Sequence[str] = (), prefix: Sequence[str] = ()) -> Server:
    return servers(["-v", *NOLOOKUP, *options], prog=list(prog), env=env, prefix=prefix)


def talk(server: Server, commands: List[str], count: int) -> Tuple[List[str], int, int]:
    """Connection number ``count`` of ``server``: send ``commands``, read
    to EOF; returns (answer lines, the program's pid, its wait status)."""
    with server.connect() as sock:
        answer = run_cmds(sock, commands)
    pid = server.wait_pids(count)[count - 1]
    return answer, pid, end_status(server, pid)


def inits(server: Server) -> List[str]:
    """The ``plugin-init TAG ARG cwd=DIR`` lines of the log."""
    return [line for line in server.lines() if line.startswith("plugin-init ")]


def no_zombie(server: Server) -> None:
    assert wait_until(lambda: not [p for p, state in children_of(server.pid) if state == "Z"]), \
        children_of(server.pid)


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# -- the call: argc, argv, envp, getenv -----------------------------------------------------
def test_argv_envp_and_getenv(servers, plugins: Plugins, tmp_path) -> None:
    folder = str(tmp_path)
    shutil.copy(plugins.cmd, folder)
    server = start(servers, ["./cmd.so", "a", "b c", ""], plugin_env(PLUGTEST_MARK="marked"),
                   prefix=in_dir(folder))
    answer, pid, status = talk(server, ["env", "count", "adopt"], 1)
    # argv exactly as given, the .so path itself first, NULL terminated
    assert first(answer, "argc=") == "4", answer
    assert lines_with(answer, "argv=") == ["./cmd.so", "a", "b c", ""], answer
    assert first(answer, "argv-null=") == "yes"
    # envp: the process environment plus the connection's variables
    envp = env_of(answer)
    assert envp.get("PROTO") == "TCP", answer
    assert envp.get("TCPREMOTEIP") == "127.0.0.1"
    assert envp.get("TCPLOCALIP") == "127.0.0.1"
    assert envp.get("TCPLOCALPORT") == str(server.port)
    assert envp.get("TCPLOCALHOST") == "Local"
    assert envp.get("PLUGTEST_MARK") == "marked"
    assert "end-env" in answer
    # the C environ is the server's own: getenv sees PLUGTEST_MARK, not TCPREMOTEIP
    assert first(answer, "getenv=") == "(null)", answer
    assert first(answer, "getenv-mark=") == "marked"
    # ... until the plugin adopts envp
    assert first(answer, "adopted=") == "127.0.0.1", answer
    # no PLUGINn: nothing called init in this object
    assert first(answer, "inits=") == "0 last=-1"
    assert status == 0
    # the adoption was the child's own business
    answer, _, _ = talk(server, ["env"], 2)
    assert first(answer, "getenv=") == "(null)", answer
    no_traceback(server.log())


# -- the return value --------------------------------------------------------------------------
def test_return_value_is_exit_status(servers, plugins: Plugins) -> None:
    server = start(servers, [plugins.cmd], plugin_env())
    cases = [("ret 0", 0), ("ret 7", 7 << 8), ("ret 259", 3 << 8), ("ret 256", 0),
             ("ret -1", 255 << 8), ("exit 5", 5 << 8)]
    for count, (command, wanted) in enumerate(cases, 1):
        answer, pid, status = talk(server, [f"say {count}", command], count)
        # what printf left in stdio's buffer reached the client: fflush(NULL) after the call
        assert answer == [f"said {count}"], (command, answer)
        assert status == wanted, (command, status, server.log())
    assert server.running()
    no_traceback(server.log())


def test_atexit_handlers_only_on_exit(servers, plugins: Plugins) -> None:
    """A return ends the child without C's atexit handlers; exit(3) in
    the function runs them."""
    server = start(servers, [plugins.cmd], plugin_env())
    answer, _, status = talk(server, ["atexit", "ret 4"], 1)
    assert answer == [] and status == 4 << 8, answer
    answer, _, status = talk(server, ["atexit", "exit 4"], 2)
    assert answer == ["atexit-ran"] and status == 4 << 8, answer


def test_only_the_connection_is_open(servers, plugins: Plugins) -> None:
    """fd 0 and 1 are the connection, 2 the log, nothing else of the
    server's (listener, wake-up pipe, epoll, the other connections)."""
    server = start(servers, [plugins.cmd], plugin_env(PLUGIN1=plugins.five))
    with server.connect() as other:
        other.sendall(b"block\n")
        assert read_some(other, 10) == b"blocking\n"
        answer, _, status = talk(server, ["fds"], 2)
    assert answer == ["fds=0,1,2,"], answer
    assert status == 0


def test_stdio_flushed_when_the_client_has_sent_nothing(servers, plugins: Plugins) -> None:
    """EOF at once: the function returns 0 and has written nothing."""
    server = start(servers, [plugins.cmd], plugin_env())
    with server.connect() as sock:
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""
    assert end_status(server, server.wait_pids(1)[0]) == 0


# -- PLUGINn: order, arguments, SIGHUP -------------------------------------------------------------
def test_plugin_init_order_and_argument(servers, plugins: Plugins) -> None:
    env = plugin_env(PLUGIN5=plugins.five, PLUGIN5_init="init",
                     PLUGINX=plugins.missing,            # not an entry: no digits
                     PLUGIN2=plugins.two, PLUGIN2_init="init",
                     PLUGIN3_init="init",                # no PLUGIN3: nothing to call
                     PLUGIN7=plugins.cmd,                # loaded, no init
                     PLUGIN10=plugins.ten, PLUGIN10_init="init")
    assert [k for k in env if k.startswith("PLUGIN")] == [       # the dict keeps the order
        "PLUGIN5", "PLUGIN5_init", "PLUGINX", "PLUGIN2", "PLUGIN2_init", "PLUGIN3_init",
        "PLUGIN7", "PLUGIN10", "PLUGIN10_init"]
    server = start(servers, [plugins.cmd], env)
    # start-up: the environment's order (not 2 5 10, not "10" "2" "5"), argument 0;
    # done before -1 printed the port
    cwd = os.getcwd()
    assert inits(server) == [f"plugin-init five 0 cwd={cwd}", f"plugin-init two 0 cwd={cwd}",
                             f"plugin-init ten 0 cwd={cwd}"], server.log()
    assert server.marker() == "tcpserver: sighup: 0/40"
    before = server.before(r"^tcpserver: sighup: ", 1)
    assert [line for line in before if line.startswith("plugin-init ")][3:] == [
        f"plugin-init five 1 cwd={cwd}", f"plugin-init two 1 cwd={cwd}",
        f"plugin-init ten 1 cwd={cwd}"], server.log()
    server.marker()
    assert [line.split()[1:3] for line in inits(server)][6:] == [
        ["five", "1"], ["two", "1"], ["ten", "1"]], server.log()
    # PLUGIN7 = the program's own object: count shows no init (PLUGIN7 has none)
    answer, _, status = talk(server, ["count", "ret 0"], 1)
    assert answer == ["inits=0 last=-1"] and status == 0
    assert not [line for line in server.lines() if "warning" in line], server.log()


def test_plugin_without_slash_found_by_the_loader(servers, plugins: Plugins) -> None:
    """``PLUGIN1=libm.so.6``: searched for by the dynamic loader."""
    name = ctypes.util.find_library("m")
    if not name or "/" in name:
        pytest.skip("no C math library known to the loader by name")
    server = start(servers, [plugins.cmd], plugin_env(PLUGIN1=name))
    answer, _, status = talk(server, ["say with libm"], 1)
    assert answer == ["said with libm"] and status == 0


def test_preloaded_object_is_the_one_called(servers, plugins: Plugins) -> None:
    """``PLUGIN1`` names the program's own object: the counter its init
    set in the parent is what the connection's call reads."""
    server = start(servers, [plugins.cmd],
                   plugin_env(PLUGIN1=plugins.cmd, PLUGIN1_init="init"))
    answer, _, _ = talk(server, ["count"], 1)
    assert answer == ["inits=1 last=0"], (answer, server.log())
    server.marker()
    answer, _, _ = talk(server, ["count"], 2)
    assert answer == ["inits=2 last=1"], (answer, server.log())
    # the init the connection's child inherited ran in the parent only
    assert [line.split()[1:3] for line in inits(server)] == [["cmd", "0"], ["cmd", "1"]]


def test_plugin_dir_and_relative_file_arguments(servers, plugins: Plugins, tmp_path) -> None:
    """``PLUGIN1_dir`` changes the server's directory; ``-x rules.cdb``
    and ``./cmd.so``, given relative to the start-up directory, still
    name the files there (made absolute before the chdir), not the
    decoys in the plugin's directory."""
    home = tmp_path / "home"
    plugdir = tmp_path / "plugdir"
    home.mkdir()
    plugdir.mkdir()
    assert ours_rules(str(home), b'127.0.0.1:allow,RULEVAR="home"\n:deny\n').code == 0
    assert ours_rules(str(plugdir), b':allow,RULEVAR="decoy"\n').code == 0
    shutil.copy(plugins.cmd, str(home))
    with open(plugdir / "cmd.so", "w") as handle:      # a decoy that would not load
        handle.write("decoy\n")
    env = plugin_env(PLUGIN1=plugins.five, PLUGIN1_dir=str(plugdir), PLUGIN1_init="init")
    server = start(servers, ["./cmd.so", "arg"], env, options=["-x", "test.cdb"],
                   prefix=in_dir(str(home)))
    real = os.path.realpath(str(plugdir))
    assert inits(server) == [f"plugin-init five 0 cwd={real}"], server.log()
    answer, _, status = talk(server, ["env", "ret 0"], 1)
    assert env_of(answer).get("RULEVAR") == "home", (answer, server.log())
    argv = lines_with(answer, "argv=")
    assert argv[1:] == ["arg"] and os.path.samefile(os.path.join(str(home), argv[0]),
                                                    str(home / "cmd.so")), argv
    assert status == 0
    # SIGHUP: chdir again, init(1); the rules are still the start-up directory's
    server.marker()
    assert inits(server)[1:] == [f"plugin-init five 1 cwd={real}"], server.log()
    answer, _, _ = talk(server, ["env"], 2)
    assert env_of(answer).get("RULEVAR") == "home", answer
    no_traceback(server.log())


def test_init_stdout_does_not_reach_clients(servers, plugins: Plugins) -> None:
    """What a ``PLUGINn_init`` left in C's ``stdout`` buffer belongs to
    the server, not to the connections: the child's flush after the call
    must not send the inherited bytes to every client."""
    server = start(servers, [plugins.cmd],
                   plugin_env(PLUGIN1=plugins.five, PLUGIN1_init="init_stdout"))
    for count in (1, 2):
        answer, _, status = talk(server, [f"say {count}"], count)
        assert answer == [f"said {count}"], answer
        assert status == 0


def test_plugin00_uses_plugin0_settings(servers, plugins: Plugins, tmp_path) -> None:
    """``PLUGIN00`` is n = 0: its directory and init are ``PLUGIN0_dir``
    and ``PLUGIN0_init``."""
    env = plugin_env(PLUGIN00=plugins.two, PLUGIN0_dir=str(tmp_path), PLUGIN0_init="init")
    server = start(servers, [plugins.cmd], env)
    assert inits(server) == [f"plugin-init two 0 cwd={os.path.realpath(str(tmp_path))}"], \
        server.log()


@pytest.mark.parametrize("how", ["./conc", "CONTROLDIR"])
def test_plugin_dir_and_relative_limit_file(servers, plugins: Plugins, tmp_path,
                                            how: str) -> None:
    """The ``-c`` file, ``./conc`` or ``conc`` in a relative
    ``$CONTROLDIR``, stays the start-up directory's after the chdir, at
    start-up and when SIGHUP reads it again."""
    home = tmp_path / "home"
    plugdir = tmp_path / "plugdir"
    for folder in (home / "ctl", plugdir / "ctl"):
        folder.mkdir(parents=True)
    mine = home / ("conc" if how == "./conc" else "ctl/conc")
    mine.write_text("3\n")
    for decoy in (plugdir / "conc", plugdir / "ctl" / "conc"):
        decoy.write_text("9\n")
    extra = {"CONTROLDIR": "ctl"} if how == "CONTROLDIR" else {}
    env = plugin_env(**extra, PLUGIN1=plugins.five, PLUGIN1_dir=str(plugdir))
    server = start(servers, [plugins.cmd], env,
                   options=["-c", "./conc" if how == "./conc" else "conc"],
                   prefix=in_dir(str(home)))
    assert server.marker() == "tcpserver: sighup: 0/3", server.log()
    mine.write_text("5\n")
    assert server.marker() == "tcpserver: sighup: 0/5", server.log()
    answer, _, status = talk(server, ["say limited"], 1)
    assert answer == ["said limited"] and status == 0
    assert not [line for line in server.lines() if "warning" in line], server.log()


def test_plugin_dir_failure(servers, plugins: Plugins, tmp_path) -> None:
    # start-up: fatal, 111
    missing = str(tmp_path / "nowhere")
    result = run_once(OURS, ["-1", *NOLOOKUP, "127.0.0.1", "0", plugins.cmd],
                      env=plugin_env(PLUGIN1=plugins.five, PLUGIN1_dir=missing))
    assert result.returncode == 111, result
    assert result.stdout == b""
    err = result.stderr.decode()
    assert re.search(rf"^tcpserver: fatal: chdir: {re.escape(missing)}: ", err, re.M), err
    no_traceback(err)
    # SIGHUP: a warning, the server goes on
    folder = tmp_path / "gone"
    folder.mkdir()
    server = start(servers, [plugins.cmd],
                   plugin_env(PLUGIN1=plugins.five, PLUGIN1_dir=str(folder),
                              PLUGIN1_init="init", PLUGIN2=plugins.two, PLUGIN2_init="init"))
    assert [line.split()[1:3] for line in inits(server)] == [["five", "0"], ["two", "0"]]
    folder.rmdir()
    assert server.marker() == "tcpserver: sighup: 0/40"
    warnings = [line for line in server.lines() if "unable to reload plugins" in line]
    assert len(warnings) == 1, server.log()
    assert re.match(rf"^tcpserver: warning: unable to reload plugins: chdir: "
                    rf"{re.escape(str(folder))}: ", warnings[0]), warnings
    # the failing entry stopped the round: no init(1) for it or the ones after it
    assert [line.split()[1:3] for line in inits(server)] == [["five", "0"], ["two", "0"]]
    assert server.running()
    answer, _, status = talk(server, ["say still here"], 1)
    assert answer == ["said still here"] and status == 0
    no_traceback(server.log())


# -- after the privilege drop ---------------------------------------------------------------------------
@pytest.fixture
def public_dir() -> Iterator[str]:
    """A world-readable folder (pytest's own tmp folders are 0700)."""
    folder = tempfile.mkdtemp(prefix="plugins-", dir="/tmp")
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_loaded_and_initialised_after_the_drop(servers, plugins: Plugins,
                                              public_dir: str) -> None:
    need_root()
    program = shutil.copy(plugins.cmd, public_dir)
    plugin = shutil.copy(plugins.five, public_dir)
    for path in (program, plugin):
        os.chmod(path, 0o755)
    server = start(servers, [program], plugin_env(PLUGIN1=plugin, PLUGIN1_init="init_ids"),
                   options=["-u", "65534", "-g", "65534"])
    ids = "uid=65534 euid=65534 gid=65534 egid=65534"
    assert [line for line in server.lines() if line.startswith("plugin-ids ")] == [
        f"plugin-ids five 0 {ids}"], server.log()
    server.marker()
    assert [line for line in server.lines() if line.startswith("plugin-ids ")][1:] == [
        f"plugin-ids five 1 {ids}"], server.log()
    answer, _, status = talk(server, ["say dropped"], 1)
    assert answer == ["said dropped"] and status == 0


@pytest.mark.parametrize("role", ["program", "plugin"])
def test_object_unreadable_after_the_drop(plugins: Plugins, role: str) -> None:
    """pytest's folders are root's, 0700: loaded after the drop, the
    object cannot be opened."""
    need_root()
    if role == "program":
        args, env, path = [plugins.cmd], plugin_env(), plugins.cmd
    else:
        args, env, path = [plugins.cmd], plugin_env(PLUGIN1=plugins.five), plugins.five
    _fatal(args, env, rf"^tcpserver: fatal: tcdlmopen: {re.escape(path)}: .",
           options=["-u", "65534", "-g", "65534"])


# -- load and symbol failures --------------------------------------------------------------------
def _fatal(args: List[str], env: Dict[str, str], pattern: str,
           options: Sequence[str] = ()) -> None:
    result = run_once(OURS, ["-1", *NOLOOKUP, *options, "127.0.0.1", "0", *args], env=env)
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 111, (result.returncode, err)
    assert result.stdout == b"", result.stdout        # no port: it never listened for real
    assert re.search(pattern, err, re.M), err
    no_traceback(err)


def test_program_without_its_function(plugins: Plugins) -> None:
    _fatal([plugins.nosuch], plugin_env(), r"^tcpserver: fatal: dlsym: nosuch: .")


def test_plugin_init_missing(plugins: Plugins) -> None:
    _fatal([plugins.cmd], plugin_env(PLUGIN1=plugins.five, PLUGIN1_init="no_such_init"),
           r"^tcpserver: fatal: dlsym: no_such_init: .")


@pytest.mark.parametrize("which", ["text", "missing"])
@pytest.mark.parametrize("role", ["program", "plugin"])
def test_unloadable_object(plugins: Plugins, which: str, role: str) -> None:
    path = getattr(plugins, which)
    if role == "program":
        args, env = [path], plugin_env()
    else:
        args, env = [plugins.cmd], plugin_env(PLUGIN4=path, PLUGIN4_init="init")
    _fatal(args, env, rf"^tcpserver: fatal: tcdlmopen: {re.escape(path)}: .")


# -- a plugin that crashes or blocks ----------------------------------------------------------------
#: a server prefix: no core files (in the working directory, the checkout's)
NO_CORE = ["sh", "-c", 'ulimit -c 0 && exec "$@"', "sh"]


def test_crash_kills_only_its_connection(servers, plugins: Plugins) -> None:
    server = start(servers, [plugins.cmd], plugin_env(), prefix=NO_CORE)
    for count, command in enumerate(["crash", "raise"], 1):
        answer, _, status = talk(server, ["say lost", command], count)
        assert answer == [], answer             # died: its stdio buffer never flushed
        assert status in SIGSEGV_STATUSES, (command, status, server.log())
    answer, _, status = talk(server, ["say alive", "ret 2"], 3)
    assert answer == ["said alive"] and status == 2 << 8
    assert server.running()
    no_zombie(server)
    assert server.marker() == "tcpserver: sighup: 0/40"


def _blocked(server: Server) -> socket.socket:
    """A connection whose plugin is blocked reading fd 0."""
    sock = server.connect()
    sock.sendall(b"block\n")
    assert read_some(sock, 10) == b"blocking\n"
    return sock


def test_blocking_plugin_does_not_block_the_server(servers, plugins: Plugins) -> None:
    server = start(servers, [plugins.cmd], plugin_env())
    with _blocked(server):
        pid = server.wait_pids(1)[0]
        answer, _, status = talk(server, ["say meanwhile", "ret 0"], 2)
        assert answer == ["said meanwhile"] and status == 0
        assert not [line for line in server.lines() if line.startswith(f"tcpserver: end {pid} ")]
    assert end_status(server, pid) == 0      # EOF on fd 0: the plugin returned 0
    no_zombie(server)


def test_limit_counts_plugin_children(servers, plugins: Plugins) -> None:
    server = start(servers, [plugins.cmd], plugin_env(), options=["-c", "1"])
    held = _blocked(server)
    try:
        with server.connect() as waiting:
            assert wait_until(lambda: server.queued() == 1), server.queued()
            assert server.marker() == "tcpserver: sighup: 1/1"
            assert server.queued() == 1
            waiting.sendall(b"say served\n")
            held.close()
            assert run_cmds(waiting, ["ret 0"]) == ["said served"]
    finally:
        held.close()
    assert end_status(server, server.wait_pids(2)[1]) == 0


# -- signals in the plugin's child ---------------------------------------------------------------------
def test_signals_default_in_plugin_child(servers, plugins: Plugins) -> None:
    server = start(servers, [plugins.cmd], plugin_env(PLUGIN1=plugins.cmd, PLUGIN1_init="init"))
    answer, _, status = talk(server, ["signals"], 1)
    assert answer == ["SIGHUP=dfl SIGUSR1=dfl SIGTERM=dfl SIGCHLD=dfl SIGPIPE=dfl SIGXFSZ=dfl "
                      "blocked="], answer
    # SIGHUP to the child kills it (no init, no -c reload inside the child)
    answer, pid, status = talk(server, ["hup"], 2)
    assert answer == [] and status == signal.SIGHUP, (answer, status)
    assert server.marker() == "tcpserver: sighup: 0/40"
    assert [line.split()[1:3] for line in inits(server)] == [["cmd", "0"], ["cmd", "1"]], \
        server.log()


# -- behind TLS --------------------------------------------------------------------------------------
def test_plugin_behind_tls(servers, plugins: Plugins, tmp_path) -> None:
    cert = openssl_cert(str(tmp_path))
    env = {k: v for k, v in plugin_env().items() if not TLS_VARIABLES.match(k)}
    server = start(servers, [plugins.cmd, "tls"], env, options=["-n", cert])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(server.connect(timeout=10)) as sock:
        version = sock.version()
        sock.sendall(b"env\nfds\nsay through the relay\nret 3\n")
        answer = read_tls(sock).decode("latin-1").splitlines()
    envp = env_of(answer)
    assert envp.get("SSL_PROTOCOL") == version, (answer, server.log())
    assert envp.get("TCPREMOTEIP") == "127.0.0.1"
    assert lines_with(answer, "argv=") == [plugins.cmd, "tls"]
    assert "said through the relay" in answer, answer
    assert "fds=0,1,2," in answer, answer
    assert end_status(server, server.wait_pids(1)[0]) == 3 << 8, server.log()
    assert relay_server_of(server.pid) is None     # the .so lives in the server
    no_zombie(server)
    no_traceback(server.log())


def test_plugins_keep_tls_relays_in_the_server(servers, plugins: Plugins, tmp_path) -> None:
    """With PLUGINn objects loaded (and perhaps a changed directory) the
    server forks its TLS relays itself, no relay server: a spawned
    program behind TLS still works."""
    cert = openssl_cert(str(tmp_path))
    env = {k: v for k, v in plugin_env(PLUGIN1=plugins.five).items()
           if not TLS_VARIABLES.match(k)}
    server = start(servers, ["cat"], env, options=["-n", cert])
    with tls_connect(server) as sock:
        sock.sendall(b"ping\n")
        assert read_exactly(sock, 5) == b"ping\n"
    assert relay_server_of(server.pid) is None, server.log()
    assert end_status(server, server.wait_pids(1)[0]) == 0, server.log()


def test_tls_files_made_absolute_for_plugin_dir(servers, plugins: Plugins, tmp_path) -> None:
    """``-n server.pem`` relative to the start-up directory: still found
    when SIGHUP rebuilds the contexts after the ``PLUGIN1_dir`` chdir."""
    home = tmp_path / "home"
    plugdir = tmp_path / "plugdir"
    home.mkdir()
    plugdir.mkdir()
    openssl_cert(str(home))
    env = {k: v for k, v in plugin_env(PLUGIN1=plugins.five, PLUGIN1_dir=str(plugdir)).items()
           if not TLS_VARIABLES.match(k)}
    server = start(servers, [plugins.cmd], env, options=["-n", "server.pem"],
                   prefix=in_dir(str(home)))
    server.marker()
    assert not [line for line in server.lines() if "warning" in line], server.log()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(server.connect(timeout=10)) as sock:
        sock.sendall(b"say tls after reload\nret 0\n")
        assert read_tls(sock) == b"said tls after reload\n"


# -- USE_DLMOPEN -------------------------------------------------------------------------------------------
def test_use_dlmopen_ignored_with_one_warning(servers, plugins: Plugins) -> None:
    pattern = r"^tcpserver: warning: USE_DLMOPEN is not supported: "
    server = start(servers, [plugins.cmd],
                   plugin_env(USE_DLMOPEN="1", PLUGIN1=plugins.cmd, PLUGIN1_init="init"))
    server.marker()
    answer, _, status = talk(server, ["count", "env"], 1)
    assert answer[0] == "inits=2 last=1", answer
    assert not [k for k in env_of(answer) if k.startswith("LMID")], answer
    assert status == 0
    assert len([line for line in server.lines() if re.search(pattern, line)]) == 1, server.log()
    assert not [line for line in server.lines() if "link map" in line], server.log()


# -- a bare x.so: PATH search and exec -----------------------------------------------------------------
def test_bare_so_name_is_execd_from_path(servers, plugins: Plugins, tmp_path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "hello.so"
    script.write_text('#!/bin/sh\necho "exec\'d $0 $1"\n')
    script.chmod(0o755)
    path = f"{bindir}:/usr/bin:/bin"
    server = start(servers, ["hello.so", "x"], plugin_env(PATH=path))
    assert server.talk() == f"exec'd {script} x\n".encode(), server.log()
    assert not [line for line in server.lines() if "warning" in line], server.log()


def test_bare_so_name_not_loaded(servers, plugins: Plugins, tmp_path) -> None:
    """``cmd.so`` without a slash is not the object in the current
    directory: the PATH search does not find it."""
    folder = str(tmp_path)
    shutil.copy(plugins.cmd, folder)
    server = start(servers, ["cmd.so"], plugin_env(PATH="/usr/bin:/bin"), prefix=in_dir(folder))
    assert server.wait_log(r"^tcpserver: warning: program not found: cmd\.so$")
    assert server.talk() == b""
    server.wait_log(r"^tcpserver: warning: dropping connection, unable to run cmd\.so: ")
    assert not [line for line in server.lines() if "tcdlmopen" in line or "dlsym" in line]
    assert server.running()
