"""``clipcheck server``: a language server over standard input and output, for editors.

pygls is an optional extra (``pip install "clipcheck[lsp]"``): this package imports it only
when the server starts, so that the linter itself never does."""

from __future__ import annotations

import importlib.util
import sys

MISSING_EXTRA = 'clipcheck server needs the lsp extra: pip install "clipcheck[lsp]"\n'


def serve() -> None:
    """Run the language server on standard input and output until the client ends it; without
    pygls, say how to install it and exit 2 (a usage error, as the command line's)."""
    if importlib.util.find_spec("pygls") is None:
        sys.stderr.write(MISSING_EXTRA)
        raise SystemExit(2)
    from clipcheck.server.lsp import build

    build().start_io()
