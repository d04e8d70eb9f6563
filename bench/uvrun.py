"""Run a module on uvloop's event loop: ``python -m hwbp.bench.uvrun MODULE ARGS...``.

Bench P1 measures the arbiter on the default asyncio loop and on uvloop in the same run;
the arbiter has no option for it (it did not win), so this launcher installs uvloop's
loop policy and runs the module as ``python -m`` would.
"""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    import uvloop

    uvloop.install()
    module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
