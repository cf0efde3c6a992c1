"""Authentication: API keys (random, stored as hashes) and verified JWTs, each giving a Principal.

``Authenticator`` reads the ``Authorization: Bearer …`` header and routes the token by its
shape: ``rk_…`` to the API key store, a three-part dotted token to the JWT verifier.
"""
