#!/usr/bin/env python3
"""Mints JWTs with PyJWT for the relay's tests: an implementation that
shares no code with the relay's verifier (jsonwebtoken).

  mint_jwt.py keys DIR
      writes DIR/rsa_private.pem, DIR/rsa_public.pem, and DIR/jwks.json with
      one more RSA key (kid "k2", private half in DIR/k2_private.pem)
  mint_jwt.py sign ALG KEY CLAIMS [KID]
      prints a token; KEY is the secret for HS256, else a private PEM path.
      In CLAIMS, "exp_in": N becomes "exp": now + N seconds.
"""

import json
import os
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def rsa_pair():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return private, private_pem, public_pem


def keys(directory):
    _, private_pem, public_pem = rsa_pair()
    with open(os.path.join(directory, "rsa_private.pem"), "wb") as f:
        f.write(private_pem)
    with open(os.path.join(directory, "rsa_public.pem"), "wb") as f:
        f.write(public_pem)
    k2, k2_pem, _ = rsa_pair()
    with open(os.path.join(directory, "k2_private.pem"), "wb") as f:
        f.write(k2_pem)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k2.public_key()))
    jwk.update({"kid": "k2", "use": "sig", "alg": "RS256"})
    with open(os.path.join(directory, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk]}, f)


def sign(alg, key, claims_text, kid=None):
    claims = json.loads(claims_text)
    if "exp_in" in claims:
        claims["exp"] = int(time.time()) + int(claims.pop("exp_in"))
    if not alg.startswith("HS"):
        with open(key, "rb") as f:
            key = f.read()
    headers = {"kid": kid} if kid else None
    print(jwt.encode(claims, key, algorithm=alg, headers=headers))


if __name__ == "__main__":
    if sys.argv[1] == "keys":
        keys(sys.argv[2])
    else:
        sign(*sys.argv[2:])
