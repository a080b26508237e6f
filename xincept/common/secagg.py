"""Secure aggregation of the sites' updates (SecAgg, Bonawitz et al. 2017; the complete-graph case of SecAgg+).

The server learns the sum of the sites' vectors and nothing else about any one of them, and the sum survives sites
that drop out after the keys were shared, down to ``threshold`` sites. Protocol, per aggregation:

1. **Keys.** Each site makes two X25519 key pairs: one to encrypt the shares it sends other sites (``c``), one whose
   agreement with every other site's gives the pairwise mask seeds (``s``). The server relays the public keys.
2. **Shares.** Each site draws a self-mask seed ``b`` and splits ``b`` and its ``s`` private key into Shamir shares
   (``threshold`` of n reconstruct; pycryptodome's Shamir over GF(2^128) per 16-byte chunk, in the share encoding of
   Flower's ``flwr.common.secure_aggregation``, which is not imported here: it loads the whole Flower runtime), one
   per other site, each encrypted for that site (Fernet under an HKDF key from the ``c`` agreement, as Flower's
   ``generate_shared_key`` does over EC keys). The server relays ciphertexts it cannot read.
3. **Masked input.** Each site quantises its vector to integers modulo 2^32 (stochastic rounding in a fixed range)
   and adds PRG(b) and, for every other site j, +PRG(s_ij) if its index is lower than j's, -PRG(s_ij) otherwise. The
   PRG is ChaCha20's keystream (``cryptography``) keyed by HKDF of the seed: each masked vector is indistinguishable
   from uniform to whoever lacks the seeds. (Flower's own ``pseudo_rand_gen`` seeds numpy with 32 bits, which a
   server could search; it is not used.)
4. **Unmasking.** The server names the sites whose masked input arrived (survivors) and those that dropped. Each
   survivor sends its shares of the survivors' ``b`` and of the dropped sites' ``s`` keys, never both for one site.
   From ``threshold`` of them the server removes the survivors' self masks and the dropped sites' pairwise masks
   and is left with the sum of the survivors' quantised vectors.

Threat model: an honest-but-curious server and any set of fewer than ``threshold`` colluding parties learn nothing
about one site's vector beyond the sum. A malicious server that lies about who dropped out could ask for both
shares of a site; a survivor refuses to send both kinds for one site, which is what the protocol can check locally
(Bonawitz et al.'s consistency round with signatures is not implemented).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

MODULUS_BITS = 32
MODULUS = 1 << MODULUS_BITS


def majority(n_sites: int) -> int:
    """The default threshold: a majority of the sites, at least 2."""
    return max(2, n_sites // 2 + 1)


class SecAggError(Exception):
    """The aggregation cannot complete (too few sites, a refused request)."""


def _x25519():
    from cryptography.hazmat.primitives.asymmetric import x25519

    return x25519


def _public_bytes(key) -> bytes:  # noqa: ANN001
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_bytes(key) -> bytes:  # noqa: ANN001
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def agree(private: bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret of a raw private key and a peer's raw public key."""
    x = _x25519()
    return x.X25519PrivateKey.from_private_bytes(private).exchange(x.X25519PublicKey.from_public_bytes(peer_public))


def prg(seed: bytes, size: int, label: bytes) -> np.ndarray:
    """``size`` uint32 values from ChaCha20's keystream under HKDF(seed, label): a cryptographic PRG."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    key = _hkdf(seed, b"xincept-secagg-mask|" + label)
    stream = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor().update(b"\0" * (4 * size))
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32)


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """Shamir shares of a secret whose length is a multiple of 16: each share is its 4-byte index, then its share of
    every 16-byte chunk (Flower's encoding)."""
    from Crypto.Protocol.SecretSharing import Shamir

    if len(secret) % 16:
        raise ValueError("secrets are shared in 16-byte chunks")
    shares = [bytearray(i.to_bytes(4, "little")) for i in range(1, num + 1)]
    for start in range(0, len(secret), 16):
        for idx, part in Shamir.split(threshold, num, secret[start:start + 16], ssss=False):
            shares[idx - 1] += part
    return [bytes(s) for s in shares]


def combine_shares(shares: list[bytes]) -> bytes:
    """The secret from ``threshold`` or more shares made by :func:`create_shares`."""
    from Crypto.Protocol.SecretSharing import Shamir

    chunks = (len(shares[0]) - 4) // 16
    out = bytearray()
    for c in range(chunks):
        parts = [(int.from_bytes(s[:4], "little"), s[4 + 16 * c:20 + 16 * c]) for s in shares]
        out += Shamir.combine(parts, ssss=False)
    return bytes(out)


def _fernet(key: bytes):  # noqa: ANN202
    from cryptography.fernet import Fernet

    return Fernet(key)


def quantise(x: np.ndarray, clip: float, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding of ``x`` clipped to [-clip, clip] onto 0 .. 2^bits - 1 (unbiased)."""
    levels = (1 << bits) - 1
    scaled = (np.clip(x, -clip, clip) + clip) / (2 * clip) * levels
    low = np.floor(scaled)
    return (low + (rng.random(x.shape) < scaled - low)).astype(np.uint64)


def dequantise_sum(total: np.ndarray, count: int, clip: float, bits: int) -> np.ndarray:
    """The float sum of ``count`` quantised vectors whose integer sum is ``total``."""
    levels = (1 << bits) - 1
    return total.astype(np.float64) / levels * (2 * clip) - count * clip


@dataclass(frozen=True)
class SecAggConfig:
    threshold: int  # sites whose shares reconstruct a secret; also the fewest survivors the sum needs
    clip: float  # every coordinate is clipped to [-clip, clip] before quantisation
    bits: int = 20  # quantisation levels per coordinate: 2^bits; the sum of n sites must fit in 2^32

    def check(self, n_sites: int) -> None:
        if not 2 <= self.threshold <= n_sites:
            raise SecAggError(f"secure aggregation needs a threshold between 2 and the {n_sites} site(s), got {self.threshold}")
        if n_sites * ((1 << self.bits) - 1) >= MODULUS:
            raise SecAggError(f"{n_sites} sites x 2^{self.bits} levels overflow the 2^{MODULUS_BITS} modulus: lower the bits")


@dataclass
class SiteSecAgg:
    """One site's part of one aggregation. ``index`` is its 1-based position among the n sites (the Shamir x)."""

    index: int
    cfg: SecAggConfig
    c_key: bytes = field(default_factory=lambda: _private_bytes(_x25519().X25519PrivateKey.generate()))
    s_key: bytes = field(default_factory=lambda: _private_bytes(_x25519().X25519PrivateKey.generate()))
    self_seed: bytes = field(default_factory=lambda: os.urandom(32))
    publics: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # from site j: (share of b_j, share of s_j)
    answered: set[tuple[int, int]] = field(default_factory=set)  # (site, 0: its b | 1: its s key)

    def to_flat(self) -> dict[str, bytes | int | str]:
        """Everything this site keeps between the messages of one aggregation (its private keys stay at the site)."""
        flat: dict[str, bytes | int | str] = {"index": self.index, "c": self.c_key, "s": self.s_key, "b": self.self_seed,
                                              "answered": ",".join(f"{j}:{k}" for j, k in sorted(self.answered))}
        for j, (c, sp) in self.publics.items():
            flat[f"pub.{j}.c"], flat[f"pub.{j}.s"] = c, sp
        for j, (b, sk) in self.held.items():
            flat[f"held.{j}.b"], flat[f"held.{j}.s"] = b, sk
        return flat

    @classmethod
    def from_flat(cls, flat: dict, cfg: SecAggConfig) -> "SiteSecAgg":
        site = cls(int(flat["index"]), cfg, c_key=bytes(flat["c"]), s_key=bytes(flat["s"]), self_seed=bytes(flat["b"]))
        for key, value in flat.items():
            parts = key.split(".")
            if parts[0] in ("pub", "held"):
                table = site.publics if parts[0] == "pub" else site.held
                pair = list(table.get(int(parts[1]), (b"", b"")))
                pair[0 if parts[2] in ("c", "b") else 1] = bytes(value)
                table[int(parts[1])] = (pair[0], pair[1])
        site.answered = {(int(j), int(k)) for j, k in (a.split(":") for a in str(flat.get("answered", "")).split(",") if a)}
        return site

    def public_keys(self) -> tuple[bytes, bytes]:
        x = _x25519()
        return (_public_bytes(x.X25519PrivateKey.from_private_bytes(self.c_key)),
                _public_bytes(x.X25519PrivateKey.from_private_bytes(self.s_key)))

    def share_keys(self, publics: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Step 2: encrypted shares of ``b`` and of ``s``'s private key, one ciphertext per other site."""
        if len(publics) < self.cfg.threshold:
            raise SecAggError(f"only {len(publics)} site(s) shared keys; the threshold is {self.cfg.threshold}")
        if len({p for pair in publics.values() for p in pair}) != 2 * len(publics):
            raise SecAggError("two sites presented the same public key: refusing to share")
        self.publics = dict(publics)
        order = sorted(publics)
        b_shares = create_shares(self.self_seed, self.cfg.threshold, len(order))
        s_shares = create_shares(self.s_key, self.cfg.threshold, len(order))
        out = {}
        for pos, j in enumerate(order):
            plain = _pack(self.index, j, b_shares[pos], s_shares[pos])
            if j == self.index:
                self.held[j] = (b_shares[pos], s_shares[pos])
            else:
                out[j] = _fernet(self._channel(j)).encrypt(plain)
        return out

    def receive_shares(self, ciphertexts: dict[int, bytes]) -> None:
        for j, ct in ciphertexts.items():
            src, dst, b_share, s_share = _unpack(_fernet(self._channel(j)).decrypt(ct))
            if (src, dst) != (j, self.index):
                raise SecAggError(f"a share from site {j} was addressed from {src} to {dst}: refusing it")
            self.held[j] = (b_share, s_share)

    def masked(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Step 3: the quantised vector plus every mask, modulo 2^32."""
        rng = rng or np.random.default_rng()
        y = quantise(np.asarray(x, dtype=np.float64).ravel(), self.cfg.clip, self.cfg.bits, rng)
        y = (y + prg(self.self_seed, y.size, b"self").astype(np.uint64)) % MODULUS
        for j, (_, s_pub) in self.publics.items():
            if j == self.index or j not in self.held:  # a site whose shares never came is in no mask (nobody could undo it)
                continue
            mask = prg(agree(self.s_key, s_pub), y.size, b"pair").astype(np.uint64)
            y = (y + mask) % MODULUS if self.index < j else (y + MODULUS - mask) % MODULUS
        return y.astype(np.uint32)

    def unmask_shares(self, survivors: set[int], dropped: set[int]) -> dict[int, bytes]:
        """Step 4: this site's share of each survivor's ``b`` and of each dropped site's ``s`` key. A site named both
        survivor and dropped, or asked about twice in different roles, is refused (it would reveal both secrets)."""
        if survivors & dropped:
            raise SecAggError(f"site(s) {sorted(survivors & dropped)} named both survivor and dropped: refusing to unmask")
        if self.index not in survivors:
            raise SecAggError("this site is not among the survivors the server names")
        out = {}
        for j in survivors | dropped:
            kind = 0 if j in survivors else 1
            if (j, 1 - kind) in self.answered:
                raise SecAggError(f"the server asked for both secrets of site {j}: refusing")
            self.answered.add((j, kind))
            out[j] = self.held[j][kind]
        return out

    def _channel(self, j: int) -> bytes:
        """The Fernet key this site shares with site j (Flower's ``generate_shared_key`` does the same HKDF over an
        EC agreement; here over X25519)."""
        return _fernet_key(agree(self.c_key, self.publics[j][0]))


def _fernet_key(secret: bytes) -> bytes:
    import base64

    return base64.urlsafe_b64encode(_hkdf(secret, b"xincept-secagg-shares"))


def _pack(src: int, dst: int, b_share: bytes, s_share: bytes) -> bytes:
    return (src.to_bytes(4, "big") + dst.to_bytes(4, "big") + len(b_share).to_bytes(4, "big") + b_share + s_share)


def _unpack(data: bytes) -> tuple[int, int, bytes, bytes]:
    src, dst, n = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big")
    return src, dst, data[12:12 + n], data[12 + n:]


class ServerSecAgg:
    """The server's part: relays keys and ciphertexts, then recovers the survivors' sum and nothing else."""

    def __init__(self, cfg: SecAggConfig, sites: list[int]) -> None:
        cfg.check(len(sites))
        self.cfg, self.sites = cfg, sorted(sites)
        self.publics: dict[int, tuple[bytes, bytes]] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.sharers: set[int] = set()  # who sent their shares: the sites every mask is made with

    def collect_keys(self, keys: dict[int, tuple[bytes, bytes]]) -> dict[int, tuple[bytes, bytes]]:
        self.require(keys, "shared their keys")
        self.publics = dict(keys)
        return self.publics

    def route_shares(self, sent: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Ciphertexts from each sender, regrouped by recipient."""
        self.require(sent, "sent their shares")
        self.sharers = set(sent)
        inbox: dict[int, dict[int, bytes]] = {j: {} for j in sent}
        for i, cts in sent.items():
            for j, ct in cts.items():
                if j in inbox:
                    inbox[j][i] = ct
        return inbox

    def collect_masked(self, masked: dict[int, np.ndarray]) -> tuple[set[int], set[int]]:
        """(survivors, dropped): who sent a masked vector, and who sent shares but no masked vector."""
        self.require(masked, "sent their masked input")
        self.masked = dict(masked)
        return set(masked), self.sharers - set(masked)

    def unmask(self, shares: dict[int, dict[int, bytes]]) -> tuple[np.ndarray, int]:
        """(sum of the survivors' vectors as floats, number of survivors) from the survivors' unmasking shares."""
        self.require(shares, "sent their unmasking shares")
        survivors, dropped = set(self.masked), self.sharers - set(self.masked)
        size = next(iter(self.masked.values())).size
        total = np.zeros(size, dtype=np.uint64)
        for y in self.masked.values():
            total = (total + y.astype(np.uint64)) % MODULUS
        for i in survivors:
            seed = combine_shares([shares[j][i] for j in shares][: self.cfg.threshold])
            total = (total + MODULUS - prg(seed, size, b"self").astype(np.uint64)) % MODULUS
        for d in dropped:
            s_key = combine_shares([shares[j][d] for j in shares][: self.cfg.threshold])
            for i in survivors:
                mask = prg(agree(s_key, self.publics[i][1]), size, b"pair").astype(np.uint64)
                # survivor i added +mask if i < d, -mask otherwise: take out what it added
                total = (total + MODULUS - mask) % MODULUS if i < d else (total + mask) % MODULUS
        return dequantise_sum(total, len(survivors), self.cfg.clip, self.cfg.bits), len(survivors)

    def require(self, got: dict, what: str) -> None:
        """Refuse to go on with fewer than ``threshold`` sites."""
        if len(got) < self.cfg.threshold:
            raise SecAggError(f"only {len(got)} site(s) {what}; secure aggregation needs {self.cfg.threshold}")


def secure_sum(parts: list[np.ndarray], clip: float = 1024.0, bits: int = 24) -> np.ndarray:
    """The sum of ``parts`` (one per site) through the whole protocol in one process: fresh keys, encrypted shares,
    masked quantised vectors, unmasking; what the caller gets is what a server would, the sum only (benchmarks and
    tests of protocols built on it)."""
    n, shape = len(parts), parts[0].shape
    cfg = SecAggConfig(threshold=majority(n), clip=clip, bits=bits)
    sites = {i: SiteSecAgg(i, cfg) for i in range(1, n + 1)}
    server = ServerSecAgg(cfg, list(sites))
    publics = server.collect_keys({i: s.public_keys() for i, s in sites.items()})
    inbox = server.route_shares({i: s.share_keys(publics) for i, s in sites.items()})
    for i, s in sites.items():
        s.receive_shares(inbox[i])
    survivors, dropped = server.collect_masked({i: s.masked(np.ravel(parts[i - 1])) for i, s in sites.items()})
    total, _ = server.unmask({j: sites[j].unmask_shares(survivors, dropped) for j in survivors})
    return total.reshape(shape)
