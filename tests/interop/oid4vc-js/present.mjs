// An independent wallet answering an OpenID4VP 1.0 sign-in request (didgw's /login).
//
//   node present.mjs --key KEYFILE --credential FILE [--credential FILE…] --request 'openid4vp://…'
//        [--curve P-256|X25519]
//
// The request is resolved and its signed request object checked by @openid4vc/openid4vp
// (client identifier prefix decentralized_identifier: the request object must be signed by
// a key of that DID; a did:key is decoded here, from its specification); `dcql` matches the
// wallet's credentials against the DCQL query and picks an option of its credential set;
// @sd-jwt/sd-jwt-vc presents each chosen credential disclosing only the claims the query
// names, with a key-binding JWT (nonce of the request, aud = client_id); the response is
// posted by @openid4vc/openid4vp as the request's response_mode says: direct_post, or
// direct_post.jwt, encrypted by jose (CompactEncrypt, ECDH-ES) to the key of the request's
// client_metadata.jwks that the library picks (the first), or to the key on --curve.
// Prints one JSON line: {"status": <HTTP status>, "body": <the verifier's answer>,
// "disclosed": {query id: [claims]}, "response_mode": …, "encryption": {alg, enc, crv}}.
import { Openid4vpClient } from "@openid4vc/openid4vp";
import { setGlobalConfig } from "@openid4vc/utils";
import { SDJwtVcInstance } from "@sd-jwt/sd-jwt-vc";
import { digest, generateSalt } from "@sd-jwt/crypto-nodejs";
import { DcqlQuery } from "dcql";
import { importJWK, jwtVerify, decodeProtectedHeader, CompactEncrypt } from "jose";
import { readFileSync } from "node:fs";
import { sign as nodeSign, createPrivateKey } from "node:crypto";
import { loadKey, sha256, random } from "./keys.mjs";

const ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

function unbase58(text) {
  let n = 0n;
  for (const c of text) {
    const i = ALPHABET.indexOf(c);
    if (i < 0) throw new Error("not base58btc");
    n = n * 58n + BigInt(i);
  }
  let hex = n.toString(16);
  if (hex.length % 2) hex = "0" + hex;
  const zeros = text.match(/^1*/)[0].length;
  return Buffer.concat([Buffer.alloc(zeros), Buffer.from(hex, "hex")]);
}

/** The Ed25519 public JWK of a did:key (or one of its DID URLs). */
export function jwkOfDidKey(didUrl) {
  const [did] = didUrl.split("#");
  if (!did.startsWith("did:key:z")) throw new Error(`${did}: only did:key verifiers are resolved`);
  const raw = unbase58(did.slice("did:key:z".length));
  if (raw[0] !== 0xed || raw[1] !== 0x01 || raw.length !== 34) throw new Error(`${did}: not Ed25519`);
  return { kty: "OKP", crv: "Ed25519", x: raw.subarray(2).toString("base64url") };
}

function parseArgs(argv) {
  const args = { credentials: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (name === "--key") args.key = value;
    else if (name === "--credential") args.credentials.push(value);
    else if (name === "--request") args.request = value;
    else if (name === "--curve") args.curve = value;
    else throw new Error(`unknown argument ${name}`);
  }
  if (!args.key || !args.request || !args.credentials.length) {
    throw new Error("usage: node present.mjs --key KEYFILE --credential FILE… --request URL");
  }
  return args;
}

let encryption = null; // what encryptJwe did, for the summary

const callbacks = {
  fetch,
  hash: (data, alg) => sha256(data),
  generateRandom: random,
  async verifyJwt(signer, { header, compact }) {
    if (signer.method !== "did") return { verified: false };
    const publicJwk = jwkOfDidKey(signer.didUrl);
    try {
      const key = await importJWK(publicJwk, decodeProtectedHeader(compact).alg);
      await jwtVerify(compact, key, { algorithms: ["EdDSA"] });
      return { verified: true, signerJwk: publicJwk };
    } catch {
      return { verified: false };
    }
  },
  signJwt: async () => {
    throw new Error("this wallet signs nothing but key-binding JWTs");
  },
  // direct_post.jwt: the library names the verifier's key, alg and enc (and apu/apv, as
  // base64url); jose encrypts. The JWE's kid is the key's (OpenID4VP 1.0 §8.3).
  async encryptJwe(encryptor, data) {
    if (encryptor.method !== "jwk") throw new Error(`cannot encrypt to ${encryptor.method}`);
    const { publicJwk, alg, enc, apu, apv } = encryptor;
    const key = await importJWK(publicJwk, alg);
    const header = { alg, enc, ...(publicJwk.kid ? { kid: publicJwk.kid } : {}) };
    const jwe = new CompactEncrypt(new TextEncoder().encode(data)).setProtectedHeader(header);
    const parameters = {};
    if (apu) parameters.apu = Buffer.from(apu, "base64url");
    if (apv) parameters.apv = Buffer.from(apv, "base64url");
    if (apu || apv) jwe.setKeyManagementParameters(parameters);
    encryption = { alg, enc, crv: publicJwk.crv };
    return { encryptionJwk: publicJwk, jwe: await jwe.encrypt(key) };
  },
  decryptJwe: async () => {
    throw new Error("encrypted requests are not used here");
  },
};

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const holder = await loadKey(args.key);
  const keyObject = createPrivateKey({ key: holder.jwk, format: "jwk" });
  const sdjwt = new SDJwtVcInstance({
    hasher: digest,
    hashAlg: "sha-256",
    saltGenerator: generateSalt,
    kbSignAlg: "EdDSA",
    kbSigner: (data) => nodeSign(null, Buffer.from(data), keyObject).toString("base64url"),
  });

  // The libraries want https URLs; a gateway on plain HTTP is let through on loopback only
  // (as a browser lets localhost through).
  const requestUri = new URL(new URL(args.request).searchParams.get("request_uri") ?? "");
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(requestUri.hostname);
  if (requestUri.protocol === "http:" && loopback) {
    setGlobalConfig({ allowInsecureUrls: true });
  }
  const client = new Openid4vpClient({ callbacks });
  const parsed = client.parseOpenid4vpAuthorizationRequest({ authorizationRequest: args.request });
  const resolved = await client.resolveOpenId4vpAuthorizationRequest({
    authorizationRequestPayload: parsed.params,
  });
  const request = resolved.authorizationRequestPayload;
  if (resolved.client.prefix !== "decentralized_identifier") {
    throw new Error(`unexpected client identifier prefix ${resolved.client.prefix}`);
  }

  // DCQL: which of our credentials answer which credential query, and which option to take
  const texts = args.credentials.map((f) => readFileSync(f, "utf8").trim());
  const claims = await Promise.all(texts.map((t) => sdjwt.getClaims(t)));
  const query = DcqlQuery.parse(resolved.dcql.query);
  DcqlQuery.validate(query);
  const result = DcqlQuery.query(
    query,
    claims.map((c) => ({
      credential_format: "dc+sd-jwt",
      vct: c.vct,
      claims: c,
      cryptographic_holder_binding: true,
    })),
  );
  if (!result.can_be_satisfied) throw new Error("no credential of this wallet answers the query");
  const options = result.credential_sets?.[0]?.matching_options ?? [query.credentials.map((q) => q.id)];
  const chosen = options[0];

  const vpToken = {};
  const disclosed = {};
  for (const queryId of chosen) {
    const match = result.credential_matches[queryId];
    const index = match.valid_credentials[0].input_credential_index;
    const credentialQuery = query.credentials.find((q) => q.id === queryId);
    const frame = {};
    for (const claim of credentialQuery.claims ?? []) frame[claim.path[0]] = true;
    disclosed[queryId] = Object.keys(frame);
    const presentation = await sdjwt.present(texts[index], frame, {
      kb: {
        payload: {
          iat: Math.floor(Date.now() / 1000),
          aud: request.client_id,
          nonce: request.nonce,
        },
      },
    });
    vpToken[queryId] = [presentation];
  }

  // direct_post.jwt: what this wallet can do (the library checks the request's offer
  // against it and picks alg, enc and the key)
  let jarm;
  if (request.response_mode === "direct_post.jwt") {
    const keys = request.client_metadata?.jwks?.keys ?? [];
    const jwk = args.curve ? keys.find((k) => k.crv === args.curve) : undefined;
    if (args.curve && !jwk) throw new Error(`the request offers no key on ${args.curve}`);
    jarm = {
      encryption: jwk ? { jwk } : {},
      serverMetadata: {
        authorization_encryption_alg_values_supported: ["ECDH-ES"],
        authorization_encryption_enc_values_supported: ["A256GCM", "A128GCM"],
      },
    };
  }
  const created = await client.createOpenid4vpAuthorizationResponse({
    authorizationRequestPayload: request,
    authorizationResponsePayload: { vp_token: vpToken },
    jarm,
  });
  const { response, responseMode } = await client.submitOpenid4vpAuthorizationResponse({
    authorizationRequestPayload: request,
    authorizationResponsePayload: created.authorizationResponsePayload,
    jarm: created.jarm ? { responseJwt: created.jarm.responseJwt } : undefined,
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { text };
  }
  console.log(
    JSON.stringify({ status: response.status, body, disclosed, response_mode: responseMode, encryption }),
  );
  return response.ok ? 0 : 1;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().then(
    (code) => process.exit(code),
    (error) => {
      console.error(`present.mjs: ${error.stack ?? error}`);
      process.exit(2);
    },
  );
}
