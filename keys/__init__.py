"""Identities and trust: key pairs, key files, the signed key directory, the covenant CA.

Imports nothing else of ours (DESIGN.md). The public surface is re-exported here.
"""

from keys.directory import (
    Directory,
    DirectoryContents,
    DirectoryKey,
    GatewayEntry,
    Partner,
    Role,
)
from keys.errors import (
    BadSignatureError,
    CertificateError,
    DirectoryError,
    KeyFileError,
    KeysError,
    KeysReason,
    KeyStateError,
)
from keys.keypair import (
    Algorithm,
    Ed25519KeyPair,
    HybridKemKeyPair,
    KeyPair,
    KeyUse,
    TlsKeyPair,
    compute_kid,
    generate,
    hpke_public_key,
    verify_ed25519,
)
from keys.state import KeyState, check_signature_time, check_usable, key_state

__all__ = [
    "Algorithm",
    "BadSignatureError",
    "CertificateError",
    "Directory",
    "DirectoryContents",
    "DirectoryError",
    "DirectoryKey",
    "Ed25519KeyPair",
    "GatewayEntry",
    "HybridKemKeyPair",
    "KeyFileError",
    "KeyPair",
    "KeyState",
    "KeyStateError",
    "KeyUse",
    "KeysError",
    "KeysReason",
    "Partner",
    "Role",
    "TlsKeyPair",
    "check_signature_time",
    "check_usable",
    "compute_kid",
    "generate",
    "hpke_public_key",
    "key_state",
    "verify_ed25519",
]
