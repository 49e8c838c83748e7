"""Signs Security Event Tokens for tests/ssf.rs with PyJWT, an implementation independent of the
receiver's.

Reads a JSON request on stdin:
  {"jwks_out": PATH, "kid_suffix": TEXT (optional),
   "sets": [{"key": "rsa" | "ec" | "rogue" | "none",
                               "kid": KID (optional; default: the key's own),
                               "header": {...} (optional, extra header fields),
                               "claims": {...}}]}
Writes the public keys of "rsa" (kid rsa-1) and "ec" (kid ec-1), each kid followed by
kid_suffix, to PATH as a JWKS, and prints
the tokens, in order, as a JSON list. "rogue" is an RSA key that is not in the JWKS: it signs
with kid rsa-1, so its tokens carry a known kid and a signature that does not verify. "none"
makes an unsigned token (alg none).
"""

import json
import sys

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def main() -> None:
    request = json.load(sys.stdin)
    suffix = request.get("kid_suffix", "")
    keys = {
        "rsa": ("RS256", "rsa-1" + suffix,
                rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec": ("ES256", "ec-1" + suffix, ec.generate_private_key(ec.SECP256R1())),
        "rogue": ("RS256", "rsa-1" + suffix,
                  rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    }
    published = []
    for name in ("rsa", "ec"):
        alg, kid, private = keys[name]
        to_jwk = RSAAlgorithm.to_jwk if name == "rsa" else ECAlgorithm.to_jwk
        jwk = json.loads(to_jwk(private.public_key()))
        jwk.update({"kid": kid, "use": "sig", "alg": alg})
        published.append(jwk)
    with open(request["jwks_out"], "w", encoding="utf-8") as f:
        json.dump({"keys": published}, f)

    tokens = []
    for spec in request["sets"]:
        header = {"typ": "secevent+jwt"}
        header.update(spec.get("header", {}))
        if spec["key"] == "none":
            tokens.append(jwt.encode(spec["claims"], None, algorithm="none", headers=header))
            continue
        alg, kid, private = keys[spec["key"]]
        header["kid"] = spec.get("kid", kid)
        tokens.append(jwt.encode(spec["claims"], private, algorithm=alg, headers=header))
    json.dump(tokens, sys.stdout)


if __name__ == "__main__":
    main()
