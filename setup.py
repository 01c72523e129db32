"""The optional C extensions; everything else about the package is in pyproject.toml.

`tokenpulse.schemas._sigcheck` (schemas/_sigcheck.c) checks the worker's
record signatures a slice at a time; `tokenpulse.streams._fetch`
(streams/_fetch.c) reads the records of its fetches. Optional: a machine
without a C compiler or OpenSSL's headers still installs,
schemas/signing.py checks in Python, aiokafka parses the records, and the
worker says so when it starts. Here rather than in
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
        ),
        Extension(
            "tokenpulse.streams._fetch",
            sources=["streams/_fetch.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
