// An independent wallet answering an OpenID4VP 1.0 sign-in request (didgw's /login).
//
//   node present.mjs --key KEYFILE --credential FILE [--credential FILE…] --request 'openid4vp://…'
//
// The request is resolved and its signed request object checked by @openid4vc/openid4vp
// (client identifier prefix decentralized_identifier: the request object must be signed by
// a key of that DID; a did:key is decoded here, from its specification); `dcql` matches the
// wallet's credentials against the DCQL query and picks an option of its credential set;
// @sd-jwt/sd-jwt-vc presents each chosen credential disclosing only the claims the query
// names, with a key-binding JWT (nonce of the request, aud = client_id); the response is
// posted with direct_post by @openid4vc/openid4vp. Prints one JSON line:
// {"status": <HTTP status>, "body": <the verifier's answer>, "disclosed": {query id: [claims]}}.
import { Openid4vpClient } from "@openid4vc/openid4vp";
import { setGlobalConfig } from "@openid4vc/utils";
import { SDJwtVcInstance } from "@sd-jwt/sd-jwt-vc";
import { digest, generateSalt } from "@sd-jwt/crypto-nodejs";
import { DcqlQuery } from "dcql";
import { importJWK, jwtVerify, decodeProtectedHeader } from "jose";
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
    else throw new Error(`unknown argument ${name}`);
  }
  if (!args.key || !args.request || !args.credentials.length) {
    throw new Error("usage: node present.mjs --key KEYFILE --credential FILE… --request URL");
  }
  return args;
}

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
  encryptJwe: async () => {
    throw new Error("direct_post.jwt is not used here");
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

  const { authorizationResponsePayload } = await client.createOpenid4vpAuthorizationResponse({
    authorizationRequestPayload: request,
    authorizationResponsePayload: { vp_token: vpToken },
  });
  const { response } = await client.submitOpenid4vpAuthorizationResponse({
    authorizationRequestPayload: request,
    authorizationResponsePayload,
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { text };
  }
  console.log(JSON.stringify({ status: response.status, body, disclosed }));
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
