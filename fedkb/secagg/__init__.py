"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020): the server
learns the sum of the phones' field-encoded updates and nothing else, and survives
phones dropping out at any phase.

Modules, one concept each: :mod:`.shamir` (t-of-n sharing over GF(2^521 - 1)),
:mod:`.keys` (X25519, HKDF-SHA256, AES-256-GCM bound to round, sender and recipient),
:mod:`.prg` (AES-256-CTR masks in Z_{2^k}), :mod:`.graph` (SecAgg+ Harary graphs),
:mod:`.params` (a round's public parameters), :mod:`.messages` (typed JSON messages),
:mod:`.client` (a phone's state machine), :mod:`.server` (relay, survivors, unmasking),
:mod:`.inprocess` (a round with emulated phones, for tests and the bench),
:mod:`.update_codec` (a model update as the protocol's input) and
:mod:`.distributed_dp` (the phones' discrete Gaussian noise). Inputs are
the residues of :func:`fedkb.compression.field.encode`; the sum goes back through
:func:`fedkb.compression.field.decode_sum`. NumPy, the standard library and
``cryptography`` only, so a phone can import it.

Threat model
------------
*Honest-but-curious server (the default).* The server follows the protocol but keeps
and studies everything it is sent. It sees public keys, ciphertexts it cannot open
(AES-GCM under keys agreed between phones), masked vectors that are uniform over
Z_{2^k} (each carries the self mask PRG(b) and pairwise masks), the revealed shares and
the sum. For a survivor it learns b (from t shares) but never that phone's masking key
s_SK, so the pairwise masks stay on; for a phone that dropped after ShareKeys it learns
s_SK but never b, and that phone's masked vector is not in the sum (a late one is
refused). Each phone answers Unmask once, so it never reveals both shares of one peer.
Any coalition of fewer than t parties (phones, possibly with the server's view) holds
fewer than t shares of any outside phone's secrets and learns nothing about its input
beyond what the sum of at least t inputs reveals; t is also the round's minimum count,
so the sum always has at least t summands. Choose t > n/2 so that two disjoint
survivor sets cannot both reach t (with the consistency check, Bonawitz et al. take
t > 2n/3 against an active server).

*What the optional ConsistencyCheck adds (not implemented here).* An active server can
lie about who survived: tell some phones that u dropped (collect s_SK-shares of u) and
others that u survived (collect b-shares of u), then unmask u's vector alone. In the
active variant each phone signs the survivor set U3 it was sent and checks the others'
signatures before revealing any share, so every honest phone answers about the same
U3; with t > 2n/3 the server cannot split the phones into two groups that both reach t.
Without it this package protects inputs against a curious, not a lying, server.

*SecAgg+.* With ``degree`` set a phone masks with and shares among only its graph
neighbours; the guarantee becomes statistical over the random graph (Bell et al. 2020,
Thm. 3.6): it holds except with small probability for a bounded fraction of corrupt
phones and dropouts, with k ~ O(log n).

*The sum itself.* Secure aggregation hides the parts, not what the sum reveals. With
``[privacy]`` the server adds Gaussian noise to the unmasked sum: it is trusted to.
With ``privacy.distributed`` each phone adds its share of discrete Gaussian noise before
masking (:mod:`.distributed_dp`), so a curious server only ever holds a noised sum;
a coalition of the server and phones knows their own noise, so the guarantee degrades
to that of the honest phones' share (Kairouz et al. 2021 discuss this).

*Not covered.* Sybil phones (who may join a round is the server's business), inputs
outside the quantizer's range (the phone clips before encoding), and side channels.
"""

from fedkb.secagg.client import Phone
from fedkb.secagg.messages import Abort, MessageError, Refusal
from fedkb.secagg.params import RoundParams, threshold_count
from fedkb.secagg.server import SecAggServer, SumResult

__all__ = ["Abort", "MessageError", "Phone", "Refusal", "RoundParams", "SecAggServer",
           "SumResult", "threshold_count"]
