// The wallet's holder key: an Ed25519 key kept as a private JWK in a file (0600), its
// did:key, and the JOSE callbacks the @openid4vc and @sd-jwt libraries ask for.
// Nothing here comes from didgw: did:key is written from its specification
// (multicodec ed25519-pub 0xed01, base58btc, multibase "z").
import { generateKeyPair, exportJWK, importJWK, SignJWT, jwtVerify, decodeProtectedHeader } from "jose";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";

const ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

function base58(bytes) {
  let n = BigInt("0x" + Buffer.from(bytes).toString("hex"));
  let out = "";
  while (n > 0n) {
    out = ALPHABET[Number(n % 58n)] + out;
    n /= 58n;
  }
  for (const b of bytes) {
    if (b !== 0) break;
    out = "1" + out;
  }
  return out;
}

export function didKeyOf(publicJwk) {
  const x = Buffer.from(publicJwk.x, "base64url");
  return "did:key:z" + base58(Buffer.concat([Buffer.from([0xed, 0x01]), x]));
}

export async function newKeyFile(path) {
  const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
  const jwk = await exportJWK(privateKey);
  writeFileSync(path, JSON.stringify(jwk), { mode: 0o600 });
  return loadKey(path);
}

export async function loadKey(path) {
  const jwk = JSON.parse(readFileSync(path, "utf8"));
  const publicJwk = { kty: jwk.kty, crv: jwk.crv, x: jwk.x };
  const did = didKeyOf(publicJwk);
  return {
    jwk,
    publicJwk,
    did,
    kid: `${did}#${did.slice("did:key:".length)}`,
    privateKey: await importJWK(jwk, "EdDSA"),
  };
}

export function sha256(data) {
  return createHash("sha256").update(data).digest();
}

export function random(n) {
  return new Uint8Array(randomBytes(n));
}

/** Sign a JWT with an Ed25519 private key (alg EdDSA). */
export async function signJwt(privateKey, header, payload) {
  return new SignJWT(payload).setProtectedHeader({ alg: "EdDSA", ...header }).sign(privateKey);
}

/** Verify a compact JWS with a public JWK; returns { header, payload }. */
export async function verifyJwt(jwt, publicJwk) {
  const key = await importJWK(publicJwk, decodeProtectedHeader(jwt).alg);
  const { payload, protectedHeader } = await jwtVerify(jwt, key);
  return { header: protectedHeader, payload };
}

// node keys.mjs new FILE: make a holder key in FILE (0600) and print its did:key.
// node keys.mjs did FILE: print the did:key of the key in FILE.
if (import.meta.url === `file://${process.argv[1]}`) {
  const [command, file] = process.argv.slice(2);
  if (command === "new") console.log((await newKeyFile(file)).did);
  else if (command === "did") console.log((await loadKey(file)).did);
  else {
    console.error("usage: node keys.mjs new|did FILE");
    process.exit(2);
  }
}
