"""The one native part of the package; everything else is in pyproject.toml.

``render_gateway.audit._batch_sha256`` hashes a batch's rows and their RFC 6962 tree in C with
OpenSSL's libcrypto (the one Python's hashlib links), so it needs a C compiler, the Python
headers and OpenSSL's (Debian: gcc, python3-dev, libssl-dev; ``make install`` installs the last
if it is missing). It is optional: where it cannot be built the package installs without it and
``render_gateway.audit.batch_sha256`` uses its pure-Python reference, which hashes the same.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "render_gateway.audit._batch_sha256",
            ["src/render_gateway/audit/_batch_sha256.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
