"""The studio's signing identity: the key and certificate chain its C2PA manifests are signed with.

Either the operator's own certificate (settings `signing_cert` + `signing_key`: a PEM chain, leaf
first, and its PEM private key) or one the studio makes at first start under DATA_DIR/signing/:

    ca.pem      a certificate authority of this studio alone (its private key is never written:
                it signs the leaf once and is thrown away, so nothing can issue a second leaf)
    chain.pem   the signing leaf, then the CA (what a manifest carries)
    key.pem     the leaf's private key, PKCS#8, mode 0600 in a 0700 folder

Algorithm: ES256 (ECDSA on P-256 with SHA-256). C2PA allows ES256/384/512, PS256/384/512 and
Ed25519; ES256 is the one every C2PA validator and trust list accepts, its signatures and
certificates are small (smaller than RSA-PS256's, which matters when the image itself is a small
digit) and signing is cheap.
A bare self-signed leaf is refused by c2pa ("the certificate is invalid"), hence the CA + leaf
with SubjectKeyIdentifier / AuthorityKeyIdentifier and the emailProtection usage C2PA asks for.
Readers elsewhere report such a chain as valid but untrusted (it is on no public trust list);
this studio's own verifier trusts its CA, so it can say "signed by this studio".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from generators.base import InvalidOptionsError

log = logging.getLogger(__name__)

SIGNING_DIR = "signing"
KEY_FILE, CHAIN_FILE, CA_FILE = "key.pem", "chain.pem", "ca.pem"
ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
VALID_YEARS = 10


@dataclass(frozen=True)
class SigningIdentity:
    """PEM texts and what a person needs to recognise them."""

    alg: str
    chain_pem: bytes  # leaf first, then its issuers
    key_pem: bytes
    anchor_pem: bytes  # the last certificate of the chain: what this studio's verifier trusts
    subject: str  # the leaf's common name
    issuer: str  # the leaf issuer's organization or common name
    fingerprint: str  # sha256 of the leaf (DER), hex
    source: str  # "studio" (made here) or "operator" (from the settings)
    not_after: str
    serial: str = ""  # the leaf's serial number, decimal (as C2PA readers report it)


def load_or_create(data_dir: Path, cert: Path | None = None, key: Path | None = None, alg: str = "es256",
                   name: str = "AIGC Studio") -> SigningIdentity:
    """The operator's certificate when both paths are set, else the studio's own (made on first use)."""
    if (cert is None) != (key is None):
        raise InvalidOptionsError("Set both signing_cert and signing_key (a PEM certificate chain and its private key), "
                                  "or neither to let the studio sign with its own identity.")
    if cert is not None and key is not None:
        return _operator(cert, key, alg)
    folder = Path(data_dir) / SIGNING_DIR
    if not (folder / KEY_FILE).is_file() or not (folder / CHAIN_FILE).is_file():
        _create(folder, name)
    return _identity((folder / CHAIN_FILE).read_bytes(), (folder / KEY_FILE).read_bytes(), "es256", "studio")


def _operator(cert: Path, key: Path, alg: str) -> SigningIdentity:
    if alg not in ALGORITHMS:
        raise InvalidOptionsError(f"signing_alg must be one of {', '.join(ALGORITHMS)}; got {alg!r}.")
    try:
        chain, key_pem = Path(cert).read_bytes(), Path(key).read_bytes()
    except OSError as exc:
        raise InvalidOptionsError(f"Cannot read the signing certificate or key: {exc.strerror} ({exc.filename}).") from None
    return _identity(chain, key_pem, alg, "operator")


def _identity(chain: bytes, key_pem: bytes, alg: str, source: str) -> SigningIdentity:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    try:
        certs = x509.load_pem_x509_certificates(chain)
        serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise InvalidOptionsError(f"The signing certificate or key is not valid PEM ({exc}); the certificate file "
                                  "holds the chain leaf first, the key file an unencrypted private key.") from None
    leaf = certs[0]

    def attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
        found = name.get_attributes_for_oid(oid)
        return str(found[0].value) if found else ""

    return SigningIdentity(
        alg=alg, chain_pem=chain, key_pem=key_pem,
        anchor_pem=certs[-1].public_bytes(serialization.Encoding.PEM),
        subject=attr(leaf.subject, NameOID.COMMON_NAME) or leaf.subject.rfc4514_string(),
        issuer=attr(leaf.issuer, NameOID.ORGANIZATION_NAME) or attr(leaf.issuer, NameOID.COMMON_NAME),
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        source=source, not_after=leaf.not_valid_after_utc.date().isoformat(), serial=str(leaf.serial_number))


def _create(folder: Path, name: str) -> None:
    """A CA + ES256 leaf; the folder appears complete (written aside, then renamed) or not at all."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    tag = os.urandom(4).hex()  # tells two studios' identities apart in a verifier's "signed by"

    def subject(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])

    def usage(**on: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                               "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
        return x509.KeyUsage(**{**flags, **on})

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    valid = dict(not_valid_before=now - dt.timedelta(minutes=5), not_valid_after=now + dt.timedelta(days=365 * VALID_YEARS))
    ca = (x509.CertificateBuilder(subject_name=subject(f"{name} signing CA {tag}"),
                                  issuer_name=subject(f"{name} signing CA {tag}"), public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder(subject_name=subject(f"{name} {tag}"), issuer_name=ca.subject,
                                    public_key=leaf_key.public_key(), serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {
        KEY_FILE: leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        CHAIN_FILE: leaf.public_bytes(pem) + ca.public_bytes(pem),
        CA_FILE: ca.public_bytes(pem),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{tag}.tmp")
    staging.mkdir(mode=0o700)
    for file, data in files.items():
        fd = os.open(staging / file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    try:
        os.rename(staging, folder)  # atomic; replaces only an empty folder
    except OSError:  # another process made one first (or the folder holds something): keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / KEY_FILE).is_file():
            raise InvalidOptionsError(f"{folder} exists but holds no signing key; move it away and start again.") from None
        return
    log.info("Made this studio's signing identity (ES256, CA + leaf) in %s", folder)
