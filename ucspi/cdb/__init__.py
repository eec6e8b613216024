"""djb's constant databases: ``format`` (hash and layout), ``read`` (a
reader that never trusts the file), ``make`` (a writer byte-identical to
cdbmake, and the atomic temp-fsync-rename build)."""
