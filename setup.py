"""The optional C extension of amplink (everything else is declared in pyproject.toml).

``amplink._speedups`` is the compiled fast path of the split rings and the rpmsg
backend. It is optional: without a working C compiler the build goes on without it and
amplink runs its pure-Python path (as it does with ``AMPLINK_PURE_PYTHON=1``).
"""

from setuptools import Extension, setup

CSRC = "src/amplink/csrc"

setup(
    ext_modules=[
        Extension(
            "amplink._speedups",
            sources=[f"{CSRC}/module.c", f"{CSRC}/ring.c", f"{CSRC}/rpmsg.c"],
            depends=[f"{CSRC}/speedups.h"],
            optional=True,
        )
    ]
)
