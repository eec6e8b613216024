"""The manual pages: lint-clean, and tcpserver.1 complete and in step
with the code (every option letter, every variable, the refused
options, the defaults, the version)."""

from __future__ import annotations

import glob
import os
import re
import subprocess
from typing import List

import pytest

from tests.util import ROOT, need

MAN = os.path.join(ROOT, "man")
TCPSERVER_1 = os.path.join(MAN, "tcpserver.1")

#: every option letter of IndiMail's manual page, plus -e and -V
LETTERS = "qQvVecCxXmBguU146IboOdDhHpPlrRtTnsiaLfMNzSwyY"

SET_FOR_PROGRAM = """PROTO TCPLOCALIP TCPLOCALPORT TCPLOCALHOST TCPREMOTEIP TCPREMOTEPORT
TCPREMOTEHOST TCPREMOTEINFO TCP6LOCALIP TCP6LOCALPORT TCP6LOCALHOST TCP6REMOTEIP
TCP6REMOTEPORT TCP6REMOTEHOST TCP6REMOTEINFO TCP6INTERFACE TCPPARANOID TLS_PROVIDER
SSL_PROTOCOL SSL_CIPHER SSL_TLS_SNI_SERVERNAME SSL_CLIENT_VERIFY SSL_CLIENT_S_DN
SSL_CLIENT_I_DN SSL_CLIENT_M_SERIAL SSL_CLIENT_M_VERSION SSL_CLIENT_V_START SSL_CLIENT_V_END
SSL_CLIENT_CERT SSL_PEER_CERT_HASH""".split()
READ_BY_SERVER = "DNSCACHEIP LOCALDOMAIN DNSREWRITEFILE MAXPERIP CONTROLDIR UID GID PATH".split()
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT", "FILES",
            "SIGNALS", "LOG LINES", "EXIT STATUS", "DIFFERENCES", "EXAMPLES", "SEE ALSO"]


def pages() -> List[str]:
    return sorted(glob.glob(os.path.join(MAN, "*.1")))


def render(path: str) -> str:
    mandoc = need("mandoc")
    out = subprocess.run([mandoc, "-Tascii", path], capture_output=True, check=True,
                         timeout=30).stdout.decode()
    return re.sub(".\b", "", out)   # drop overstrike (bold, underline)


@pytest.fixture(scope="module")
def text() -> str:
    return render(TCPSERVER_1)


def section(text: str, name: str) -> str:
    match = re.search(r"^%s\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)" % re.escape(name), text, re.M | re.S)
    assert match, name
    return match.group(1)


@pytest.mark.parametrize("path", pages(), ids=os.path.basename)
def test_lint_clean(path: str) -> None:
    mandoc = need("mandoc")
    result = subprocess.run([mandoc, "-Tlint", "-W", "warning", path],
                            capture_output=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_sections_in_order(text: str) -> None:
    found = [line for line in text.splitlines() if line in SECTIONS]
    assert found == SECTIONS


@pytest.mark.parametrize("letter", LETTERS)
def test_every_option_has_an_entry(text: str, letter: str) -> None:
    assert re.search(r"^       -%s(\s|$)" % letter, section(text, "OPTIONS"), re.M), letter


def test_options_of_the_parser_are_documented(text: str) -> None:
    options = pytest.importorskip("ucspi.options")
    letters = set(options.WITH_ARG) | set(options.FLAGS)
    assert letters <= set(LETTERS)
    with_arg = set(re.findall(r"^       -(\w) \w", section(text, "OPTIONS"), re.M))
    assert with_arg == set(options.WITH_ARG)


def test_defaults_match_the_parser(text: str) -> None:
    options = pytest.importorskip("ucspi.options")
    flat = " ".join(section(text, "OPTIONS").split())
    defaults = options.Options()
    assert "programs at once (default %d)" % defaults.limit in flat
    assert "client address (default %d," % defaults.max_per_host in flat
    assert "accepted yet (default %d)" % defaults.backlog in flat
    assert "seconds in all (default %d)" % defaults.ident_timeout in flat


@pytest.mark.parametrize("name", SET_FOR_PROGRAM + READ_BY_SERVER)
def test_environment_documented(text: str, name: str) -> None:
    env = section(text, "ENVIRONMENT")
    assert re.search(r"^       (\S+, )*%s(,|\s)" % name, env, re.M), name


def test_differences_cover_the_decisions(text: str) -> None:
    flat = " ".join(section(text, "DIFFERENCES").split())
    for needle in ("posix_spawn", "deny 0", "-c 0", "-c 4x", "-C -1", "-b x",
                   "-V works", "SIGUSR1", "IPv6 addresses", "banner is always sent",
                   "SIGHUP never kills", "pause briefly", "accept names",
                   "root cannot be regained", "unless -6", "RFC 5952",
                   "blank lines are skipped", "CIDR", "byte-identical", "MAXPERIP",
                   "/etc/hosts", "DNSCACHEIP", "::1 then 127.0.0.1", "ERROR",
                   "empty TCPREMOTEINFO", "pid file is stale"):
        assert needle in flat, needle


def test_log_lines_are_djbs(text: str) -> None:
    flat = " ".join(section(text, "LOG LINES").split())
    for needle in ("status: n/limit", "pid pid from ip",
                   "ok pid localhost:localip:localport remotehost:remoteip:remoteinfo:remoteport",
                   "end pid status status", "end ip perIPlimit k", "sighup: n/limit"):
        assert needle in flat, needle


def test_version_matches_the_package() -> None:
    import ucspi
    with open(TCPSERVER_1) as f:
        first = f.readline()
    assert first.startswith(".TH TCPSERVER 1 ")
    assert '"ucspi-tcp-py %s"' % ucspi.__version__ in first


def test_see_also_pages_of_ours_exist(text: str) -> None:
    for page in ("tcprules", "tcprulescheck"):
        assert "%s(1)" % page in section(text, "SEE ALSO")
        if not os.path.exists(os.path.join(MAN, page + ".1")):
            pytest.skip("man/%s.1 is not written yet" % page)


@pytest.mark.parametrize("page", ["tcpserver", "tcprules", "tcprulescheck", "rblsmtpd",
                                  "tcpclient"])
def test_help_and_version_documented(page: str) -> None:
    """Issue 7, defect 9: every command answers --help and --version."""
    rendered = render(os.path.join(MAN, page + ".1"))
    synopsis = section(rendered, "SYNOPSIS")
    assert "%s --help | --version" % page in " ".join(synopsis.split())
    assert "--version" in section(rendered, "EXIT STATUS")


def test_numbers_and_python_version_documented(text: str) -> None:
    flat = " ".join(section(text, "DIFFERENCES").split())
    for needle in ("port above 65535", "modulo 65536", "4294967295", "counts as 2147483647",
                   "without a passwd entry"):
        assert needle in flat, needle
    assert "Python 3.9 or newer is needed" in " ".join(section(text, "DESCRIPTION").split())


def test_tcpclient_options_documented() -> None:
    """man/tcpclient.1 has an entry for every letter the parser takes,
    an argument where the parser wants one, and the C usage's defaults."""
    options = pytest.importorskip("ucspi.client.options")
    rendered = render(os.path.join(MAN, "tcpclient.1"))
    found = section(rendered, "OPTIONS")
    for letter in set(options.WITH_ARG) | set(options.FLAGS):
        assert re.search(r"^       -%s(\s|$)" % letter, found, re.M), letter
    assert set(re.findall(r"^       -(\w) \w", found, re.M)) == set(options.WITH_ARG)
    flat = " ".join(found.split())
    for needle in ("default 2+58", "default 26", "(Default.) Look up", "(Default.) Ask"):
        assert needle in flat, needle
