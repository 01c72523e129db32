"""The optional C extension; everything else about the package is in pyproject.toml.

`tokenpulse.schemas._sigcheck` (schemas/_sigcheck.c) checks the worker's
record signatures a slice at a time. Optional: a machine without a C
compiler or OpenSSL's headers still installs, schemas/signing.py checks in
Python, and the worker says so when it starts. Here rather than in
pyproject.toml because setuptools calls its `ext-modules` table experimental.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tokenpulse.schemas._sigcheck",
            sources=["schemas/_sigcheck.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
