"""Packaging: the zipapp, ``python3 -m ucspi``, a copied folder, the
console scripts of setup.cfg, pyproject.toml, tox.ini and .ci/run.

The zipapp is built once per module into a temporary folder and run in
isolated mode (``python3 -I``) from another folder, so nothing of the
checkout can leak in: what passes here works on a bare host.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import glob
import importlib
import importlib.util
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from tests.util import PYTHON, ROOT, missing

BUILD_PYZ = os.path.join(ROOT, "tools", "build_pyz.py")
SETUP_CFG = os.path.join(ROOT, "setup.cfg")
TIMEOUT = 20


def have(module: str) -> bool:
    """Whether ``module`` exists in the checkout (others may still be
    writing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def need_module(module: str) -> None:
    if not have(module):
        pytest.skip(f"{module} is not written yet")


def run(argv: List[str], cwd: Optional[str] = None,
        env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=TIMEOUT)


def build_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_pyz", BUILD_PYZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tcpserver.pyz built with the documented command."""
    folder = tmp_path_factory.mktemp("pyz")
    out = str(folder / "tcpserver.pyz")
    result = run([PYTHON, BUILD_PYZ, "-o", out], cwd=str(folder))
    assert result.returncode == 0, result.stderr
    assert b"wrote" in result.stdout
    return out


@pytest.fixture
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty working folder far from the checkout."""
    return str(tmp_path_factory.mktemp("cwd"))


# -- the archive itself ----------------------------------------------------

def test_pyz_is_an_executable_zipapp(pyz: str) -> None:
    with open(pyz, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert os.stat(pyz).st_mode & 0o111 == 0o111
    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
    assert names[0] == "__main__.py"
    assert "ucspi/__init__.py" in names and "ucspi/__main__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert all(n == "__main__.py" or n.startswith("ucspi/") for n in names)


def test_pyz_holds_every_module_of_the_package(pyz: str) -> None:
    on_disk = sorted(
        os.path.relpath(os.path.join(folder, n), ROOT).replace(os.sep, "/")
        for folder, _, names in os.walk(os.path.join(ROOT, "ucspi"))
        if "__pycache__" not in folder
        for n in names if n.endswith(".py")
    )
    with zipfile.ZipFile(pyz) as archive:
        stored = sorted(n for n in archive.namelist() if n.startswith("ucspi/"))
        assert [n for n in stored if n.endswith(".py")] == on_disk
        for name in on_disk:
            with open(os.path.join(ROOT, name), "rb") as f:
                assert archive.read(name) == f.read(), name


def test_build_is_reproducible(pyz: str, tmp_path: Path) -> None:
    again = os.path.join(str(tmp_path), "again.pyz")
    tool = build_tool()
    count = tool.build(again)
    with zipfile.ZipFile(again) as archive:
        assert count == len(archive.namelist())
    with open(pyz, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_build_replaces_output_and_leaves_no_temp_file(tmp_path: Path) -> None:
    out = os.path.join(str(tmp_path), "x.pyz")
    with open(out, "w") as f:
        f.write("old")
    assert build_tool().main(["-o", out]) == 0
    assert zipfile.is_zipfile(out)
    assert os.listdir(str(tmp_path)) == ["x.pyz"]


def test_build_error_is_one_line_and_exit_111(tmp_path: Path) -> None:
    out = os.path.join(str(tmp_path), "missing", "x.pyz")
    result = run([PYTHON, BUILD_PYZ, "-o", out])
    assert result.returncode == 111
    assert result.stderr.startswith(b"build_pyz: fatal: unable to build ")
    assert result.stderr.count(b"\n") == 1


def test_build_without_package_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_tool().build(os.path.join(str(tmp_path), "x.pyz"), root=str(tmp_path))
    assert os.listdir(str(tmp_path)) == []


# -- running it --------------------------------------------------------------

def test_pyz_without_arguments_prints_usage(pyz: str, elsewhere: str) -> None:
    need_module("ucspi.server")
    result = run([PYTHON, "-I", pyz], cwd=elsewhere)
    assert result.returncode == 100
    assert result.stderr.startswith(b"tcpserver: usage: tcpserver [ ")
    assert b"Traceback" not in result.stderr


def test_pyz_runs_through_its_shebang(pyz: str, elsewhere: str) -> None:
    need_module("ucspi.server")
    here = os.path.dirname(PYTHON)
    if not os.access(os.path.join(here, "python3"), os.X_OK):
        pytest.skip(f"no python3 beside {PYTHON}")
    env = dict(os.environ, PATH=here + os.pathsep + os.environ.get("PATH", ""))
    result = run([pyz], cwd=elsewhere, env=env)
    assert result.returncode == 100
    assert result.stderr.startswith(b"tcpserver: usage: tcpserver [ ")


def _read_port(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert ready, "tcpserver did not print its port"
    line = proc.stdout.readline()
    assert line.endswith(b"\n"), (line, proc.poll())
    return int(line)


def _receive_all(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        chunks = []
        while True:
            data = conn.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


@contextlib.contextmanager
def serving(argv: List[str], cwd: str) -> Iterator[Tuple[int, subprocess.Popen[bytes]]]:
    """Start a server with ``-1`` in argv; yield (its port, the process);
    SIGTERM it at the end."""
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield _read_port(proc), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_pyz_serves_a_connection(pyz: str, elsewhere: str) -> None:
    need_module("ucspi.server")
    argv = [PYTHON, "-I", pyz, "-1", "-HRl0", "-B", "hi ", "127.0.0.1", "0",
            "/bin/sh", "-c", 'echo "$PROTO $TCPLOCALIP $TCPREMOTEIP"']
    with serving(argv, elsewhere) as (port, proc):
        assert _receive_all(port) == b"hi TCP 127.0.0.1 127.0.0.1\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0


TOOL_MODULES = {"tcprules": "ucspi.tools.tcprules", "tcprulescheck": "ucspi.tools.tcprulescheck",
                "rblsmtpd": "ucspi.tools.rblsmtpd", "tcpclient": "ucspi.client",
                "tcp-env": "ucspi.server.tcpenv"}


@pytest.mark.parametrize("name", sorted(TOOL_MODULES))
def test_pyz_symlink_runs_the_rules_tool(pyz: str, elsewhere: str, name: str) -> None:
    """A symlink named after one of the tools (tcprules, tcprulescheck,
    tcpclient, tcp-env, rblsmtpd) runs that tool (usage: 100)."""
    need_module(TOOL_MODULES[name])
    link = os.path.join(elsewhere, name)
    os.symlink(pyz, link)
    result = run([PYTHON, "-I", link], cwd=elsewhere)
    assert result.returncode == 100, result.stderr
    assert result.stderr.startswith(name.encode() + b": usage: " + name.encode()), result.stderr


def test_rblsmtpd_runs_every_way(pyz: str, elsewhere: str) -> None:
    """rblsmtpd from the zipapp (a symlink), the checkout and as the
    console script would start it: refuses, or runs the program."""
    need_module("ucspi.tools.rblsmtpd")
    os.symlink(pyz, os.path.join(elsewhere, "rblsmtpd"))
    script = ("import sys; sys.argv[0] = '/usr/bin/rblsmtpd'; sys.path.insert(0, %r); "
              "from ucspi.tools.rblsmtpd import main; sys.exit(main())" % ROOT)
    for argv in ([PYTHON, "-I", "rblsmtpd"], [PYTHON, "-I", os.path.join(ROOT, "rblsmtpd.py")],
                 [PYTHON, "-I", "-c", script]):
        env = dict(os.environ, RBLSMTPD="-go away", TCPREMOTEIP="192.0.2.1")
        refused = run([*argv, "-t0", "true"], cwd=elsewhere, env=env)
        assert (refused.returncode, refused.stdout) == (0, b"553 go away\r\n"), argv
        assert refused.stderr.startswith(b"rblsmtpd: 192.0.2.1 pid "), argv
        env["RBLSMTPD"] = ""
        let_in = run([*argv, "/bin/echo", "in"], cwd=elsewhere, env=env)
        assert (let_in.returncode, let_in.stdout, let_in.stderr) == (0, b"in\n", b""), argv


def test_pyz_tcpclient_connects(pyz: str, elsewhere: str) -> None:
    """The archive as tcpclient: the program gets the connection on 6
    and 7 and its variables; client mode without a program."""
    need_module("ucspi.client")
    os.symlink(pyz, os.path.join(elsewhere, "tcpclient"))
    argv = [PYTHON, "-I", pyz, "-1", "-HRl0", "127.0.0.1", "0", "/bin/sh", "-c", "echo hi; cat"]
    with serving(argv, elsewhere) as (port, _):
        prog = 'read x <&6; echo "$x $PROTO $TCPREMOTEPORT"'
        out = run([PYTHON, "-I", "tcpclient", "-HRl0", "127.0.0.1", str(port), "/bin/sh", "-c",
                   prog], cwd=elsewhere)
        assert (out.returncode, out.stdout) == (0, b"hi TCP %d\n" % port), out.stderr
        client = subprocess.run([PYTHON, "-I", "tcpclient", "-HRl0", "127.0.0.1", str(port)],
                                cwd=elsewhere, input=b"back\n", capture_output=True,
                                timeout=TIMEOUT)
        assert (client.returncode, client.stdout) == (0, b"hi\nback\n"), client.stderr


def test_pyz_rules_workflow(pyz: str, elsewhere: str) -> None:
    """rules text -> tcprules (symlink) -> tcprulescheck (symlink)."""
    need_module("ucspi.tools.tcprules")
    need_module("ucspi.tools.tcprulescheck")
    for name in ("tcprules", "tcprulescheck"):
        os.symlink(pyz, os.path.join(elsewhere, name))
    rules = b"127.0.0.1:allow,WHO=\"me\"\n:deny\n"
    made = subprocess.run([PYTHON, "-I", "tcprules", "r.cdb", "r.tmp"], cwd=elsewhere,
                          input=rules, capture_output=True, timeout=TIMEOUT)
    assert made.returncode == 0, made.stderr
    env = dict(os.environ, TCPREMOTEIP="127.0.0.1")
    check = run([PYTHON, "-I", "tcprulescheck", "r.cdb"], cwd=elsewhere, env=env)
    assert check.stdout == (b"rule 127.0.0.1:\nset environment variable WHO=me\n"
                            b"allow connection\n"), check.stderr


def test_python_dash_m_ucspi(elsewhere: str) -> None:
    need_module("ucspi.server")
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = run([PYTHON, "-m", "ucspi"], cwd=elsewhere, env=env)
    assert result.returncode == 100
    assert result.stderr.startswith(b"tcpserver: usage: tcpserver [ ")


def test_copied_folder_runs_on_its_own(tmp_path: Path) -> None:
    """README: copy tcpserver.py and ucspi/ to a bare host."""
    need_module("ucspi.server")
    target = os.path.join(str(tmp_path), "opt-ucspi")
    shutil.copytree(os.path.join(ROOT, "ucspi"), os.path.join(target, "ucspi"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "tcpserver.py"), target)
    shutil.copy(os.path.join(ROOT, "tcpclient.py"), target)
    argv = [PYTHON, "-I", os.path.join(target, "tcpserver.py"), "-1", "-HRl0",
            "127.0.0.1", "0", "/bin/echo", "hello"]
    with serving(argv, str(tmp_path)) as (port, proc):
        assert _receive_all(port) == b"hello\n"
        client = run([PYTHON, "-I", os.path.join(target, "tcpclient.py"), "-HRl0",
                      "127.0.0.1", str(port)], cwd=str(tmp_path))
        assert (client.returncode, client.stdout) == (0, b"hello\n"), client.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0


# -- setup.cfg, pyproject.toml, tox.ini, .ci/run ---------------------------

def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    assert cfg.read(SETUP_CFG) == [SETUP_CFG]
    return cfg


def _console_scripts() -> List[Tuple[str, str]]:
    text = _setup_cfg()["options.entry_points"]["console_scripts"]
    pairs = []
    for line in text.strip().splitlines():
        name, _, target = line.partition("=")
        pairs.append((name.strip(), target.strip()))
    return pairs


def test_console_scripts_are_the_commands() -> None:
    assert _console_scripts() == [
        ("tcpserver", "ucspi.server:main"),
        ("tcprules", "ucspi.tools.tcprules:main"),
        ("tcprulescheck", "ucspi.tools.tcprulescheck:main"),
        ("tcp-env", "ucspi.server.tcpenv:main"),
        ("rblsmtpd", "ucspi.tools.rblsmtpd:main"),
        ("tcpclient", "ucspi.client:main"),
    ]


@pytest.mark.parametrize("name,target", _console_scripts())
def test_console_script_points_at_a_function(name: str, target: str) -> None:
    module_name, _, function = target.partition(":")
    need_module(module_name)
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function)), target


def test_setup_cfg_metadata() -> None:
    cfg = _setup_cfg()
    options = cfg["options"]
    assert options["python_requires"].strip() == ">=3.9"
    assert "install_requires" not in options
    assert cfg["metadata"]["version"].strip() == "attr: ucspi.__version__"
    assert cfg["mypy"]["python_version"] == "3.9"
    assert cfg["mypy"]["strict"] == "True"
    import ucspi
    assert ucspi.__version__.count(".") == 2


def test_pyproject_is_build_system_only() -> None:
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    tables = [line.strip() for line in text.splitlines() if line.startswith("[")]
    assert tables == ["[build-system]"]
    assert 'build-backend = "setuptools.build_meta"' in text
    if sys.version_info >= (3, 11):
        import tomllib
        data = tomllib.loads(text)
        assert list(data) == ["build-system"]
        assert data["build-system"]["requires"][0].startswith("setuptools")


def _third_party_imports(path: str) -> List[str]:
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"ucspi", "__future__"}  # type: ignore[attr-defined]
    return sorted(set(n for n in names if n not in allowed))


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is 3.10+")
def test_runtime_code_imports_the_standard_library_only() -> None:
    """No install_requires is honest: design: standard-library-only."""
    paths = [os.path.join(ROOT, n)
             for n in ("tcpserver.py", "tcprules.py", "tcprulescheck.py", "rblsmtpd.py",
                       "tcpclient.py")]
    for folder, _, files in os.walk(os.path.join(ROOT, "ucspi")):
        paths += [os.path.join(folder, n) for n in files if n.endswith(".py")]
    for path in paths:
        if os.path.exists(path):
            assert _third_party_imports(path) == [], path


def test_tox_envs() -> None:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(os.path.join(ROOT, "tox.ini"))
    envs = [e.strip() for e in cfg["tox"]["env_list"].split(",")]
    assert envs == ["py39", "py310", "py311", "py312", "py313", "mypy", "manlint"]
    assert "UCSPI_*" in cfg["testenv"]["passenv"].split()
    assert "mandoc -Tlint -W warning man/*.1" in cfg["testenv:manlint"]["commands"]
    assert "mypy --strict" in cfg["testenv:mypy"]["commands"]


def test_ci_script() -> None:
    path = os.path.join(ROOT, ".ci", "run")
    assert os.access(path, os.X_OK)
    with open(path) as f:
        text = f.read()
    assert "set -euo pipefail" in text
    assert "UCSPI_REQUIRE_ALL=1" in text
    assert "--skip-missing-interpreters false" in text
    for package in ("ucspi-tcp", "dnsmasq-base", "oidentd", "mandoc", "tinycdb"):
        assert package in text
    bash = shutil.which("bash")
    assert bash is not None
    assert run([bash, "-n", path]).returncode == 0


def test_readme_commands_name_real_files() -> None:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    for needle in ("python3 tcpserver.py", "bash .ci/run", "python3 -m pytest",
                   "python3 tools/build_pyz.py", "python3 tcprules.py", "tox"):
        assert needle in readme, needle
    for path in ("tcpserver.py", "tools/build_pyz.py", ".ci/run", "INSTALL",
                 "man/tcpserver.1", "tox.ini", "setup.cfg"):
        assert os.path.exists(os.path.join(ROOT, path)), path


def test_readme_rules_example_compiles() -> None:
    """The rules file shown in README.md is valid tcprules input."""
    need_module("ucspi.rules.parse")
    from ucspi.rules.parse import parse_line
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    block = readme.split("# /etc/ucspi/rules\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line]
    assert len(lines) >= 5
    for line in lines:
        assert parse_line(line.encode()), line


# -- issue 7, defect 8: old interpreters -------------------------------------------------
OLD_PYTHONS = ["3.6", "3.7", "3.8"]


def old_python(minor: str) -> str:
    """An interpreter of an unsupported version: pyenv's, else one on
    PATH; skip (fail under UCSPI_REQUIRE_ALL=1) if there is none."""
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv"), "/root/.pyenv"]
    for root in roots:
        if not root:
            continue
        found = sorted(glob.glob(os.path.join(root, "versions", minor + ".*", "bin",
                                              "python" + minor)))
        for path in reversed(found):
            if os.access(path, os.X_OK):
                return path
    on_path = shutil.which("python" + minor)
    if on_path:
        return on_path
    missing(f"Python {minor} (pyenv or PATH)")


def _version_of(python: str) -> str:
    out = run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
    return out.stdout.decode().strip()


def _entries(pyz: str, folder: str) -> Dict[str, Tuple[str, List[str], Optional[Dict[str, str]]]]:
    """Every way to start a command: name -> (command, argv after the
    interpreter, environment)."""
    os.symlink(pyz, os.path.join(folder, "tcprules"))
    os.symlink(pyz, os.path.join(folder, "tcprulescheck"))
    os.symlink(pyz, os.path.join(folder, "tcp-env"))
    os.symlink(pyz, os.path.join(folder, "rblsmtpd"))
    os.symlink(pyz, os.path.join(folder, "tcpclient"))
    with_root = dict(os.environ, PYTHONPATH=ROOT)
    script = ("import sys; sys.argv[0] = '/usr/bin/{0}'; sys.path.insert(0, {1!r}); "
              "from {2} import main; sys.exit(main())")
    return {
        "tcpserver.py": ("tcpserver", [os.path.join(ROOT, "tcpserver.py")], None),
        "tcprules.py": ("tcprules", [os.path.join(ROOT, "tcprules.py")], None),
        "tcprulescheck.py": ("tcprulescheck", [os.path.join(ROOT, "tcprulescheck.py")], None),
        "tcp-env.py": ("tcp-env", [os.path.join(ROOT, "tcp-env.py")], None),
        "rblsmtpd.py": ("rblsmtpd", [os.path.join(ROOT, "rblsmtpd.py")], None),
        "tcpclient.py": ("tcpclient", [os.path.join(ROOT, "tcpclient.py")], None),
        "-m ucspi": ("tcpserver", ["-m", "ucspi"], with_root),
        "pyz": ("tcpserver", [pyz], None),
        "pyz as tcprules": ("tcprules", [os.path.join(folder, "tcprules")], None),
        "pyz as tcprulescheck": ("tcprulescheck", [os.path.join(folder, "tcprulescheck")], None),
        "pyz as tcp-env": ("tcp-env", [os.path.join(folder, "tcp-env")], None),
        "pyz as rblsmtpd": ("rblsmtpd", [os.path.join(folder, "rblsmtpd")], None),
        "pyz as tcpclient": ("tcpclient", [os.path.join(folder, "tcpclient")], None),
        "console script tcpserver": (
            "tcpserver", ["-c", script.format("tcpserver", ROOT, "ucspi.server")], None),
        "console script tcprules": (
            "tcprules", ["-c", script.format("tcprules", ROOT, "ucspi.tools.tcprules")], None),
        "console script tcprulescheck": (
            "tcprulescheck",
            ["-c", script.format("tcprulescheck", ROOT, "ucspi.tools.tcprulescheck")], None),
        "console script tcp-env": (
            "tcp-env", ["-c", script.format("tcp-env", ROOT, "ucspi.server.tcpenv")], None),
        "console script rblsmtpd": (
            "rblsmtpd", ["-c", script.format("rblsmtpd", ROOT, "ucspi.tools.rblsmtpd")], None),
        "console script tcpclient": (
            "tcpclient", ["-c", script.format("tcpclient", ROOT, "ucspi.client")], None),
    }


@pytest.mark.parametrize("minor", OLD_PYTHONS)
def test_old_python_gets_one_line_and_111(pyz: str, elsewhere: str, minor: str) -> None:
    """design: help-and-version: every command checks the interpreter before anything else:
    one line, exit 111, nothing bound or printed on standard output (the
    arguments would start a server on a supported Python)."""
    python = old_python(minor)
    version = _version_of(python)
    assert version.startswith(minor + ".")
    for what, (command, argv, env) in _entries(pyz, elsewhere).items():
        args = {"tcpserver": ["-1", "127.0.0.1", "0", "true"],
                "tcpclient": ["-HR", "-l0", "127.0.0.1", "1", "true"]}.get(
                    command, ["r.cdb", "r.tmp"])
        result = run([python, *argv, *args], cwd=elsewhere, env=env)
        assert (result.returncode, result.stderr.decode(), result.stdout) == (
            111, f"{command}: fatal: Python 3.9 or newer is needed (this is {version})\n", b""
        ), what


def test_first_files_read_parse_on_python_3_6() -> None:
    """What an old interpreter reads before the check: the entry scripts,
    ``ucspi/__init__.py`` and the zipapp's ``__main__.py``."""
    sources = {}
    for name in ("tcpserver.py", "tcprules.py", "tcprulescheck.py", "rblsmtpd.py",
                 "tcpclient.py", "ucspi/__init__.py"):
        with open(os.path.join(ROOT, name), "rb") as f:
            sources[name] = f.read()
    sources["zipapp __main__.py"] = build_tool().MAIN.encode()
    for name, source in sources.items():
        tree = ast.parse(source, name, feature_version=(3, 6))
        for node in ast.walk(tree):
            # 3.6 parses these, but they would be evaluated or imported
            assert not isinstance(node, ast.ImportFrom) or node.module != "__future__", name
            assert not isinstance(node, (ast.AnnAssign, ast.JoinedStr)), name
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.returns is None and not any(
                    a.annotation for a in node.args.args), name


def test_check_python_in_process(capfd: pytest.CaptureFixture[str]) -> None:
    import ucspi
    ucspi.check_python((3, 9, 0), "x")                 # new enough: nothing
    with pytest.raises(SystemExit) as info:
        ucspi.check_python((3, 8, 18, "final", 0), "/usr/local/bin/tcprulescheck")
    assert info.value.code == 111
    assert capfd.readouterr().err == \
        "tcprulescheck: fatal: Python 3.9 or newer is needed (this is 3.8.18)\n"
