"""djb's getopt, the one option scanner of every command.

``tcpserver``, ``tcpclient``, ``tcp-env`` and ``rblsmtpd`` read their
options the way djb's (and qmail's) getopt does: letters grouped after
one ``-``, a letter that takes an argument takes the rest of its word
or the next word, ``--`` ends the options, and so do a word that does
not start with ``-`` and a lone ``-``.  The commands differ only in
their letters, in what they do about ``--help`` and ``--version``, and
in how they report a bad letter, so those are parameters.

Pure and dependency-free.
"""

from typing import Callable, Container, Iterator, List, Mapping, Optional, Tuple


class Getopt:
    """Iterate for ``(letter, argument or None)``, in order; afterwards
    :attr:`rest` holds the words after the options.

    Args:
        argv: the words after the program name.
        with_arg: the letters that take an argument.
        flags: the letters that take none.
        requests: words (``--help``, ``--version``) that raise the
            exception they map to, where an option may stand.
        error: makes the exception raised for an unknown letter or a
            missing argument from the C text (``illegal option -- X``,
            ``option requires an argument -- X``).  It is raised when
            the scan reaches that letter: a command that acts on each
            option as it comes acts on the ones before first, as the C
            programs do.
    """

    def __init__(self, argv: List[str], with_arg: Container[str], flags: Container[str],
                 requests: Optional[Mapping[str, Exception]] = None,
                 error: Callable[[str], Exception] = ValueError) -> None:
        self.argv = argv
        self.with_arg = with_arg
        self.flags = flags
        self.requests = requests or {}
        self.error = error
        self.rest: List[str] = []

    def __iter__(self) -> Iterator[Tuple[str, Optional[str]]]:
        argv = self.argv
        i = 0
        while i < len(argv):
            word = argv[i]
            if word == "--":
                i += 1
                break
            if word in self.requests:
                raise self.requests[word]
            if not word.startswith("-") or word == "-":
                break
            j = 1
            while j < len(word):
                letter = word[j]
                if letter in self.with_arg:
                    if j + 1 < len(word):
                        arg = word[j + 1:]
                    elif i + 1 < len(argv):
                        i += 1
                        arg = argv[i]
                    else:
                        raise self.error(f"option requires an argument -- {letter}")
                    yield letter, arg
                    break
                if letter not in self.flags:
                    raise self.error(f"illegal option -- {letter}")
                yield letter, None
                j += 1
            i += 1
        self.rest = argv[i:]

    def all(self) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
        """``(options, rest)`` at once."""
        opts = list(self)
        return opts, self.rest


#: ``(group, ((option, what it does), ...))``, for :func:`help_text`
OptionGroups = Tuple[Tuple[str, Tuple[Tuple[str, str], ...]], ...]


def help_text(usage: str, groups: OptionGroups, notes: List[str]) -> str:
    """A command's ``--help``: its usage line, then one line per option
    under its group's title (the option column as wide as the widest),
    then ``notes``."""
    width = max(len(option) for _, options in groups for option, _ in options)
    lines = [usage.rstrip("\n"), ""]
    for group, options in groups:
        lines.append(group + ":")
        lines += [f"  {option:<{width}}  {text}" for option, text in options]
    return "\n".join(lines + [""] + notes) + "\n"
