"""`python -m nim_operator`: the operator's command line, the same as `nim-operator`.

See nim_operator.cli: `--help` lists every setting; without a cluster to talk to it exits at
once with one line saying why.
"""

from __future__ import annotations

from nim_operator.cli import main

if __name__ == "__main__":
    main()
