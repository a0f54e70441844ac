"""`edgekit keygen` and `edgekit sign`, and the `--trust` option that serve, verify and inspect share.

Signing and checking live in edgekit.device.signing (Ed25519 over manifest.json's bytes, written as
manifest.sig). May import: stdlib, click, edgekit.core, edgekit.device.
"""

from __future__ import annotations

from pathlib import Path

import click


def trust_option(f):
    """`--trust KEY` (repeatable; a .pub/.pem file or a folder of them), also from EDGEKIT_TRUST."""
    return click.option(
        "--trust", "trust", multiple=True, envvar="EDGEKIT_TRUST", metavar="PUBKEY",
        type=click.Path(path_type=Path),
        help="Require a bundle signed by this Ed25519 public key (repeatable; a folder gives every *.pub/*.pem in "
             "it) [env EDGEKIT_TRUST, paths separated by ':']. Unsigned, untrusted or badly signed bundles are "
             "refused.")(f)


def trust_check(trust):
    """A TrustCheck for `load_bundle(check=...)` when keys were named, else None (no signature required)."""
    if not trust:
        return None
    from edgekit.device.signing import TrustCheck, load_trusted

    return TrustCheck(load_trusted(trust))


def signed_line(b, check) -> str:
    """`inspect`'s and serve's line about a loaded bundle's signature."""
    from edgekit.device.signing import describe

    return describe(b.root, check.signer if check is not None else None)


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
def keygen(out):
    """Write a new Ed25519 signing key: OUT (private, PEM, mode 0600) and OUT.pub (public, PEM).

    \b
    Keep OUT on the build machine; copy OUT.pub to the devices and serve with --trust OUT.pub.
    """
    from edgekit.device.signing import generate_key, short_id

    public, key_sha256 = generate_key(out)
    click.echo(f"private key {out} (keep it secret), public key {public}; fingerprint {short_id(key_sha256)}")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(path_type=Path), metavar="KEY",
              help="Ed25519 private key (from `edgekit keygen`).")
def sign(bundle, key):
    """Sign an existing bundle (folder or .tar) with KEY: checks every file's sha256, then writes
    manifest.sig, a signature over manifest.json's exact bytes. A .tar is rewritten atomically."""
    from edgekit.device.signing import load_private_key, short_id, sign_bundle

    key_sha256 = sign_bundle(bundle, load_private_key(key))
    click.echo(f"signed {bundle} with {short_id(key_sha256)}")
