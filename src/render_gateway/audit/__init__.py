"""The cold path: content-addressed attestations in a verifiable Merkle log."""
